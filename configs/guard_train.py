"""Defaults of `jaxheads guard train`: the four-tier input guard as a LoRA adapter of a model, trained on the built-in
guard set's train split (with the built-in harmful train prompts as Unsafe and the lookalike ones as Safe, or as
Conditionally Safe in its health, defensive-security and chemical-safety categories) and calibrated on a part of it kept out of training: the recipe of the guard shipped for the default model
(docs/guard.md, "The trained guard")."""

import ml_collections

from jaxheads.configs import common, train_defaults

HELP = {
    **common.help_lines(("model", "dtype")),
    "dataset": "Labelled training prompts: builtin:guard:train, or a .csv/.json/.jsonl file with a tier column.",
    "tier": "The tier of every prompt of --dataset (for a set without a tier column); empty = the set's own tiers.",
    "extra": "More labelled training sets, comma-separated SOURCE=TIER (a file or hub id whose prompts all get TIER, "
             "e.g. requests.csv=unsafe), SOURCE (a file with a tier column), or builtin:NAME[:SPLIT]@CAT+CAT=TIER "
             "(only those categories of a built-in set); empty = none.",
    "calibration_every": "Every Nth prompt of each (tier, category) is kept out of training and calibrates the "
                         "temperature and the Safe threshold.",
    "risk_recall_target": "Risk recall the Safe threshold is set to reach on the calibration prompts; 1 = no risky "
                          "calibration prompt may pass as Safe (a finished run rerun with another value calibrates "
                          "again without training).",
    "false_alarm_target": "Most false alarms (Safe prompts labelled Unsafe) allowed on the calibration prompts, as a "
                          "share of their Safe ones: sets the bar on P(unsafe); negative = no bar (plain argmax).",
    "heldout": "Labelled prompts classified after training, written to out/heldout (never used to choose "
               "anything); empty = none.",
    "eval_batch_size": "Prompts per classification batch (calibration and held-out evaluation).",
    **train_defaults.HELP,
    "out": "Output folder: the adapter in out/adapter, guard_train.json, training.png, checkpoints; a rerun "
           "resumes.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.model = ""
    config.dtype = "float32"
    config.dataset = "builtin:guard:train"
    config.tier = ""
    config.extra = ("builtin:harmful:train=unsafe,"
                    "builtin:lookalike:train@computing+photo_film+kitchen+sports_games+garden_pests+history_fiction"
                    "+language_idioms=safe,"
                    "builtin:lookalike:train@health+security_defence+chemical_safety=conditionally_safe")
    config.calibration_every = 4
    config.risk_recall_target = 1.0
    config.false_alarm_target = 0.05
    config.heldout = "builtin:guard:heldout"
    config.eval_batch_size = 32
    train_defaults.add_train_defaults(config)
    config.epochs = 3.0
    config.learning_rate = 5e-4
    config.warmup_steps = 10
    config.lora_rank = 8
    config.lora_alpha = 16.0
    config.lora_targets = "q,k,v,o,gate,up,down"
    config.out = "runs/guard"
    return config
