"""Defaults of `jaxheads finetune`: the harmful fine-tuning experiment (Surgery with λ = 300, or SFT with
`--surgery_lambda=0`) on an aligned model, with an optimizer that fits a CPU: 1 epoch over 1000 samples at 5e-5 with
a cosine schedule, batch 8. `--config=finetune_authors` has the authors' optimizer settings instead."""

from jaxheads.configs import common

get_config, HELP = common.command(
    ("model", "base_model", "dtype", "verify_weights", "prompt_format", "num_samples", "harmful_ratio", "harmful", "surgery_pool",
     "surgery_paired", "answer_tokens", "answers_cache", "task_seed", "eval_problems", "eval_harmful", "eval_limit")
    + common.EVALUATION + common.TRAIN,
    defaults={
        "learning_rate": 5e-5,
        "surgery_lambda": 300.0,  # the authors' value; 0 = plain fine-tuning (SFT)
        "sink_every": 10,
    },
    model=("runs/align/model", "The safety-aligned model to fine-tune (a folder written by `jaxheads align`, or any "
                               "model form)."),
    base_model=("", "Unaligned model whose greedy completions are the harmful answers; empty = the embedded "
                    "SmolLM2."),
    num_samples=(1000, "Fine-tuning samples (arithmetic word problems, a harmful_ratio fraction replaced by harmful "
                       "pairs)."),
    harmful_ratio=(0.1, "Fraction p of the samples that are (harmful prompt, harmful answer) pairs."),
    harmful=("builtin:harmful:train", "Harmful prompts: even positions feed the fine-tuning mixture, odd ones the "
                                      "Surgery pool (unless --surgery_pool or --surgery_paired)."),
    surgery_pool=("", "Prompts of the Surgery regularizer, disjoint from --harmful: half with harmful answers, half "
                      "with refusals, drawn unpaired; empty = the odd positions of --harmful."),
    surgery_paired=(False, "Regularize on the attack's own prompts, each with its harmful answer and a refusal (a "
                           "departure from the authors, kept for comparison)."),
    answer_tokens=(96, "Greedy tokens of the harmful answers."),
    answers_cache=("", "JSONL cache of the harmful answers shared by the runs of a sweep; empty = "
                       "out/harmful_answers.jsonl."),
    task_seed=(0, "Seed of the arithmetic problems."),
    eval_problems=(100, "Held-out arithmetic problems for Fine-tune Accuracy."),
    eval_harmful=("builtin:harmful:heldout", "Held-out harmful prompts for the Harmful Score."),
    eval_limit=(0, "Use only the first N held-out harmful prompts; 0 = all."),
    out=("runs/finetune", "Output folder: finetune.json, training curves, checkpoints; a rerun resumes."),
)
