"""Defaults for `python -m launch.sink`: per-head sink attention and sink divergence (override with flags)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.model = ""  # the model analysed; "" = the embedded default
    config.answers_model = ""  # unaligned model whose completions are the harmful answers; "" = embedded SmolLM2
    config.dtype = "float32"
    config.dataset = "builtin:harmful:heldout"
    config.limit = 0
    config.prompt_format = "template"
    config.answer_tokens = 96
    config.batch_size = 8
    config.max_length = 256
    config.seed = 0
    config.out = "runs/sink"
    return config
