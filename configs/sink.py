"""Defaults of `jaxheads sink`: per-head attention onto the sink token and the sink divergence."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "dataset", "limit", "prompt_format", "seed")
HELP = common.help_lines(
    SHARED,
    answers_model="Unaligned model whose greedy completions are the harmful answers (same forms as --model); "
                  "empty = the embedded SmolLM2.",
    answer_tokens="Greedy tokens for the harmful answers.",
    batch_size="Sequences per batch.",
    max_length="Tokens per (prompt + answer) sequence; longer answers are cut.",
    out="Output folder.",
)


def get_config():
    config = common.shared(SHARED, dataset="builtin:harmful:heldout")
    config.answers_model = ""
    config.answer_tokens = 96
    config.batch_size = 8
    config.max_length = 256
    config.out = "runs/sink"
    return config
