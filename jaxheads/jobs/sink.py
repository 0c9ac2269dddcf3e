"""`jaxheads sink`: per-head attention onto the sink token and the sink divergence; writes sink.json and
sink_divergence.png.

Pairs are (harmful prompt + harmful answer, the same prompt + a built-in refusal). The harmful answers are the
greedy completions of `answers_model` (default: the unaligned embedded SmolLM2), kept only where the keyword judge
finds no refusal, and cached in harmful_answers.jsonl. Only the attention column onto the sink is computed."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxheads import io, plots
from jaxheads.jobs import common, training
from jaxheads.loading import load
from jaxheads.placement import model_on_mesh
from jaxheads.sharding import place_rows, to_host
from jaxheads.sink import sink_attention
from jaxheads.tokens import pad_id
from jaxheads.train import tokenize_examples
from jaxheads.train.data import pad_right
from jaxheads.train.datasets import refusal_answers


def mean_sink_attention(model, examples, batch_size: int, max_length: int, mesh=None):
    """alpha `[L, N]` averaged over `examples` (whole sequences, prompt and answer), `batch_size` at a time; on a
    `mesh`, rows split over `data` where they divide, weights in the model's layout."""
    compute = jax.jit(sink_attention)
    module = model.module if mesh is None else model_on_mesh(model, mesh).module
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = pad_right(examples[start:start + batch_size], pad_id(model.tokenizer), max_length)
        ids, mask = (batch.ids, batch.mask) if mesh is None else place_rows((batch.ids, batch.mask), mesh)
        rows.append(to_host(compute(module, ids, mask)))
    return np.concatenate(rows).mean(axis=0)


def check_config(config) -> None:
    common.check_model_settings(config)
    common.check_prompt_settings(config)
    common.require_int(config, "answer_tokens", "batch_size", "max_length")
    common.require_int(config, "seed", minimum=0)


def run(config) -> dict:
    """Measures alpha on both sides of every pair; returns the contents of sink.json."""
    check_config(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        answers_model = (model if config.answers_model == config.model
                         else load(config.answers_model or None, dtype=config.dtype,
                              verify_weights=config.verify_weights))
        data = common.load_prompt_set(answers_model, config.dataset, config.prompt_format, limit=config.limit)
        folder.check(common.fingerprint("sink", config, {"model": model, "answers_model": answers_model},
                                        {"prompts": data}), ["harmful_answers.jsonl"])
        pairs = training.harmful_pairs(answers_model, data.queries, config,
                                       os.path.join(config.out, "harmful_answers.jsonl"))
        kept = [query for query, _ in pairs]
        safe = list(zip(kept, refusal_answers(kept, config.seed)))
        alpha = {}
        for side, side_pairs in (("harmful", pairs), ("safe", safe)):
            examples = tokenize_examples(model.tokenizer, side_pairs, config.prompt_format, config.max_length)
            alpha[side] = mean_sink_attention(model, examples, config.batch_size, config.max_length,
                                              common.device_mesh(config))
        divergence = alpha["harmful"] - alpha["safe"]
        positive = int((divergence > 0).sum())
        output = {**common.shape_fields(model), "answers_model": answers_model.name, "dataset": config.dataset,
                  "num_prompts": len(data), "num_pairs": len(pairs),
                  "axes": {name: ["layer", "head"] for name in ("alpha_harmful", "alpha_safe", "divergence")},
                  "alpha_harmful": alpha["harmful"].tolist(), "alpha_safe": alpha["safe"].tolist(),
                  "divergence": divergence.tolist(), "positive_heads": positive, "settings": config.to_dict()}
        common.write_result(config.out, "sink.json", output)
        plots.plot_head_heatmap(divergence, os.path.join(config.out, "sink_divergence.png"),
                                title=f"sink divergence (harmful − safe) of {model.name}\n{len(pairs)} pairs from "
                                      f"{config.dataset}; {positive} heads > 0",
                                cbar_label="d = α_harmful − α_safe", diverging=True)
    print(f"{positive} of {divergence.size} heads have positive sink divergence over {len(pairs)} pairs; "
          f"wrote {config.out}/sink.json")
    return output
