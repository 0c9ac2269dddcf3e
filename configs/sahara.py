"""Defaults of `jaxheads sahara`: greedy search for the head group whose ablation most changes the dataset-level
representation of the prompts."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "dataset", "column", "limit", "prompt_format", "ablation", "epsilon", "harmless",
          "specificity", "rank", "batch_size", "chunk_size", "mesh")
HELP = common.help_lines(
    SHARED,
    steps="Heads to choose (greedy steps); a rerun with more steps continues a finished search, with fewer "
          "reports its first steps.",
    out="Output folder; a rerun with the same settings resumes from its finished steps.",
)


def get_config():
    config = common.shared(SHARED)
    config.steps = 3
    config.out = "runs/sahara"
    return config
