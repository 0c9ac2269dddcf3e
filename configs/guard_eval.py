"""Defaults of `jaxheads guard eval`: the guard's metrics on a labelled prompt set (the built-in held-out split)."""

from jaxheads.configs import common

# The fields of the guard's classification commands (guard eval, guard classify), which differ only in --out.
FIELDS = dict(
    guard=("builtin", "The guard: builtin (the adapter shipped for the embedded default model) or the folder a "
                      "`jaxheads guard train` run wrote."),
    model=("", "The guard's model; empty = the model its adapter was trained on (the embedded default for the "
               "built-in guard)."),
    dtype=common.FIELDS["dtype"],
    dataset=("builtin:guard:heldout", "Prompts: builtin:guard (optionally :train or :heldout), any prompt set "
                                      "(builtin:NAME, a .csv/.json/.jsonl/.txt file, a datasets hub id), a file with "
                                      "a tier column, or any set with --tier."),
    tier=("", "The tier of every prompt of --dataset (for a set without tiers, e.g. an AdvBench CSV); empty = the "
              "set's own tiers."),
    column=common.FIELDS["column"],
    limit=common.FIELDS["limit"],
    batch_size=(32, "Prompts per forward pass."),
    mesh=common.FIELDS["mesh"],
)
OUT = "Output folder: guard.json, guard.jsonl and (for a labelled set) guard_confusion.png."

get_config, HELP = common.command((), **FIELDS, out=("runs/guard_eval", OUT))
