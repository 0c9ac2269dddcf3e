"""Defaults of `jaxheads align`: safety alignment of a model by supervised fine-tuning (the measured recipe of
aligned run 6 in docs/results.md: run 5's, with the lookalike harmless prompts among the harmless ones)."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + ("prompt_formats", "harmful", "harmless", "train_limit", "harmless_repeats", "answer_tokens",
                    "eval_harmful", "eval_harmless", "advbench", "advbench_limit", "eval_limit") + common.EVALUATION
    + ("evaluate_before",) + common.TRAIN,
    defaults={
        "eval_batch_size": 64,  # 1.5x the generation throughput of 16 on a 2-core CPU (docs/results.md)
        "epochs": 2.0,  # aligned run 6: 179 steps of 8 on the built-in train splits
        "learning_rate": 1e-4,
        "warmup_steps": 3,
        "max_length": 64,  # answers are cut to fit: the base model's harmless answers lose their tails
    },
    prompt_formats=("template", "Comma-separated prompt formats; each training pair is rendered in every one."),
    harmful=("builtin:harmful:train", "Prompts answered with the built-in refusals (comma-separated sets allowed)."),
    harmless=("builtin:harmless:train,builtin:lookalike:train", "Prompts answered with the base model's own greedy "
                                                                "answers (comma-separated sets allowed)."),
    train_limit=(0, "Use only the first N prompts of each training set; 0 = all."),
    harmless_repeats=(2, "Times each harmless pair appears per epoch (against over-refusal)."),
    answer_tokens=(96, "Greedy tokens of the base model's harmless answers."),
    eval_harmful=("builtin:harmful:heldout", "Held-out harmful prompts: ASR before and after (comma-separated sets "
                                             "allowed)."),
    eval_harmless=("builtin:harmless:heldout,builtin:lookalike:heldout", "Held-out harmless prompts: refusal rate "
                                                                         "before and after, per set "
                                                                         "(comma-separated)."),
    advbench=("", "An extra harmful evaluation set by path or hub id, e.g. AdvBench's harmful_behaviors.csv; empty = "
                  "none."),
    advbench_limit=(100, "Prompts of the extra evaluation set used."),
    eval_limit=(0, "Use only the first N prompts of each evaluation set; 0 = all."),
    evaluate_before=(True, "Also evaluate the base model before training."),
    out=("runs/align", "Output folder: align.json, the aligned model in out/model, checkpoints; a rerun resumes."),
)
