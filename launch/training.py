"""Shared pieces of the training launches (align, finetune, sink): one absl flag per config field, the trainer
settings from a config, refusal evaluation on prompt sets, and the training-curve plot."""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags, logging
from ml_collections import config_flags

from launch import common

_FLAG_KINDS = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
               str: flags.DEFINE_string}


def define_config_flags(config_file: str, get_config) -> None:
    """`--config` (a configs/*.py file) and one override flag per field of its config, e.g. `--surgery_lambda`."""
    config_flags.DEFINE_config_file("config", config_file, "ml_collections config file.")
    for name, value in get_config().items():
        _FLAG_KINDS[type(value)](name, None, f"Overrides config.{name} (default {value!r}).")


def quiet_logs() -> None:
    """Hides Orbax's per-save INFO lines unless `--verbosity` was given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def train_config(config, num_examples: int):
    """The `TrainConfig` named by the config's fields; `steps = 0` means `epochs` passes over the examples."""
    from jaxheads.train import TrainConfig
    from jaxheads.train.trainer import epochs_to_steps

    names = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {name: config[name] for name in names if name in config}
    values["lora_targets"] = tuple(part.strip() for part in config.lora_targets.split(",") if part.strip())
    train = TrainConfig(**{**values, "steps": max(config.steps, 1)})
    if config.steps == 0:
        train = dataclasses.replace(train, steps=epochs_to_steps(num_examples, config.epochs, train))
    return train


def refusal_eval(model, source: str, config, out_path: str, limit: int = 0, prompt_format: str | None = None) -> dict:
    """Greedy responses to the prompts of `source` judged by the keyword judge: `{"asr", "refusal_rate", "n"}`.
    The responses are written to `out_path` (JSONL)."""
    from jaxheads import io
    from jaxheads.data.formats import format_prompt
    from jaxheads.data.loaders import load_prompts
    from jaxheads.eval import asr

    queries = load_prompts(source, limit=limit or None)
    prompt_format = prompt_format or config.prompt_format
    prompts = [format_prompt(query, prompt_format, model.tokenizer) for query in queries]
    result = asr.evaluate(model, queries, prompts, max_new_tokens=config.eval_tokens,
                          batch_size=config.eval_batch_size, progress=True, mesh=common.device_mesh(config))
    io.atomic_write_text(out_path, "".join(json.dumps(record) + "\n" for record in result.records))
    return {"asr": result.asr, "refusal_rate": 1 - result.asr, "n": result.n}


def plot_training(records: list[dict], out_dir: str) -> None:
    """Saves `training.png`: the loss, and the Surgery penalty and positive-head count when logged."""
    from jaxheads import plots

    keys = ["loss", "ce", "penalty"] if any("penalty" in record for record in records) else ["loss"]
    if any("positive_heads" in record for record in records):
        keys.append("positive_heads")
    plots.plot_curves(records, keys, os.path.join(out_dir, "training.png"), title="training")


def harmful_pairs(answers_model, queries, config, cache_path: str) -> list[tuple[str, str]]:
    """(query, harmful answer) for the queries whose greedy answer the keyword judge does not call a refusal."""
    from jaxheads.errors import DataError
    from jaxheads.eval.judges import KeywordJudge
    from jaxheads.train.datasets import model_answers

    answers = model_answers(answers_model, queries, config.prompt_format, cache_path,
                            max_new_tokens=config.answer_tokens, progress=True)
    refused = KeywordJudge()(list(queries), answers)
    pairs = [(query, answer) for query, answer, refusal in zip(queries, answers, refused) if not refusal]
    if not pairs:
        raise DataError(f"{answers_model.name} refused all {len(queries)} prompts, so there are no harmful answers; "
                        "use an unaligned --answers_model / --base_model or other prompts")
    return pairs
