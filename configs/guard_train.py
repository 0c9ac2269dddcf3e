"""Defaults of `jaxheads guard train`: the four-tier input guard as a LoRA adapter of a model, trained on the built-in
guard set's train split (with the built-in harmful train prompts as Unsafe and the lookalike ones as Safe, or as
Conditionally Safe in its health, defensive-security and chemical-safety categories) and calibrated on a part of it
kept out of training: the recipe of the guard shipped for the default model (docs/guard.md, "The trained guard")."""

from jaxheads.configs import common

# The LoRA recipe of the shipped guard and judge (docs/guard.md, docs/judge.md).
CLASSIFIER_LORA = dict(learning_rate=5e-4, warmup_steps=10, lora_rank=8, lora_alpha=16.0,
                       lora_targets="q,k,v,o,gate,up,down")

get_config, HELP = common.command(
    common.MODEL + ("dataset", "tier", "extra", "calibration_every", "risk_recall_target", "false_alarm_target",
                    "heldout", "eval_batch_size") + common.TRAIN,
    defaults={"eval_batch_size": 32, "epochs": 3.0, **CLASSIFIER_LORA},
    helps={"eval_batch_size": "Prompts per classification batch (calibration and held-out evaluation)."},
    dataset=("builtin:guard:train", "Labelled training prompts: builtin:guard:train, or a .csv/.json/.jsonl file with "
                                    "a tier column."),
    tier=("", "The tier of every prompt of --dataset (for a set without a tier column); empty = the set's own "
              "tiers."),
    extra=("builtin:harmful:train=unsafe,"
           "builtin:lookalike:train@computing+photo_film+kitchen+sports_games+garden_pests+history_fiction"
           "+language_idioms=safe,"
           "builtin:lookalike:train@health+security_defence+chemical_safety=conditionally_safe",
           "More labelled training sets, comma-separated SOURCE=TIER (a file or hub id whose prompts all get TIER, "
           "e.g. requests.csv=unsafe), SOURCE (a file with a tier column), or builtin:NAME[:SPLIT]@CAT+CAT=TIER "
           "(only those categories of a built-in set); empty = none."),
    calibration_every=(4, "Every Nth prompt of each (tier, category) is kept out of training and calibrates the "
                          "temperature and the Safe threshold."),
    risk_recall_target=(1.0, "Risk recall the Safe threshold is set to reach on the calibration prompts; 1 = no "
                             "risky calibration prompt may pass as Safe (a finished run rerun with another value "
                             "calibrates again without training)."),
    false_alarm_target=(0.05, "Most false alarms (Safe prompts labelled Unsafe) allowed on the calibration prompts, "
                              "as a share of their Safe ones: sets the bar on P(unsafe); negative = no bar (plain "
                              "argmax)."),
    heldout=("builtin:guard:heldout", "Labelled prompts classified after training, written to out/heldout (never "
                                      "used to choose anything); empty = none."),
    out=("runs/guard", "Output folder: the adapter in out/adapter, guard_train.json, training.png, checkpoints; a "
                       "rerun resumes."),
)
