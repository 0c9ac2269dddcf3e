"""Per-head sink attention and sink divergence (DESIGN.md §6): sink.json and sink_divergence.png.

    python -m launch.sink --dataset=builtin:harmful:heldout --out=runs/sink
    python -m launch.sink --model=runs/align/model --out=runs/sink_aligned

Pairs are (harmful prompt + harmful answer, harmful prompt + refusal). The harmful answers are the greedy
completions of `--answers_model` (default: the unaligned embedded SmolLM2), kept only where the keyword judge
finds no refusal; they are cached in harmful_answers.jsonl. Only the attention column onto the sink is computed.
"""

from __future__ import annotations

import os

from absl import app

from configs import sink as sink_config
from launch import common, training

training.define_config_flags("configs/sink.py", sink_config.get_config)


def mean_sink_attention(model, examples, batch_size: int, max_length: int):
    """alpha `[L, N]` averaged over `examples` (whole sequences, prompt and answer), `batch_size` at a time."""
    import jax
    import numpy as np

    from jaxheads.generate import pad_id
    from jaxheads.sink import sink_attention
    from jaxheads.train.data import pad_right

    compute = jax.jit(sink_attention)
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = pad_right(examples[start:start + batch_size], pad_id(model.tokenizer), max_length)
        rows.append(np.asarray(compute(model.module, batch.ids, batch.mask)))
    return np.concatenate(rows).mean(axis=0)


def main(argv):
    del argv
    import jaxheads
    from jaxheads import io, plots
    from jaxheads.data.loaders import load_prompts
    from jaxheads.train import tokenize_examples
    from jaxheads.train.datasets import refusal_answers

    config = common.resolved_config()
    model = common.load_model(config)
    answers_model = (model if config.answers_model == config.model
                     else jaxheads.load(config.answers_model or None, dtype=config.dtype))
    queries = load_prompts(config.dataset, limit=config.limit or None)
    pairs = training.harmful_pairs(answers_model, queries, config, os.path.join(config.out, "harmful_answers.jsonl"))
    kept = [query for query, _ in pairs]
    safe = list(zip(kept, refusal_answers(kept, config.seed)))
    alpha = {}
    for side, side_pairs in (("harmful", pairs), ("safe", safe)):
        examples = tokenize_examples(model.tokenizer, side_pairs, config.prompt_format, config.max_length)
        alpha[side] = mean_sink_attention(model, examples, config.batch_size, config.max_length)
    divergence = alpha["harmful"] - alpha["safe"]
    positive = int((divergence > 0).sum())
    output = {"alpha_harmful": alpha["harmful"].tolist(), "alpha_safe": alpha["safe"].tolist(),
              "divergence": divergence.tolist(), "positive_heads": positive, "model": model.name,
              "answers_model": answers_model.name, "dataset": config.dataset, "pairs": len(pairs),
              "prompts": len(queries), "prompt_format": config.prompt_format}
    io.atomic_write_json(os.path.join(config.out, "sink.json"), output)
    plots.plot_head_heatmap(divergence, os.path.join(config.out, "sink_divergence.png"),
                            title=f"sink divergence (harmful - safe), {positive} heads > 0",
                            cbar_label="d = alpha_harmful - alpha_safe")
    print(f"{positive} of {divergence.size} heads have positive sink divergence over {len(pairs)} pairs; "
          f"wrote {config.out}/sink.json")


if __name__ == "__main__":
    app.run(main)
