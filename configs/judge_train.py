"""Defaults of `jaxheads judge train`: the response judge (docs/judge.md) as a LoRA adapter of a model, trained on the
built-in judge set's train split and calibrated (temperature) on a part of it kept out of training: the recipe of
the judge shipped for the default model."""

from jaxheads.configs import common, guard_train

get_config, HELP = common.command(
    common.MODEL + ("dataset", "calibration_every", "heldout", "eval_batch_size", "disagreements") + common.TRAIN,
    defaults={"epochs": 5.0, "max_length": 512, **guard_train.CLASSIFIER_LORA},
    helps={"eval_batch_size": "Responses per classification batch (calibration and held-out evaluation)."},
    dataset=("builtin:judge:train", "Labelled responses: builtin:judge:train, or a .csv/.json/.jsonl file with "
                                    "prompt, response and label columns (labels refusal, harmful_compliance, "
                                    "non_answer, benign_answer)."),
    calibration_every=(4, "Every Nth response of each (label, group) is kept out of training and calibrates the "
                          "temperature."),
    heldout=("builtin:judge:heldout", "Labelled responses judged after training, written to out/heldout (never used "
                                      "to choose anything); empty = none."),
    disagreements=(20, "How many held-out responses on which the keyword judge and the response judge disagree most "
                       "are written to out/heldout/judge_disagreements.jsonl."),
    out=("runs/judge", "Output folder: the adapter in out/adapter, judge_train.json, training.png, checkpoints; a "
                       "rerun resumes."),
)
