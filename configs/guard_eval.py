"""Defaults of `jaxheads guard eval`: the guard's metrics on a labelled prompt set (the built-in held-out split)."""

from jaxheads.configs import common

GUARD_FIELDS = {
    "guard": ("builtin", "The guard: builtin (the adapter shipped for the embedded default model) or the folder a "
                         "`jaxheads guard train` run wrote."),
    "model": ("", "The guard's model; empty = the model its adapter was trained on (the embedded default for the "
                  "built-in guard)."),
    "dtype": common.FIELDS["dtype"],
    "dataset": ("builtin:guard:heldout", "Prompts: builtin:guard (optionally :train or :heldout), any prompt set "
                                         "(builtin:NAME, a .csv/.json/.jsonl/.txt file, a datasets hub id), a "
                                         "file with a tier column, or any set with --tier."),
    "tier": ("", "The tier of every prompt of --dataset (for a set without tiers, e.g. an AdvBench CSV); empty = "
                 "the set's own tiers."),
    "column": common.FIELDS["column"],
    "limit": common.FIELDS["limit"],
    "batch_size": (32, "Prompts per forward pass."),
    "mesh": common.FIELDS["mesh"],
}


def fields(out: str, **defaults):
    """The config and HELP of a guard classification command."""
    import ml_collections

    config = ml_collections.ConfigDict(sort_keys=False)
    for name, (default, _) in GUARD_FIELDS.items():
        config[name] = defaults.get(name, default)
    config.out = out
    help_lines = {name: line for name, (_, line) in GUARD_FIELDS.items()}
    help_lines["out"] = "Output folder: guard.json, guard.jsonl and (for a labelled set) guard_confusion.png."
    return config, help_lines


HELP = fields("runs/guard_eval")[1]


def get_config():
    return fields("runs/guard_eval")[0]
