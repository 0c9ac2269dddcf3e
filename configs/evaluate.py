"""Defaults for `python -m launch.evaluate` (override with flags)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.model = ""
    config.dtype = "float32"
    config.dataset = "builtin:harmful:heldout"
    config.column = ""
    config.limit = 0
    config.prompt_format = "template"
    config.ablation = "ua"
    config.epsilon = 1e-5
    config.ablate = ""  # "l:n,l:n" heads ablated for every prompt
    config.ablate_from = ""  # a sahara.json: ablate its chosen heads
    config.top_k_from = ""  # a ships.json: ablate each prompt's own top-k heads (prompts must match)
    config.top_k = 1
    config.max_new_tokens = 64
    config.batch_size = 16
    config.mesh = ""  # "data,model" device mesh, e.g. "4,2"; "" = every device data-parallel
    config.out = "runs/evaluate"
    return config
