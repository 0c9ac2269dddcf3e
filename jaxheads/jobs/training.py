"""What the training jobs (align, finetune) and the sink job share: the trainer settings of a config, refusal
evaluation on prompt sets, harmful answers from an unaligned model, and the training-curve plot."""

from __future__ import annotations

import dataclasses
import os

from jaxheads import io, plots
from jaxheads.errors import DataError
from jaxheads.eval import asr
from jaxheads.eval.judges import KeywordJudge
from jaxheads.jobs import common
from jaxheads.train import TrainConfig
from jaxheads.train.datasets import model_answers


def train_config(config, num_examples: int):
    """The `TrainConfig` named by the config's fields; `steps = 0` means `epochs` passes over the examples.
    Bad settings raise here, before any work."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {name: config[name] for name in names if name in config}
    values["lora_targets"] = tuple(part.strip() for part in config.lora_targets.split(",") if part.strip())
    common.require_int(config, "steps", minimum=0)
    common.require(config, "epochs", config.epochs > 0, "> 0")
    return TrainConfig(**values).for_examples(num_examples)


def refusal_eval(model, source: str, config, out_path: str, limit: int = 0, prompt_format: str | None = None,
                 judge=None) -> dict:
    """Greedy responses to the prompts of `source` judged by `judge` (made once per run by `common.load_judge`;
    None = `config.judge`'s keyword judge): the ASR summary (`asr`, `n`, `degenerate_share`, `asr_non_degenerate`,
    `by_judge`) and `refusal_rate` (1 - ASR for a keyword judge; the share labelled refusal for a response judge).
    The responses are written to `out_path` (JSONL); with a response
    judge its disagreements with the keyword judge go next to it (judge_disagreements_NAME.jsonl for
    generations_NAME.jsonl)."""
    data = common.load_prompt_set(model, source, prompt_format or config.prompt_format, limit=limit)
    result = asr.evaluate(model, data.queries, data.prompts, judge=judge or config.judge,
                          max_new_tokens=config.eval_tokens, batch_size=config.eval_batch_size, progress=True,
                          mesh=common.device_mesh(config))
    io.atomic_write_jsonl(out_path, result.records)
    folder, name = os.path.split(out_path)
    common.write_disagreements(os.path.join(folder, "judge_disagreements_" + name.removeprefix("generations_")),
                               result)
    summary = result.summary()
    del summary["judge"]
    return {**summary, "refusal_rate": result.refusal_rate}


def plot_training(records: list[dict], out_dir: str, title: str) -> None:
    """Saves `training.png`: the loss, and the Surgery penalty and positive-head count when logged."""
    keys = ["loss", "ce", "penalty"] if any("penalty" in record for record in records) else ["loss"]
    if any("positive_heads" in record for record in records):
        keys.append("positive_heads")
    plots.plot_curves(records, keys, os.path.join(out_dir, "training.png"), title=title)


def harmful_pairs(answers_model, queries, config, cache_path: str) -> list[tuple[str, str]]:
    """(query, harmful answer) for the queries whose greedy answer the keyword judge does not call a refusal."""
    answers = model_answers(answers_model, queries, config.prompt_format, cache_path,
                            max_new_tokens=config.answer_tokens, progress=True)
    refused = KeywordJudge()(list(queries), answers)
    pairs = [(query, answer) for query, answer, refusal in zip(queries, answers, refused) if not refusal]
    if not pairs:
        raise DataError(f"{answers_model.name} refused all {len(queries)} prompts, so there are no harmful answers; "
                        "use an unaligned --answers_model / --base_model or other prompts")
    return pairs
