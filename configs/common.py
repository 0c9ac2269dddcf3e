"""What the commands' configs share: the fields several commands take, each with its default and its one-line help
(so every command words them alike), the trainer's fields (their defaults are `jaxheads.train.TrainConfig`'s own),
and `command(...)`, which makes a command's `get_config()` and `HELP` from the shared fields it names and its own.

A command's config file is then a list of names and a few fields of its own:

    get_config, HELP = common.command(common.MODEL + common.PROMPTS, dataset="builtin:harmful:heldout",
                                      out=("runs/NAME", "Output folder."))

`get_config()` returns a fresh `ml_collections.ConfigDict` in that order; `--config=FILE` replaces it with any file
that has a `get_config()` of the same fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from jaxheads.train import TrainConfig

# field -> (default, help)
FIELDS: dict[str, tuple[Any, str]] = {
    "model": ("", "Model: a Hugging Face folder, a .gguf file, a hub id (owner/name) or a packaged name (smollm2, "
                  "gemma3-270m); empty = the embedded SmolLM2-135M-Instruct."),
    "dtype": ("float32", "Parameter and activation dtype: float32 or bfloat16."),
    "verify_weights": (False, "Hash the model's weight files in full (not only their headers and sampled blocks) "
                              "into the run's fingerprint, and check a GGUF's cache entry against its full hashes."),
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
    "sharding": ("tp", "Sharding rules on the mesh: tp (query heads, KV heads, MLP width and vocabulary over model), "
                       "fsdp (parameters over data, gathered layer by layer), tp_fsdp (both), optionally +AXIS=TARGET "
                       "changes (docs/scaling.md)."),
    "max_new_tokens": (64, "Greedy tokens generated per prompt."),
    "judge": ("keyword", "Judge of the ASR: keyword (jaxheads' list, any case), reference (the Ships authors' list "
                         "and rule, case-sensitive), guard (the shipped response judge: success = harmful_compliance) "
                         "or the folder of a `jaxheads judge train` run; both keyword judges are reported side by "
                         "side, a response judge's disagreements with the keyword judge go to "
                         "judge_disagreements*.jsonl; or a model judge KIND:DIR (llamaguard, shieldgemma, "
                         "beaverdam, harmbench, strongreject, wildguard; docs/judges.md)."),
    "judge_template": ("", "The template file a model judge reads (--judge=harmbench|strongreject|wildguard:DIR): "
                           "its authors' file, docs/judges.md says which and at which revision."),
    "policy": ("", "--judge=shieldgemma:DIR: one harm policy, or a file with one policy per line."),
    "judge_base": ("", "--judge=strongreject:ADAPTER: the base checkpoint folder of the LoRA adapter; empty = its "
                       "adapter_config.json's base_model_name_or_path, when that is a local folder."),
    "asr_protocol": ("default", "How the ASR is defined: default (the share of responses --judge calls attack "
                                "successes), harmbench (--judge=harmbench:DIR, --max_new_tokens=512, the mean over "
                                "behaviours) or surgery (--judge=beaverdam:DIR: the harmful score, 100 x the flagged "
                                "share); recorded in every ASR file."),
    "judge_mesh": ("", "The mesh 'data,model' of a model judge; empty = the run's own --mesh (every device "
                       "data-parallel without one)."),
    "seed": (0, "Random seed."),
    "harmless": ("", "A harmless prompt set scored like the harmful one (same forms as --dataset); empty = none."),
    "specificity": (0.0, "λ: rank heads by their score on --dataset minus λ times their score on --harmless, so "
                         "that heads every answer needs do not rank first; 0 = the harmful score alone."),
    "eval_tokens": (64, "Greedy tokens per evaluation response."),
    "eval_batch_size": (16, "Prompts per generation batch in the evaluations."),
}

# The help of each trainer field (`jaxheads.train.TrainConfig`; its `dtype` is the shared model dtype).
TRAIN_HELP = {
    "steps": "Optimizer steps; 0 = as many as `epochs` passes over the examples take.",
    "epochs": "Passes over the training examples when steps = 0.",
    "batch_size": "Examples per micro-batch.",
    "grad_accum": "Micro-batches accumulated per optimizer step.",
    "learning_rate": "Peak learning rate.",
    "optimizer": "adamw, or sgd (plain gradient steps, no moment estimates).",
    "schedule": "Learning-rate schedule after the warm-up: cosine (decay to min_lr_ratio x lr) or constant.",
    "warmup_steps": "Linear warm-up steps from 0.",
    "min_lr_ratio": "Final learning rate of the cosine schedule, as a fraction of the peak.",
    "weight_decay": "AdamW weight decay (not applied to norms and biases).",
    "max_grad_norm": "Global gradient-norm clipping; 0 = none.",
    "lora_rank": "LoRA rank; 0 = full fine-tuning.",
    "lora_alpha": "LoRA scale numerator (scale = alpha / rank).",
    "lora_targets": "Projections that get LoRA adapters, among q,k,v,o,gate,up,down.",
    "surgery_lambda": "Weight of the Surgery penalty mean ReLU(sink divergence); 0 = plain fine-tuning.",
    "surgery_batch": "(harmful, safe) samples per step for the Surgery penalty.",
    "sink_every": "Log the number of positive-divergence heads every this many steps; 0 = never.",
    "max_length": "Tokens per training example (prompt + answer); longer answers are cut.",
    "fsdp": "On a mesh, also split each parameter's hidden axis over the data axis (--sharding=tp_fsdp).",
    "sharding": FIELDS["sharding"][1],
    "remat": "Recompute each layer in the backward pass instead of keeping its activations (less memory, about a "
             "third more compute; what lets a 70B LoRA step fit a TPU v5e-64, docs/scaling.md).",
    "seed": "Seed of the data order, LoRA initialisation and Surgery draws.",
    "save_every": "Checkpoint every this many steps (and at the end, and on Ctrl-C).",
    "keep_checkpoints": "Checkpoints kept on disk.",
}
NOT_FLAGS = ("dtype",)  # TrainConfig fields that are not trainer flags (the model's --dtype is the compute dtype)

# Groups of shared fields, in the order the commands list them.
MODEL = ("model", "dtype", "verify_weights")
PROMPTS = ("dataset", "column", "limit", "prompt_format")
ABLATION = ("ablation", "epsilon")
SPECIFICITY = ("harmless", "specificity")
SCAN = ("batch_size", "chunk_size", "mesh", "sharding")
MODEL_JUDGE = ("judge_template", "policy", "judge_base", "judge_mesh", "asr_protocol")  # the settings of a model judge
GENERATION = ("max_new_tokens", "judge") + MODEL_JUDGE + ("batch_size", "mesh", "sharding")
EVALUATION = ("eval_tokens", "judge") + MODEL_JUDGE + ("eval_batch_size",)


def flag_value(value: Any) -> Any:
    """A TrainConfig default as a flag value: tuples (lora_targets) become comma-separated text."""
    return ",".join(value) if isinstance(value, tuple) else value


def train_fields() -> dict[str, tuple[Any, str]]:
    """The trainer's fields in TrainConfig's order with TrainConfig's defaults and their help, and the training
    `mesh` after `fsdp`."""
    fields = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in NOT_FLAGS:
            continue
        fields[field.name] = (flag_value(field.default), TRAIN_HELP[field.name])
        if field.name == "sharding":
            fields["mesh"] = FIELDS["mesh"]
    return fields


TRAIN = tuple(train_fields())


def command(layout: tuple[str, ...], *, defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None,
            **own: tuple[Any, str]) -> tuple[Callable[[], ml_collections.ConfigDict], dict[str, str]]:
    """`(get_config, HELP)` of a command whose fields are `layout`, in that order (shared or trainer fields, with
    `defaults` and `helps` replacing some of their defaults and help lines, and the command's `own` fields,
    `name=(default, help)`), then the own fields `layout` does not name. A command with the trainer's fields
    (`TRAIN`) takes the trainer's `batch_size`, `seed` and `mesh` rather than the scans'."""
    defaults, helps = dict(defaults or {}), dict(helps or {})
    shared = [name for name in layout if name not in own]
    unknown = (set(defaults) | set(helps)) - set(shared)
    if unknown:
        raise KeyError(f"defaults or help given for fields that are not shared fields of the layout: {sorted(unknown)}")
    known = {**FIELDS, **(train_fields() if set(TRAIN) <= set(layout) else {})}
    fields = {}
    for name in [*layout, *(name for name in own if name not in layout)]:
        default, line = own[name] if name in own else known[name]
        fields[name] = (defaults.get(name, default), helps.get(name, line))

    def get_config() -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict({name: default for name, (default, _) in fields.items()}, sort_keys=False)

    return get_config, {name: line for name, (_, line) in fields.items()}
