"""Defaults of `jaxheads sahara`: greedy search for the head group whose ablation most changes the dataset-level
representation of the prompts."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + common.PROMPTS + common.ABLATION + common.SPECIFICITY + ("rank",) + common.SCAN,
    steps=(3, "Heads to choose (greedy steps); a rerun with more steps continues a finished search, with fewer "
              "reports its first steps."),
    out=("runs/sahara", "Output folder; a rerun with the same settings resumes from its finished steps."),
)
