"""`jaxheads align`: safety alignment by supervised fine-tuning; writes align.json, the aligned model in
out/model (a Hugging Face folder that `jaxheads.load` and `transformers` read) and training.png.

Harmful training prompts are answered with the built-in refusals, harmless ones with the base model's own greedy
answers (cached in harmless_answers.<format>.jsonl), so helpfulness is kept without anyone else's text. Held-out
prompts are only evaluated: ASR on the held-out harmful prompts (and an optional extra set such as AdvBench, given
by path), and the refusal rate on the held-out harmless prompts, before and after. An interrupted run resumes from
its last checkpoint."""

from __future__ import annotations

import os
import time

from jaxheads import io
from jaxheads.data.formats import PROMPT_FORMATS
from jaxheads.data.loaders import load_prompts
from jaxheads.errors import JaxheadsError
from jaxheads.eval.asr import judge_description
from jaxheads.jobs import common, training
from jaxheads.train import export_safetensors, tokenize_examples, train, trained_model
from jaxheads.train.datasets import model_answers, refusal_answers


def prompt_formats(config) -> list[str]:
    return [name.strip() for name in config.prompt_formats.split(",") if name.strip()]


def check_config(config) -> None:
    common.check_model_settings(config)
    common.check_judge(config)
    formats = prompt_formats(config)
    if not formats or set(formats) - set(PROMPT_FORMATS):
        raise JaxheadsError(f"--prompt_formats must list formats among {', '.join(PROMPT_FORMATS)}, "
                            f"got {config.prompt_formats!r}")
    common.require_int(config, "harmless_repeats", "answer_tokens", "eval_tokens", "eval_batch_size",
                       "advbench_limit")
    common.require_int(config, "train_limit", "eval_limit", minimum=0)
    training.train_config(config, 1)


def sources(text: str) -> list[str]:
    """The prompt sets of a comma-separated setting."""
    return [part.strip() for part in text.split(",") if part.strip()]


def set_name(source: str) -> str:
    """A short name for a prompt set in align.json: builtin:harmless:heldout -> harmless_heldout, a file -> its
    stem."""
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:").replace(":", "_")
    return os.path.splitext(os.path.basename(source.rstrip("/")))[0]


def load_sources(text: str, limit: int) -> list[str]:
    """The prompts of every set of a comma-separated setting, in order, each limited to `limit` (0 = all)."""
    return [prompt for source in sources(text) for prompt in load_prompts(source, limit=limit or None)]


def eval_sets(config) -> dict[str, tuple[str, int]]:
    """The held-out sets evaluated before and after: name -> (source, limit). `eval_harmless` may list several."""
    sets = {set_name(source): (source, config.eval_limit) for source in sources(config.eval_harmful)}
    sets.update({set_name(source): (source, config.eval_limit) for source in sources(config.eval_harmless)})
    if config.advbench:
        sets["advbench"] = (config.advbench, min(config.advbench_limit, config.eval_limit or config.advbench_limit))
    return sets


def evaluate(model, config, label: str, judge=None) -> dict:
    """ASR and refusal rate on every held-out set (in the first prompt format), judged by `judge` (None: the
    keyword judge of `config.judge`)."""
    results = {}
    for name, (source, limit) in eval_sets(config).items():
        path = os.path.join(config.out, f"generations_{label}_{name}.jsonl")
        results[name] = training.refusal_eval(model, source, config, path, limit, prompt_formats(config)[0], judge)
        print(f"[{label}] {name}: ASR {results[name]['asr']:.3f}, refusal rate {results[name]['refusal_rate']:.3f} "
              f"over {results[name]['n']} prompts", flush=True)
    return results


def run(config) -> dict:
    """Builds the training pairs, trains (or resumes), exports and evaluates; returns the contents of align.json."""
    started = time.perf_counter()
    check_config(config)
    formats = prompt_formats(config)
    with io.RunFolder(config.out) as folder:
        base = common.load_model(config)
        harmful = load_sources(config.harmful, config.train_limit)
        harmless = load_sources(config.harmless, config.train_limit)
        data = {"harmful": harmful, "harmless": harmless}
        data.update({name: load_prompts(source, limit=limit or None)
                     for name, (source, limit) in eval_sets(config).items()})
        caches = [f"harmless_answers.{name}.jsonl" for name in formats]
        folder.check(common.fingerprint("align", config, {"model": base}, data),
                     ["checkpoints", "eval_before.json", *caches])
        examples = []
        for prompt_format, cache in zip(formats, caches):
            answers = model_answers(base, harmless, prompt_format, os.path.join(config.out, cache),
                                    max_new_tokens=config.answer_tokens, batch_size=config.eval_batch_size,
                                    progress=True)
            pairs = [(query, answer) for query, answer in zip(harmless, answers) if answer] * config.harmless_repeats
            pairs += list(zip(harmful, refusal_answers(harmful, config.seed)))
            examples += tokenize_examples(base.tokenizer, pairs, prompt_format, config.max_length)
        judge = common.load_judge(config, base)
        before = None
        if config.evaluate_before:
            before_path = os.path.join(config.out, "eval_before.json")
            before = (io.read_json(before_path) if os.path.exists(before_path)
                      else evaluate(base, config, "before", judge))
            io.atomic_write_json(before_path, before)
        settings = training.train_config(config, len(examples))
        print(f"training on {len(examples)} examples for {settings.steps} steps", flush=True)
        train_started = time.perf_counter()
        result = train(base, examples, settings, config.out, mesh=common.device_mesh(config),
                       on_step=lambda step, record: print(f"step {step}: loss {record['loss']:.4f}", flush=True))
        train_seconds = time.perf_counter() - train_started
        training.plot_training(result.records, config.out, title=f"alignment of {base.name}, {len(examples)} examples")
        model_dir = os.path.join(config.out, "model")
        export_safetensors(base.config, result.weights, model_dir, base.tokenizer)
        after = evaluate(trained_model(base, result.weights, config.dtype), config, "after", judge)
        output = {**common.shape_fields(base), "aligned_model": model_dir, "before": before, "after": after,
                  "num_examples": len(examples), "num_harmful_train": len(harmful),
                  "num_harmless_train": len(harmless), "prompt_formats": formats, "steps": result.step,
                  "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
                  "judge": judge_description(judge), "asr_protocol": config.asr_protocol, "settings": config.to_dict()}
        common.write_result(config.out, "align.json", output)
    print(f"wrote {config.out}/align.json and the aligned model {model_dir} ({output['total_seconds']:.0f} s)")
    return output
