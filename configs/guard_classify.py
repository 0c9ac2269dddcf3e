"""Defaults of `jaxheads guard classify`: the guard's tier and probabilities for every prompt of a set (metrics too
when the set is labelled)."""

from jaxheads.configs import common, guard_eval

get_config, HELP = common.command((), **guard_eval.FIELDS, out=("runs/guard_classify", guard_eval.OUT))
