"""Defaults of `jaxheads compare`: the top-k overlap and rank correlation of the safety heads of several runs."""

import ml_collections

HELP = {
    "runs": "Result files to compare, comma-separated (the command takes no positional arguments): "
            "--runs=a/ships.json,b/sahara.json; each a ships.json (query level: its mean; dataset level: its "
            "scores) or a sahara.json (step 1's scores), optionally NAME=PATH to label it (default label: the "
            "file's folder name). All must have the same layers x heads.",
    "top_k": "Sizes k of the top-k head sets compared, comma-separated.",
    "out": "Output folder for compare.json and compare_heads.png.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.runs = ""
    config.top_k = "5,10,20"
    config.out = "runs/compare"
    return config
