"""Defaults of `jaxheads judge eval`: a response judge's labels for (prompt, response) pairs, and with labels its
accuracy, per-label recall and precision and its agreement with the keyword judge (the built-in held-out split)."""

from jaxheads.configs import common

get_config, HELP = common.command(
    ("judge",) + common.MODEL_JUDGE + ("model", "dtype", "dataset", "limit", "batch_size", "mesh", "disagreements",
                                       "out"),
    judge=("guard", "The response judge: guard (the adapter shipped for the embedded default model) or the folder a "
                    "`jaxheads judge train` run wrote; or a model judge KIND:DIR (docs/judges.md), which re-judges "
                    "the pairs (e.g. a run's generations.jsonl) into judge.json and judge.jsonl."),
    model=("", "The judge's model; empty = the model its adapter was trained on (the embedded default for the "
               "shipped judge)."),
    dataset=("builtin:judge:heldout", "(prompt, response) pairs: builtin:judge (optionally :train or :heldout) or a "
                                      ".csv/.json/.jsonl file with prompt and response columns (and a label column "
                                      "for the metrics)."),
    limit=(0, "Use only the first N responses; 0 = all."),
    batch_size=(16, "Responses per forward pass."),
    disagreements=(20, "How many responses on which the keyword judge and the response judge disagree most (by the "
                       "judge's probability of its own label) are written to judge_disagreements.jsonl."),
    out=("runs/judge_eval", "Output folder: judge.json, judge.jsonl, judge_disagreements.jsonl and (for a labelled "
                            "set) judge_confusion.png."),
)
