"""Shared absl flags for the launches: a ml_collections config file gives defaults, explicit flags override."""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
    """Defines `--config` (a configs/*.py file) and the common override flags."""
    config_flags.DEFINE_config_file("config", default_config, "ml_collections config file.")
    flags.DEFINE_string("model", None, "Local HF directory, .gguf file or hub id; empty = embedded SmolLM2.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter and activation dtype.")
    flags.DEFINE_string("dataset", None, "builtin:harmful[:train|heldout], builtin:harmless, a .csv/.json/.jsonl/.txt "
                                         "path, or a datasets hub id.")
    flags.DEFINE_string("column", None, "Column holding the prompts (default: input, goal, prompt, ...).")
    flags.DEFINE_integer("limit", None, "Use only the first N prompts (0 = all).")
    flags.DEFINE_enum("prompt_format", None, ["template", "chat", "direct"], "How a query becomes a prompt.")
    flags.DEFINE_enum("ablation", None, ["ua", "sc", "mean"], "Ablation kind (DESIGN.md §2).")
    flags.DEFINE_float("epsilon", None, "Scale used by ua/sc ablations.")
    flags.DEFINE_integer("batch_size", None, "Prompts per batch.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("mesh", None, "Device mesh 'data,model', e.g. 4,2 (-1 = the remaining devices); "
                                      "empty = every device data-parallel.")
    flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() first (coordinator "
                                            "auto-detected on TPU pods and Slurm); only process 0 writes files.")


def resolved_config():
    """The config file's values with every explicitly given flag applied on top (after joining the other
    processes with `--distributed`, which must come before any other JAX call)."""
    if "distributed" in FLAGS and FLAGS.distributed:  # the training launches define their own flags
        import jax

        jax.distributed.initialize()
    config = FLAGS.config
    with config.unlocked():
        for name in config:
            if name in FLAGS and FLAGS[name].present:
                setattr(config, name, FLAGS[name].value)
    os.makedirs(config.out, exist_ok=True)
    return config


def load_model(config):
    import jaxheads

    return jaxheads.load(config.model or None, dtype=config.dtype)


def device_mesh(config):
    """The `(data, model)` mesh of `config.mesh`."""
    from jaxheads.sharding import parse_mesh

    return parse_mesh(config.mesh)


def load_queries(config) -> list[str]:
    from jaxheads.data.loaders import load_prompts

    return load_prompts(config.dataset, column=config.column or None, limit=config.limit or None)


def scan_inputs(config):
    """The model, queries, formatted prompts and the settings a scan's resume log is keyed on."""
    model = load_model(config)
    queries = load_queries(config)
    prompts = format_queries(queries, config, model.tokenizer)
    settings = {"model": model.name, "dtype": config.dtype, "dataset": config.dataset, "limit": config.limit,
                "prompt_format": config.prompt_format, "ablation": config.ablation, "epsilon": config.epsilon}
    return model, queries, prompts, settings


def format_queries(queries, config, tokenizer) -> list[str]:
    from jaxheads.data.formats import format_prompt

    return [format_prompt(query, config.prompt_format, tokenizer) for query in queries]


def resume_records(log, settings: dict) -> dict[int, dict]:
    """Records already written by an interrupted run with the same settings, by prompt index.

    A new log starts with a header holding `settings`; a log from other settings is an error, not overwritten.
    """
    from jaxheads.errors import DataError

    records = log.read()
    if not records:
        log.append({"settings": settings})
        return {}
    if records[0].get("settings") != settings:
        raise DataError(f"{log.path} holds a run with other settings ({records[0].get('settings')}); "
                        "use another --out or delete it")
    return {record["index"]: record for record in records[1:]}


def stopwatch():
    """A function returning the seconds since it was last called (or created)."""
    import time

    last = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        elapsed, last[0] = now - last[0], now
        return elapsed

    return lap
