"""What the jobs share: settings checked before any work, the model and prompts a config names, the fingerprint
of a run, and result files that say what produced them."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxheads import io
from jaxheads import judges as model_judges
from jaxheads.data.formats import PROMPT_FORMATS, format_prompt
from jaxheads.data.loaders import load_prompt_rows
from jaxheads.errors import DataError, JaxheadsError
from jaxheads.eval.judges import (
    BUILTIN,
    BUILTIN_JUDGE,
    JUDGES,
    builtin_judge_dir,
    is_model_judge,
    judge_adapter,
    make_judge,
)
from jaxheads.interventions import ABLATION_KINDS, check_heads
from jaxheads.loading import load, model_name
from jaxheads.provenance import provenance
from jaxheads.sharding import parse_mesh, parse_rules
from jaxheads.tokens import encode_prompt
from jaxheads.weights.digest import file_digest

# Settings that only place work on devices, decide when to save, or name the output: they may change between a
# run and its resume without changing a result.
PLACEMENT = ("out", "mesh", "sharding", "chunk_size", "fsdp", "save_every", "keep_checkpoints", "verify_weights",
             "judge_mesh")
# Settings that name a model: recorded as `loading.model_name` makes them (`--model=M/` is `--model=M`).
MODEL_SETTINGS = ("model", "base_model", "answers_model")
DTYPE_NAMES = ("float32", "bfloat16")


def require(config, name: str, passed: bool, wanted: str) -> None:
    """Raises an error naming the flag `name` and its value unless `passed` (the check of `config[name]`)."""
    if not passed:
        raise JaxheadsError(f"--{name} must be {wanted}, got {config[name]!r}")


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def require_int(config, *names: str, minimum: int = 1) -> None:
    """Each named setting is an integer of at least `minimum`."""
    for name in names:
        require(config, name, _is_int(config[name], minimum), f"an integer >= {minimum}")


def require_choice(config, name: str, choices: Sequence[str]) -> None:
    require(config, name, config[name] in choices, f"one of {', '.join(choices)}")


def check_epsilon(config) -> None:
    """ua needs 0 < ε < 1 (ε = 0 would make the logits 0, ε = 1 ablates nothing); sc allows ε = 0 (zero
    ablation); mean ignores ε."""
    if config.ablation not in ("ua", "sc"):
        return
    epsilon = config.epsilon
    low_ok = epsilon > 0 if config.ablation == "ua" else epsilon >= 0
    bound = "0 < epsilon < 1" if config.ablation == "ua" else "0 <= epsilon < 1"
    require(config, "epsilon", math.isfinite(epsilon) and low_ok and epsilon < 1,
            f"finite with {bound} for --ablation={config.ablation}")


def check_judge(config) -> None:
    """--judge: keyword, reference, guard (the shipped response judge) or the folder of a `jaxheads judge train` run,
    whose adapter is checked to be a response judge before any work."""
    require(config, "judge", isinstance(config.judge, str) and bool(config.judge.strip()),
            f"one of {', '.join(JUDGES)}, {BUILTIN_JUDGE}, a `jaxheads judge train` folder or KIND:DIR of a model "
            f"judge ({', '.join(model_judges.KINDS)})")
    check_protocol(config)
    spec = model_judges.parse_spec(config.judge)
    if spec is not None:
        model_judges.check(*spec, **model_judge_options(config))
        if config.get("judge_mesh"):
            parse_mesh(config.judge_mesh)
        return
    unused = [name for name in model_judges_flags(config) if config.get(name)]
    if unused:
        raise JaxheadsError(f"--{unused[0]} is a setting of a model judge (--judge=KIND:DIR); --judge={config.judge} "
                            "takes none")
    if is_model_judge(config.judge):
        judge_adapter(config.judge)


ASR_PROTOCOLS = {"default": None, "harmbench": "harmbench", "surgery": "beaverdam"}  # protocol -> the judge it needs
HARMBENCH_NEW_TOKENS = 512


def check_protocol(config) -> None:
    """--asr_protocol: default, or harmbench / surgery with the judge (and, for harmbench, the 512 new tokens)
    the protocol is defined with."""
    if "asr_protocol" not in config:
        return
    require_choice(config, "asr_protocol", tuple(ASR_PROTOCOLS))
    needed = ASR_PROTOCOLS[config.asr_protocol]
    spec = model_judges.parse_spec(config.judge) if isinstance(config.judge, str) else None
    if needed and (spec is None or spec[0] != needed):
        raise JaxheadsError(f"--asr_protocol={config.asr_protocol} judges with --judge={needed}:DIR, got "
                            f"--judge={config.judge}")
    tokens = config.get("max_new_tokens", config.get("eval_tokens"))
    if config.asr_protocol == "harmbench" and tokens is not None and tokens != HARMBENCH_NEW_TOKENS:
        flag = "max_new_tokens" if "max_new_tokens" in config else "eval_tokens"
        raise JaxheadsError(f"--asr_protocol=harmbench generates {HARMBENCH_NEW_TOKENS} new tokens per behaviour; "
                            f"pass --{flag}={HARMBENCH_NEW_TOKENS} (got {tokens})")


def protocol_fields(config, by_judge: dict) -> dict:
    """What an ASR file records about its protocol, and the protocol's headline number."""
    protocol = config.get("asr_protocol", "default")
    fields = {"asr_protocol": protocol}
    if protocol == "harmbench":
        fields["asr_harmbench"] = by_judge["harmbench"]["asr_over_behaviours"]
    elif protocol == "surgery":
        fields["harmful_score"] = 100.0 * by_judge["beaverdam"]["asr"]
    return fields


