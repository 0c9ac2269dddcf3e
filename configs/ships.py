"""Defaults of `jaxheads ships`: query-level Ships of every head over a prompt set."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "dataset", "column", "limit", "prompt_format", "ablation", "epsilon", "harmless",
          "specificity", "batch_size", "chunk_size", "mesh")
HELP = {**common.help_lines(
    SHARED,
    level="query (KL of the first response token, per prompt) or dataset (principal angle of the prompts' "
          "representations).",
    out="Output folder; a rerun with the same settings resumes from it."),
    "rank": common.FIELDS["rank"][1] + " (dataset level)"}


def get_config():
    config = common.shared(SHARED)
    config.level = "query"
    config.rank = 1
    config.out = "runs/ships"
    return config
