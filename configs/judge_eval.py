"""Defaults of `jaxheads judge eval`: a response judge's labels for (prompt, response) pairs, and with labels its
accuracy, per-label recall and precision and its agreement with the keyword judge (the built-in held-out split)."""

import ml_collections

from jaxheads.configs import common

HELP = {
    "judge": "The response judge: guard (the adapter shipped for the embedded default model) or the folder a "
             "`jaxheads judge train` run wrote.",
    "model": "The judge's model; empty = the model its adapter was trained on (the embedded default for the shipped "
             "judge).",
    "dtype": common.FIELDS["dtype"][1],
    "dataset": "(prompt, response) pairs: builtin:judge (optionally :train or :heldout) or a .csv/.json/.jsonl file "
               "with prompt and response columns (and a label column for the metrics).",
    "limit": "Use only the first N responses; 0 = all.",
    "batch_size": "Responses per forward pass.",
    "mesh": common.FIELDS["mesh"][1],
    "disagreements": "How many responses on which the keyword judge and the response judge disagree most (by the "
                     "judge's probability of its own label) are written to judge_disagreements.jsonl.",
    "out": "Output folder: judge.json, judge.jsonl, judge_disagreements.jsonl and (for a labelled set) "
           "judge_confusion.png.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.judge = "guard"
    config.model = ""
    config.dtype = "float32"
    config.dataset = "builtin:judge:heldout"
    config.limit = 0
    config.batch_size = 16
    config.mesh = ""
    config.disagreements = 20
    config.out = "runs/judge_eval"
    return config
