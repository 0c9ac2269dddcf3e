"""Defaults of `jaxheads patterns`: where chosen heads look from the last prompt position, on harmful and harmless
prompts."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + ("limit", "prompt_format", "batch_size", "mesh", "sharding"),
    defaults={"limit": 16, "batch_size": 8},
    heads=("", "Heads as layer:head pairs, e.g. 18:8,5:6."),
    heads_from=("", "A sahara.json (its chosen heads) or ships.json (its top heads) instead of --heads."),
    top=(3, "With --heads_from: how many of its heads."),
    harmful=("builtin:harmful:heldout", "Harmful prompts (same forms as --dataset of other commands)."),
    harmless=("builtin:harmless:heldout", "Harmless prompts."),
    example=(0, "Which prompt of each set (0-based) is plotted."),
    out=("runs/patterns", "Output folder: patterns.json and patterns.png."),
)
