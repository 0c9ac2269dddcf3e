"""Defaults of `jaxheads utility`: perplexity, harmless refusal rate and arithmetic accuracy with the first k
heads of a set ablated, next to k random heads."""

from jaxheads.configs import common

SHARED = ("model", "dtype", "column", "limit", "prompt_format", "ablation", "epsilon", "max_new_tokens",
          "judge", "batch_size", "mesh", "seed")
HELP = common.help_lines(
    SHARED,
    judge="Judge of the harmless refusal rate: keyword (jaxheads' list), reference (the Ships authors' rule), guard "
          "(the shipped response judge: the share it labels refusal) or the folder of a `jaxheads judge train` run.",
    max_new_tokens="Greedy tokens generated per prompt: the reference answers, the harmless responses and the "
                   "arithmetic answers.",
    harmless="Harmless prompts: their refusal rate is measured, and the unablated model's greedy answers to them "
             "are the text whose perplexity is measured (same forms as --dataset of other commands).",
    sahara="A sahara.json whose heads, in order, are the set (give this or --heads).",
    heads="The set as layer:head pairs in order, e.g. 18:8,5:6 (give this or --sahara).",
    max_heads="Largest k: the first 1..k heads of the set are ablated; 0 = every head of the set.",
    random_draws="Random head sets drawn per k (from the heads not in the set).",
    problems="Held-out arithmetic word problems whose accuracy is measured.",
    problem_seed="Seed of the arithmetic problems (jaxheads finetune trains on seed task_seed and holds out "
                 "task_seed + 1 = 1 by default).",
    out="Output folder; a rerun with the same settings resumes from its finished settings.",
)


def get_config():
    config = common.shared(SHARED)
    config.harmless = "builtin:harmless:heldout"
    config.sahara = ""
    config.heads = ""
    config.max_heads = 0
    config.random_draws = 5
    config.problems = 50
    config.problem_seed = 1
    config.out = "runs/utility"
    return config
