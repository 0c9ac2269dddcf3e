"""Defaults for `python -m launch.finetune`: the harmful fine-tuning experiment (override with flags)."""

import ml_collections

from configs.train_defaults import add_train_defaults


def get_config():
    config = ml_collections.ConfigDict()
    config.model = "runs/align/model"  # the safety-aligned starting point
    config.base_model = ""  # unaligned model whose completions are the harmful answers; "" = embedded SmolLM2
    config.dtype = "float32"
    config.prompt_format = "template"
    config.num_samples = 1000
    config.harmful_ratio = 0.1
    config.harmful = "builtin:harmful:train"  # prompts of the harmful samples and the Surgery pairs
    config.answer_tokens = 96
    config.answers_cache = ""  # JSONL cache of the harmful answers; "" = <out>/harmful_answers.jsonl (share it in sweeps)
    config.task_seed = 0
    config.eval_problems = 100
    config.eval_harmful = "builtin:harmful:heldout"
    config.eval_limit = 0
    config.eval_tokens = 64
    config.eval_batch_size = 16
    config.out = "runs/finetune"
    add_train_defaults(config)
    config.learning_rate = 5e-5
    config.sink_every = 10
    return config
