"""Defaults of `jaxheads align`: safety alignment of a model by supervised fine-tuning (the measured recipe of
aligned run 6 in docs/results.md: run 5's, with the lookalike harmless prompts among the harmless ones)."""

import ml_collections

from jaxheads.configs import common, train_defaults

HELP = {
    **common.help_lines(("model", "dtype")),
    "prompt_formats": "Comma-separated prompt formats; each training pair is rendered in every one.",
    "harmful": "Prompts answered with the built-in refusals (comma-separated sets allowed).",
    "harmless": "Prompts answered with the base model's own greedy answers (comma-separated sets allowed).",
    "train_limit": "Use only the first N prompts of each training set; 0 = all.",
    "harmless_repeats": "Times each harmless pair appears per epoch (against over-refusal).",
    "answer_tokens": "Greedy tokens of the base model's harmless answers.",
    "eval_harmful": "Held-out harmful prompts: ASR before and after (comma-separated sets allowed).",
    "eval_harmless": "Held-out harmless prompts: refusal rate before and after, per set (comma-separated).",
    "advbench": "An extra harmful evaluation set by path or hub id, e.g. AdvBench's harmful_behaviors.csv; "
                "empty = none.",
    "advbench_limit": "Prompts of the extra evaluation set used.",
    "eval_limit": "Use only the first N prompts of each evaluation set; 0 = all.",
    "eval_tokens": "Greedy tokens per evaluation response.",
    "judge": common.FIELDS["judge"][1],
    "eval_batch_size": "Prompts per generation batch in the evaluations.",
    "evaluate_before": "Also evaluate the base model before training.",
    **train_defaults.HELP,
    "out": "Output folder: align.json, the aligned model in out/model, checkpoints; a rerun resumes.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.model = ""
    config.dtype = "float32"
    config.prompt_formats = "template"
    config.harmful = "builtin:harmful:train"
    config.harmless = "builtin:harmless:train,builtin:lookalike:train"
    config.train_limit = 0
    config.harmless_repeats = 2
    config.answer_tokens = 96
    config.eval_harmful = "builtin:harmful:heldout"
    config.eval_harmless = "builtin:harmless:heldout,builtin:lookalike:heldout"
    config.advbench = ""
    config.advbench_limit = 100
    config.eval_limit = 0
    config.eval_tokens = 64
    config.judge = "keyword"
    config.eval_batch_size = 64  # 1.5x the generation throughput of 16 on a 2-core CPU (docs/results.md)
    config.evaluate_before = True
    train_defaults.add_train_defaults(config)
    config.epochs = 2.0  # aligned run 6: 179 steps of 8 on the built-in train splits
    config.learning_rate = 1e-4
    config.warmup_steps = 3
    config.max_length = 64  # answers are cut to fit: the base model's harmless answers lose their tails
    config.out = "runs/align"
    return config
