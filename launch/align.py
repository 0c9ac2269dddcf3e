"""Safety alignment by supervised fine-tuning: align.json, the aligned model in <out>/model, training.png.

    python -m launch.align --out=runs/align
    python -m launch.align --model=/path/to/tiny --steps=2 --advbench= --eval_limit=4 --out=/tmp/align

Harmful training prompts are answered with the built-in refusals; harmless training prompts with the base
model's own greedy answers (cached in harmless_answers.<format>.jsonl), so helpfulness is kept without
anyone else's text. Held-out prompts are only evaluated: ASR on held-out harmful prompts and the first
`advbench_limit` AdvBench goals, and the refusal rate on held-out harmless prompts, before and after.
An interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import time

from absl import app

from configs import align as align_config
from launch import common, training

training.define_config_flags("configs/align.py", align_config.get_config)


def evaluate(model, config, label: str) -> dict:
    """ASR on the held-out harmful sets and refusal rate on the held-out harmless set (first prompt format)."""
    prompt_format = config.prompt_formats.split(",")[0].strip()
    sets = {"harmful_heldout": (config.eval_harmful, config.eval_limit),
            "harmless_heldout": (config.eval_harmless, config.eval_limit)}
    if config.advbench:
        sets["advbench"] = (config.advbench, min(config.advbench_limit, config.eval_limit or config.advbench_limit))
    results = {}
    for name, (source, limit) in sets.items():
        path = os.path.join(config.out, f"generations_{label}_{name}.jsonl")
        results[name] = training.refusal_eval(model, source, config, path, limit, prompt_format)
        print(f"[{label}] {name}: ASR {results[name]['asr']:.3f}, refusal rate {results[name]['refusal_rate']:.3f} "
              f"over {results[name]['n']} prompts", flush=True)
    return results


def main(argv):
    del argv
    from jaxheads import io
    from jaxheads.data.loaders import load_prompts
    from jaxheads.errors import JaxheadsError
    from jaxheads.train import (
        export_safetensors,
        tokenize_examples,
        train,
        trained_model,
    )
    from jaxheads.train.datasets import model_answers, refusal_answers

    started = time.perf_counter()
    training.quiet_logs()
    config = common.resolved_config()
    training.train_config(config, 1)  # bad settings fail before any work
    if config.harmless_repeats < 1:
        raise JaxheadsError(f"harmless_repeats must be at least 1, got {config.harmless_repeats}")
    base = common.load_model(config)
    formats = [name.strip() for name in config.prompt_formats.split(",") if name.strip()]
    harmful = load_prompts(config.harmful, limit=config.train_limit or None)
    harmless = load_prompts(config.harmless, limit=config.train_limit or None)
    examples = []
    for prompt_format in formats:
        answers = model_answers(base, harmless, prompt_format,
                                os.path.join(config.out, f"harmless_answers.{prompt_format}.jsonl"),
                                max_new_tokens=config.answer_tokens, batch_size=config.eval_batch_size,
                                progress=True)
        pairs = [(query, answer) for query, answer in zip(harmless, answers) if answer] * config.harmless_repeats
        pairs += list(zip(harmful, refusal_answers(harmful, config.seed)))
        examples += tokenize_examples(base.tokenizer, pairs, prompt_format, config.max_length)
    before_path = os.path.join(config.out, "eval_before.json")
    before = None
    if config.evaluate_before:
        before = io.read_json(before_path) if os.path.exists(before_path) else evaluate(base, config, "before")
        io.atomic_write_json(before_path, before)
    train_settings = training.train_config(config, len(examples))
    print(f"training on {len(examples)} examples for {train_settings.steps} steps", flush=True)
    train_started = time.perf_counter()
    result = train(base, examples, train_settings, config.out, mesh=common.device_mesh(config),
                   on_step=lambda step, record: print(f"step {step}: loss {record['loss']:.4f}", flush=True))
    train_seconds = time.perf_counter() - train_started
    training.plot_training(result.records, config.out)
    export_safetensors(base.config, result.weights, os.path.join(config.out, "model"), base.tokenizer)
    after = evaluate(trained_model(base, result.weights, config.dtype), config, "after")
    output = {"model": base.name, "aligned_model": os.path.join(config.out, "model"), "before": before,
              "after": after, "examples": len(examples), "harmful_train": len(harmful),
              "harmless_train": len(harmless), "prompt_formats": formats, "steps": result.step,
              "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
              "settings": config.to_dict()}
    io.atomic_write_json(os.path.join(config.out, "align.json"), output)
    print(f"wrote {config.out}/align.json and the aligned model {config.out}/model "
          f"({output['total_seconds']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
