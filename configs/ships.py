"""Defaults for `python -m launch.ships` and `python -m launch.sahara` (override with flags)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.model = ""  # "" = the embedded default (SmolLM2-135M-Instruct)
    config.dtype = "float32"
    config.dataset = "builtin:harmful"
    config.column = ""
    config.limit = 0  # 0 = every prompt
    config.prompt_format = "template"
    config.ablation = "ua"
    config.epsilon = 1e-5
    config.batch_size = 16
    config.mesh = ""  # "data,model" device mesh, e.g. "4,2"; "" = every device data-parallel
    config.chunk_size = 0  # ablations per device call; 0 = from free device memory (16 on CPU)
    config.steps = 3  # Sahara
    config.rank = 1  # Sahara / dataset-level Ships
    config.out = "runs/ships"
    return config
