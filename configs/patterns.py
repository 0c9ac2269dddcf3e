"""Defaults of `jaxheads patterns`: where chosen heads look from the last prompt position, on harmful and harmless
prompts."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "limit", "prompt_format", "batch_size")
HELP = common.help_lines(
    SHARED,
    heads="Heads as layer:head pairs, e.g. 18:8,5:6.",
    heads_from="A sahara.json (its chosen heads) or ships.json (its top heads) instead of --heads.",
    top="With --heads_from: how many of its heads.",
    harmful="Harmful prompts (same forms as --dataset of other commands).",
    harmless="Harmless prompts.",
    example="Which prompt of each set (0-based) is plotted.",
    out="Output folder: patterns.json and patterns.png.",
)


def get_config():
    config = common.shared(SHARED, limit=16, batch_size=8)
    config.heads = ""
    config.heads_from = ""
    config.top = 3
    config.harmful = "builtin:harmful:heldout"
    config.harmless = "builtin:harmless:heldout"
    config.example = 0
    config.out = "runs/patterns"
    return config
