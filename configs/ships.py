"""Defaults of `jaxheads ships`: query-level Ships of every head over a prompt set."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + common.PROMPTS + common.ABLATION + common.SPECIFICITY + common.SCAN,
    level=("query", "query (KL of the first response token, per prompt) or dataset (principal angle of the prompts' "
                    "representations)."),
    rank=(1, common.FIELDS["rank"][1] + " (dataset level)"),
    out=("runs/ships", "Output folder; a rerun with the same settings resumes from it."),
)
