"""Defaults of `jaxheads utility`: perplexity, harmless refusal rate and arithmetic accuracy with the first k
heads of a set ablated, next to k random heads."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + ("column", "limit", "prompt_format") + common.ABLATION + common.GENERATION + ("seed",),
    helps={"judge": "Judge of the harmless refusal rate: keyword (jaxheads' list), reference (the Ships authors' "
                    "rule), guard (the shipped response judge: the share it labels refusal) or the folder of a "
                    "`jaxheads judge train` run.",
           "max_new_tokens": "Greedy tokens generated per prompt: the reference answers, the harmless responses and "
                             "the arithmetic answers."},
    harmless=("builtin:harmless:heldout", "Harmless prompts: their refusal rate is measured, and the unablated "
                                          "model's greedy answers to them are the text whose perplexity is measured "
                                          "(same forms as --dataset of other commands)."),
    sahara=("", "A sahara.json whose heads, in order, are the set (give this or --heads)."),
    heads=("", "The set as layer:head pairs in order, e.g. 18:8,5:6 (give this or --sahara)."),
    max_heads=(0, "Largest k: the first 1..k heads of the set are ablated; 0 = every head of the set."),
    random_draws=(5, "Random head sets drawn per k (from the heads not in the set)."),
    problems=(50, "Held-out arithmetic word problems whose accuracy is measured."),
    problem_seed=(1, "Seed of the arithmetic problems (jaxheads finetune trains on seed task_seed and holds out "
                     "task_seed + 1 = 1 by default)."),
    out=("runs/utility", "Output folder; a rerun with the same settings resumes from its finished settings."),
)
