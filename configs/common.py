"""Fields that several commands share: their defaults and their one-line help, so every command words them alike."""

from __future__ import annotations

import ml_collections

# field -> (default, help)
FIELDS = {
    "model": ("", "Model: a Hugging Face folder, a .gguf file, a hub id (owner/name) or a packaged name (smollm2, "
                  "gemma3-270m); empty = the embedded SmolLM2-135M-Instruct."),
    "dtype": ("float32", "Parameter and activation dtype: float32 or bfloat16."),
    "dataset": ("builtin:harmful", "Prompts: a built-in set (builtin:harmful, builtin:harmless, builtin:lookalike, "
                                   "builtin:harmless_check; optionally :train or :heldout), a .csv/.json/.jsonl/.txt "
                                   "file, or a datasets hub id (needs jaxheads[hub])."),
    "column": ("", "Column holding the prompts in a table or hub dataset; empty = the first of prompt, instruction, "
                   "goal, input, question, behavior."),
    "limit": (0, "Use only the first N prompts; 0 = all."),
    "prompt_format": ("template", "How a query becomes a prompt: template ('## Query:{q}\\n## Answer:'), chat (the "
                                  "tokenizer's chat template) or direct (the query itself)."),
    "ablation": ("ua", "Ablation: ua (the head's query times epsilon: near-uniform attention), sc (its output times "
                       "epsilon) or mean (its output replaced by the mean of its layer's heads)."),
    "epsilon": (1e-5, "Scale of the ua and sc ablations: 0 < epsilon < 1 for ua, 0 <= epsilon < 1 for sc."),
    "batch_size": (16, "Prompts per batch."),
    "rank": (1, "Principal angles summed in the dataset-level score: 1 .. the number of prompts."),
    "chunk_size": (0, "Ablations run together per device call; 0 = as many as half the free device memory holds "
                      "(16 on CPU)."),
    "mesh": ("", "Device mesh 'data,model', e.g. 4,2 (-1 = the remaining devices); empty = every device "
                 "data-parallel."),
    "max_new_tokens": (64, "Greedy tokens generated per prompt."),
    "judge": ("keyword", "Judge of the ASR: keyword (jaxheads' list, any case), reference (the Ships authors' list "
                         "and rule, case-sensitive), guard (the shipped response judge: success = harmful_compliance) "
                         "or the folder of a `jaxheads judge train` run; both keyword judges are reported side by "
                         "side, a response judge's disagreements with the keyword judge go to "
                         "judge_disagreements*.jsonl."),
    "seed": (0, "Random seed."),
    "harmless": ("", "A harmless prompt set scored like the harmful one (same forms as --dataset); empty = none."),
    "specificity": (0.0, "λ: rank heads by their score on --dataset minus λ times their score on --harmless, so "
                         "that heads every answer needs do not rank first; 0 = the harmful score alone."),
}


def shared(names: tuple[str, ...], **defaults) -> ml_collections.ConfigDict:
    """A config holding the shared fields `names` with their usual defaults (`defaults` overrides some)."""
    unknown = set(defaults) - set(names)
    if unknown:
        raise KeyError(f"defaults given for fields not listed: {sorted(unknown)}")
    return ml_collections.ConfigDict({name: defaults.get(name, FIELDS[name][0]) for name in names}, sort_keys=False)


def help_lines(names: tuple[str, ...], **own: str) -> dict[str, str]:
    """The help line of every field: the shared fields `names`, then a command's own fields `own`."""
    return {**{name: FIELDS[name][1] for name in names}, **own}
