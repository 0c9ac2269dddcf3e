"""Defaults of `jaxheads guard classify`: the guard's tier and probabilities for every prompt of a set (metrics too
when the set is labelled)."""

from jaxheads.configs import guard_eval

HELP = guard_eval.fields("runs/guard_classify")[1]


def get_config():
    return guard_eval.fields("runs/guard_classify")[0]
