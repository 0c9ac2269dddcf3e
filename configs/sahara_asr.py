"""Defaults of `jaxheads sahara_asr`: ASR with Sahara's first k heads ablated next to k random heads."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + common.PROMPTS + common.ABLATION + common.GENERATION + ("seed",),
    defaults={"dataset": "builtin:harmful:heldout"},
    sahara=("", "The sahara.json whose heads are ablated."),
    top_k_from=("", "Instead of --sahara, a ships.json: each of its prompts' own top-k heads, next to k random heads "
                    "per prompt (its prompts replace --dataset)."),
    max_heads=(0, "Largest k; 0 = every head in the sahara.json (1 with --top_k_from)."),
    random_draws=(5, "Random head sets drawn per k (from the heads Sahara did not choose)."),
    out=("runs/sahara_asr", "Output folder; a rerun with the same settings resumes from its finished settings."),
)
