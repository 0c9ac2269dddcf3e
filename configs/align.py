"""Defaults for `python -m launch.align`: safety alignment of the default model (override with flags)."""

import ml_collections

from configs.train_defaults import add_train_defaults


def get_config():
    config = ml_collections.ConfigDict()
    config.model = ""  # "" = the embedded default (SmolLM2-135M-Instruct)
    config.dtype = "float32"  # compute dtype of training and evaluation
    config.prompt_formats = "template"  # comma-separated: each training pair is rendered in every format
    config.harmful = "builtin:harmful:train"  # prompts answered with refusals
    config.harmless = "builtin:harmless:train"  # prompts answered with the base model's own greedy answers
    config.train_limit = 0  # 0 = every training prompt of each set
    config.harmless_repeats = 2  # each harmless pair appears this many times per epoch (against over-refusal)
    config.answer_tokens = 96  # greedy tokens for the base model's answers
    config.eval_harmful = "builtin:harmful:heldout"
    config.eval_harmless = "builtin:harmless:heldout"
    config.advbench = "../shared/data/advbench.csv"  # "" = skip
    config.advbench_limit = 100
    config.eval_limit = 0  # 0 = every held-out prompt
    config.eval_tokens = 64
    config.eval_batch_size = 64  # 1.5x the generation throughput of 16 on the 2-core CPU (README)
    config.evaluate_before = True
    config.out = "runs/align"
    add_train_defaults(config)
    config.epochs = 2.0  # the measured recipe in the README (run 5): 118 steps of 8 on the built-in train splits
    config.learning_rate = 1e-4
    config.warmup_steps = 3
    config.max_length = 64  # answers are cut to fit: the base model's harmless answers lose their tails
    return config