def model_judges_flags(config) -> list[str]:
    return [name for name in ("judge_template", "policy", "judge_base", "judge_mesh") if name in config]


def model_judge_options(config) -> dict:
    """--judge_template, --policy and --judge_base as `jaxheads.judges.check`/`load` take them."""
    return {"template": config.get("judge_template", ""), "policy": config.get("policy", ""),
            "base": config.get("judge_base", "")}


def model_judge_fingerprint(config) -> dict | None:
    """What a model judge's verdicts depend on beyond its flags: the content digests of its checkpoint files (and of
    `--judge_base`'s, for an adapter merged on load) and its template file's content (a file replaced at the same
    path, or weights swapped at the same size and mtime, must not resume a run judged with the old ones)."""
    spec = model_judges.parse_spec(config.get("judge", "")) if isinstance(config.get("judge"), str) else None
    if spec is None:
        return None

    def digests(folder):
        folder = os.path.expanduser(folder)
        files = sorted(name for name in os.listdir(folder)
                       if name.endswith((".json", ".safetensors", ".model", ".jinja")))
        return [[name, file_digest(os.path.join(folder, name))] for name in files]

    found = {"files": digests(spec[1])}
    if config.get("judge_base") and os.path.isdir(os.path.expanduser(config.judge_base)):
        found["base_files"] = digests(config.judge_base)
    if config.get("judge_template"):
        with open(os.path.expanduser(config.judge_template), "rb") as handle:
            found["template_sha256"] = model_judges.base.sha256(handle.read())
    return found


def adapter_spec(spec: str) -> str:
    """The model spec recorded with a classifier adapter: a local path made absolute, anything else as given."""
    return os.path.abspath(spec) if spec and os.path.exists(spec) else spec


def load_judge(config, model):
    """The judge of `--judge`, made once per run: a keyword judge, or a response judge whose classifier shares
    `model`'s weights when its adapter was trained on the model the run loaded (`--model`), and otherwise runs on
    the model the adapter records (loaded once here)."""
    spec = model_judges.parse_spec(config.judge)
    if spec is not None:
        mesh = parse_mesh(config.judge_mesh) if config.get("judge_mesh") else (
            device_mesh(config) if "mesh" in config else None)
        batch = config.get("eval_batch_size") or config.get("batch_size") or 16
        rules = sharding_rules(config) if "mesh" in config else None
        return model_judges.load(*spec, **model_judge_options(config), dtype=config.dtype, mesh=mesh,
                                 sharding=rules, batch_size=batch, progress=True)
    if not is_model_judge(config.judge):
        return make_judge(config.judge)

    same = judge_adapter(config.judge).model.get("spec", "") == adapter_spec(config.model)
    return make_judge(config.judge, model=model if same else None, dtype=config.dtype,
                      mesh=device_mesh(config) if "mesh" in config else None)


def write_disagreements(path: str, result) -> str | None:
    """Writes the records on which a response judge and the keyword judge disagree (`AsrResult.disagreements`) as
    JSONL to `path`; nothing without a response judge. Returns the path written or None."""
    if result.disagreements is None:
        return None
    io.atomic_write_jsonl(path, result.disagreements)
    return path


def check_model_settings(config) -> None:
    require_choice(config, "dtype", DTYPE_NAMES)


def check_prompt_settings(config) -> None:
    """The settings that pick and format prompts."""
    require_int(config, "limit", minimum=0)
    if "prompt_format" in config:
        require_choice(config, "prompt_format", PROMPT_FORMATS)


def check_ablation_settings(config) -> None:
    """The settings that load the model, pick and format its prompts and ablate heads."""
    check_model_settings(config)
    check_prompt_settings(config)
    require_choice(config, "ablation", ABLATION_KINDS)
    check_epsilon(config)


