"""Defaults of `jaxheads finetune`: the harmful fine-tuning experiment (Surgery with λ = 300, or SFT with
`--surgery_lambda=0`) on an aligned model, with an optimizer that fits a CPU: 1 epoch over 1000 samples at 5e-5 with
a cosine schedule, batch 8. `--config=finetune_authors` has the authors' optimizer settings instead."""

import ml_collections

from jaxheads.configs import common, train_defaults

HELP = {
    "model": "The safety-aligned model to fine-tune (a folder written by `jaxheads align`, or any model form).",
    "base_model": "Unaligned model whose greedy completions are the harmful answers; empty = the embedded SmolLM2.",
    "dtype": common.FIELDS["dtype"][1],
    "prompt_format": common.FIELDS["prompt_format"][1],
    "num_samples": "Fine-tuning samples (arithmetic word problems, a harmful_ratio fraction replaced by harmful "
                   "pairs).",
    "harmful_ratio": "Fraction p of the samples that are (harmful prompt, harmful answer) pairs.",
    "harmful": "Harmful prompts: even positions feed the fine-tuning mixture, odd ones the Surgery pool (unless "
               "--surgery_pool or --surgery_paired).",
    "surgery_pool": "Prompts of the Surgery regularizer, disjoint from --harmful: half with harmful answers, half with "
                    "refusals, drawn unpaired; empty = the odd positions of --harmful.",
    "surgery_paired": "Regularize on the attack's own prompts, each with its harmful answer and a refusal (a departure "
                      "from the authors, kept for comparison).",
    "answer_tokens": "Greedy tokens of the harmful answers.",
    "answers_cache": "JSONL cache of the harmful answers shared by the runs of a sweep; empty = "
                     "out/harmful_answers.jsonl.",
    "task_seed": "Seed of the arithmetic problems.",
    "eval_problems": "Held-out arithmetic problems for Fine-tune Accuracy.",
    "eval_harmful": "Held-out harmful prompts for the Harmful Score.",
    "eval_limit": "Use only the first N held-out harmful prompts; 0 = all.",
    "eval_tokens": "Greedy tokens per evaluation response.",
    "judge": common.FIELDS["judge"][1],
    "eval_batch_size": "Prompts per generation batch in the evaluations.",
    **train_defaults.HELP,
    "out": "Output folder: finetune.json, training curves, checkpoints; a rerun resumes.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.model = "runs/align/model"
    config.base_model = ""
    config.dtype = "float32"
    config.prompt_format = "template"
    config.num_samples = 1000
    config.harmful_ratio = 0.1
    config.harmful = "builtin:harmful:train"
    config.surgery_pool = ""
    config.surgery_paired = False
    config.answer_tokens = 96
    config.answers_cache = ""
    config.task_seed = 0
    config.eval_problems = 100
    config.eval_harmful = "builtin:harmful:heldout"
    config.eval_limit = 0
    config.eval_tokens = 64
    config.judge = "keyword"
    config.eval_batch_size = 16
    train_defaults.add_train_defaults(config)
    config.learning_rate = 5e-5
    config.surgery_lambda = 300.0  # the authors' value; 0 = plain fine-tuning (SFT)
    config.sink_every = 10
    config.out = "runs/finetune"
    return config
