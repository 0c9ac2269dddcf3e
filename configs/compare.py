"""Defaults of `jaxheads compare`: the top-k overlap and rank correlation of the safety heads of several runs."""

from jaxheads.configs import common

get_config, HELP = common.command(
    (),
    runs=("", "Result files to compare, comma-separated (or given as arguments: jaxheads compare a/ships.json "
              "b/sahara.json): each a ships.json (query level: its mean; dataset level: its scores) or a "
              "sahara.json (step 1's scores), optionally NAME=PATH to label it (default label: the file's folder "
              "name). All must have the same layers x heads."),
    top_k=("5,10,20", "Sizes k of the top-k head sets compared, comma-separated; a k above the models' number of "
                      "heads is skipped (and said)."),
    out=("runs/compare", "Output folder for compare.json and compare_heads.png."),
)
