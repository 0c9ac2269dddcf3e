"""Defaults of `jaxheads judge train`: the response judge (docs/judge.md) as a LoRA adapter of a model, trained on the
built-in judge set's train split and calibrated (temperature) on a part of it kept out of training: the recipe of
the judge shipped for the default model."""

import ml_collections

from jaxheads.configs import common, train_defaults

HELP = {
    **common.help_lines(("model", "dtype")),
    "dataset": "Labelled responses: builtin:judge:train, or a .csv/.json/.jsonl file with prompt, response and label "
               "columns (labels refusal, harmful_compliance, non_answer, benign_answer).",
    "calibration_every": "Every Nth response of each (label, group) is kept out of training and calibrates the "
                         "temperature.",
    "heldout": "Labelled responses judged after training, written to out/heldout (never used to choose anything); "
               "empty = none.",
    "eval_batch_size": "Responses per classification batch (calibration and held-out evaluation).",
    "disagreements": "How many held-out responses on which the keyword judge and the response judge disagree most "
                     "are written to out/heldout/judge_disagreements.jsonl.",
    **train_defaults.HELP,
    "out": "Output folder: the adapter in out/adapter, judge_train.json, training.png, checkpoints; a rerun resumes.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.model = ""
    config.dtype = "float32"
    config.dataset = "builtin:judge:train"
    config.calibration_every = 4
    config.heldout = "builtin:judge:heldout"
    config.eval_batch_size = 16
    config.disagreements = 20
    train_defaults.add_train_defaults(config)
    config.epochs = 5.0
    config.learning_rate = 5e-4
    config.warmup_steps = 10
    config.lora_rank = 8
    config.lora_alpha = 16.0
    config.lora_targets = "q,k,v,o,gate,up,down"
    config.max_length = 512
    config.out = "runs/judge"
    return config
