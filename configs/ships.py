"""Defaults of `jaxheads ships`: query-level Ships of every head over a prompt set."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "dataset", "column", "limit", "prompt_format", "ablation", "epsilon", "batch_size",
          "chunk_size", "mesh")
HELP = common.help_lines(SHARED, out="Output folder; a rerun with the same settings resumes from it.")


def get_config():
    config = common.shared(SHARED)
    config.out = "runs/ships"
    return config