def check_scan_settings(config) -> None:
    """The settings of the Ships and Sahara scans."""
    check_ablation_settings(config)
    require_int(config, "batch_size")
    require_int(config, "chunk_size", minimum=0)


def check_generation_settings(config) -> None:
    """The settings of the commands that generate with heads ablated and judge the responses."""
    check_ablation_settings(config)
    require_int(config, "max_new_tokens", "batch_size")
    check_judge(config)


def load_model(config, field: str = "model"):
    """The model named by `config[field]` ("" = the embedded default) in `config.dtype`, loaded straight onto
    the job's `--mesh` (`device_mesh`) in the layout of its `--sharding` rules (tp_fsdp with `--fsdp`) when the
    config has one, so that each process reads only the slices of the weights its devices hold."""
    mesh = device_mesh(config) if "mesh" in config else None
    return load(config[field] or None, dtype=config.dtype, mesh=mesh, sharding=sharding_rules(config),
                verify_weights=config.get("verify_weights", False))


def sharding_rules(config) -> str | None:
    """The sharding rules of a config: its `--sharding` (made tp_fsdp by `--fsdp`); None without a mesh."""
    if "mesh" not in config:
        return None
    rules = config.get("sharding", "tp")
    if config.get("fsdp", False):
        if rules not in ("tp", "tp_fsdp"):
            raise JaxheadsError(f"--fsdp is --sharding=tp_fsdp; it cannot be combined with --sharding={rules}")
        rules = "tp_fsdp"
    parse_rules(rules)
    return rules


def device_mesh(config):
    """The `(data, model)` mesh of `config.mesh` ("" = every device data-parallel)."""
    return parse_mesh(config.mesh)


@dataclasses.dataclass
class PromptSet:
    """Queries of a dataset, their formatted prompts and token ids, and each one's position in its source."""

    source: str
    queries: list[str]
    prompts: list[str]
    ids: list[list[int]]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def data_fingerprint(self) -> dict:
        """The prompts' source, count, text and token ids (the same text tokenized otherwise is other data)."""
        return {"source": self.source, "count": len(self), "sha256": io.content_hash(self.prompts),
                "ids_sha256": io.content_hash(self.ids)}


def load_prompt_set(model, source: str, prompt_format: str, column: str = "", limit: int = 0) -> PromptSet:
    """The prompts of `source` formatted for `model` and tokenized; prompts longer than the model's context are
    reported by their position in the source before any work starts."""
    rows = load_prompt_rows(source, column=column or None, limit=limit or None)
    queries = [query for _, query in rows]
    prompts = [format_prompt(query, prompt_format, model.tokenizer) for query in queries]
    ids = [encode_prompt(model.tokenizer, prompt) for prompt in prompts]
    context = model.config.max_position_embeddings
    too_long = [(row, len(row_ids)) for (row, _), row_ids in zip(rows, ids) if len(row_ids) > context]
    if too_long:
        listed = ", ".join(f"{row} ({length} tokens)" for row, length in too_long[:10])
        more = f" and {len(too_long) - 10} more" if len(too_long) > 10 else ""
        raise DataError(f"{len(too_long)} prompts of {source} are longer than the model's context of {context} tokens, "
                        f"at positions (0-based, in source order) {listed}{more}; shorten or remove them")
    return PromptSet(source, queries, prompts, ids, [row for row, _ in rows])


def config_prompts(config, model) -> PromptSet:
    """The prompt set of a config's `dataset`, `prompt_format`, `column` and `limit`."""
    return load_prompt_set(model, config.dataset, config.prompt_format, config.get("column", ""), config.limit)


def fingerprint(job: str, config, models: dict[str, Any], data: dict[str, Any] | None = None,
                exclude: Sequence[str] = ()) -> dict:
    """Everything a job's results depend on: the files of its `models` ({role: Model}), the content of its `data`
    ({role: PromptSet or anything JSON can hold}) and every setting of `config` but those that only place work
    (`PLACEMENT`) and `exclude`."""
    data = {name: value.data_fingerprint if isinstance(value, PromptSet) else {"sha256": io.content_hash(value)}
            for name, value in (data or {}).items()}
    settings = {name: model_name(value) if name in MODEL_SETTINGS and value else value
                for name, value in config.items() if name not in PLACEMENT and name not in exclude}
    # a model judge's settings at their defaults are left out, so runs from before they existed still resume
    settings = {name: value for name, value in settings.items()
                if not (name in model_judges_flags(config) + ["asr_protocol"] and value in ("", "default"))}
    judged = model_judge_fingerprint(config) if "judge" in config and "judge" not in exclude else None
    if judged is not None:
        settings["judge_files"] = judged
    return {"job": job, "models": {role: {"name": model.name, **model.fingerprint} for role, model in models.items()},
            "data": data, "settings": settings}


