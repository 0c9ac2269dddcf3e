"""Defaults of `jaxheads sink`: per-head attention onto the sink token and the sink divergence."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + ("dataset", "limit", "prompt_format", "seed", "mesh", "sharding"),
    defaults={"dataset": "builtin:harmful:heldout"},
    answers_model=("", "Unaligned model whose greedy completions are the harmful answers (same forms as --model); "
                       "empty = the embedded SmolLM2."),
    answer_tokens=(96, "Greedy tokens for the harmful answers."),
    batch_size=(8, "Sequences per batch."),
    max_length=(256, "Tokens per (prompt + answer) sequence; longer answers are cut."),
    out=("runs/sink", "Output folder."),
)
