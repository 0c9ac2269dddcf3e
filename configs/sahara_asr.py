"""Defaults of `jaxheads sahara_asr`: ASR with Sahara's first k heads ablated next to k random heads."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "dataset", "column", "limit", "prompt_format", "ablation", "epsilon", "max_new_tokens",
          "judge", "batch_size", "mesh", "seed")
HELP = common.help_lines(
    SHARED,
    sahara="The sahara.json whose heads are ablated.",
    top_k_from="Instead of --sahara, a ships.json: each of its prompts' own top-k heads, next to k random heads "
               "per prompt (its prompts replace --dataset).",
    max_heads="Largest k; 0 = every head in the sahara.json (1 with --top_k_from).",
    random_draws="Random head sets drawn per k (from the heads Sahara did not choose).",
    out="Output folder; a rerun with the same settings resumes from its finished settings.",
)


def get_config():
    config = common.shared(SHARED, dataset="builtin:harmful:heldout")
    config.sahara = ""
    config.top_k_from = ""
    config.max_heads = 0
    config.random_draws = 5
    config.out = "runs/sahara_asr"
    return config