def model_identity(model) -> str:
    """A hash of what the model computes, from its fingerprint without its dtype, name and optional entries: the
    same for the same files loaded in float32 or bfloat16, from any path."""
    fingerprint = io.without_optional(model.fingerprint)
    return io.content_hash({key: value for key, value in fingerprint.items() if key != "dtype"})


def adapter_fingerprint(directory) -> dict:
    """The digests of a classifier adapter's files (a folder holding adapter.json and adapter.safetensors, or a
    `jaxheads guard train` / `judge train` folder holding them in adapter/), for the fingerprint of a run using it."""
    directory = pathlib.Path(os.path.expanduser(str(directory)))
    if (directory / "adapter" / "adapter.json").is_file():
        directory = directory / "adapter"
    return {name: file_digest(directory / name) for name in ("adapter.json", "adapter.safetensors")
            if (directory / name).is_file()}


def judge_fingerprint(spec: str) -> dict | None:
    """The adapter digests of the response judge `--judge=spec` names (None for a keyword judge)."""
    if not is_model_judge(spec):
        return None
    return adapter_fingerprint(builtin_judge_dir() if spec in (BUILTIN_JUDGE, BUILTIN) else spec)


def shape_fields(model, num_prompts: int | None = None) -> dict:
    """The keys every result file uses for the model (its name and `model_identity`), its shape and the number of
    prompts."""
    fields = {"model": model.name, "model_fingerprint": model_identity(model),
              "num_layers": model.config.num_layers, "num_heads": model.config.num_heads}
    if num_prompts is not None:
        fields["num_prompts"] = num_prompts
    return fields


def write_result(out: str, name: str, result: dict) -> str:
    """Writes `result` as `out/name` with its `provenance` first; returns the path."""
    path = os.path.join(out, name)
    io.atomic_write_json(path, {"provenance": provenance(), **result})
    return path


def json_table(array) -> list:
    """An array as nested lists with NaN as None (JSON has no NaN)."""
    array = np.asarray(array, float)
    return np.where(np.isnan(array), None, array).tolist()


def head_settings(heads, num_layers: int, num_heads: int, max_heads: int, draws: int, seed: int,
                  name: str = "chosen") -> list[tuple[str, int, list[tuple[int, int]]]]:
    """The settings of a comparison with random heads, in order: no ablation, the first k of `heads` (named
    `name`), then `draws` sets of k random heads not in `heads`, for k = 1..max_heads; each is
    `(name, k, [(layer, head), ...])`."""
    heads = check_heads(heads, num_layers, num_heads)
    if not 1 <= max_heads <= len(heads):
        raise JaxheadsError(f"--max_heads must be in 1..{len(heads)} (the heads in the set), got {max_heads}")
    others = [(layer, head) for layer in range(num_layers) for head in range(num_heads) if (layer, head) not in heads]
    if max_heads > len(others):
        raise JaxheadsError(f"--max_heads={max_heads} random heads cannot be drawn from the {len(others)} heads "
                            "not in the set; lower --max_heads")
    rng = np.random.default_rng(seed)
    settings = [("none", 0, [])]
    settings += [(name, k, heads[:k]) for k in range(1, max_heads + 1)]
    for k in range(1, max_heads + 1):
        for _ in range(draws):
            picked = rng.choice(len(others), size=k, replace=False)
            settings.append(("random", k, [others[i] for i in sorted(picked)]))
    return settings


def setting_summary(records: list[dict], max_heads: int, key: str, name: str = "chosen") -> dict:
    """One measure (`key`) of the records of `head_settings`: `{"none": x, name: [x for k], "random_mean": [...],
    "random_std": [...]}` (standard deviation over the draws, ddof 0; None values, e.g. an ASR among no
    non-degenerate responses, are left out of the random statistics)."""
    def values(setting, k):
        return [record[key] for record in records if record["name"] == setting and record["k"] == k]

    random = [[value for value in values("random", k) if value is not None] for k in range(1, max_heads + 1)]
    return {"none": values("none", 0)[0], name: [values(name, k)[0] for k in range(1, max_heads + 1)],
            "random_mean": [float(np.mean(draws)) if draws else None for draws in random],
            "random_std": [float(np.std(draws)) if draws else None for draws in random]}


def stopwatch() -> Callable[[], float]:
    """A function returning the seconds since it was last called (or created)."""
    last = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        elapsed, last[0] = now - last[0], now
        return elapsed

    return lap
