"""`jaxheads evaluate`: attack success rate with heads ablated; writes asr.json and generations.jsonl.

The heads are given as layer:head pairs (`ablate`), as the chosen heads of a sahara.json (`ablate_from`), or as
each prompt's own top-k heads of a ships.json (`top_k_from`, whose prompts are then evaluated)."""

from __future__ import annotations

import os

import numpy as np

from jaxheads import classifier, io
from jaxheads import guard as guard_lib
from jaxheads.errors import JaxheadsError
from jaxheads.eval import asr, judges
from jaxheads.interventions import parse_heads
from jaxheads.jobs import common
from jaxheads.jobs.heads import read_head_file

DISAGREEMENTS = "judge_disagreements.jsonl"  # with a response judge: where it and the keyword judge disagree

def check_config(config) -> None:
    common.check_generation_settings(config)
    common.require_int(config, "top_k")
    parse_heads(config.ablate, "--ablate")
    if config.top_k_from and (config.ablate or config.ablate_from):
        raise JaxheadsError("--top_k_from cannot be combined with --ablate or --ablate_from")


def generation_settings(config) -> dict:
    """How the responses were generated (recorded with every ASR)."""
    return {"decoding": "greedy", "max_new_tokens": config.max_new_tokens, "prompt_format": config.prompt_format,
            "dtype": config.dtype, "batch_size": config.batch_size}


def run(config) -> dict:
    """Generates and judges the responses; returns the contents of asr.json."""
    check_config(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        per_prompt = bool(config.top_k_from)
        if per_prompt:
            ships = read_head_file(config.top_k_from, "top_k_from", model, need="query")
            count = config.limit or len(ships["queries"])
            queries, prompts = ships["queries"][:count], ships["prompts"][:count]
            heads = asr.top_heads_per_prompt(np.array(ships["scores"])[:len(prompts)], config.top_k)
            dataset = f"the prompts of {config.top_k_from}"
        else:
            data = common.config_prompts(config, model)
            queries, prompts, dataset = data.queries, data.prompts, config.dataset
            heads = parse_heads(config.ablate, "--ablate")
            if config.ablate_from:
                sahara = read_head_file(config.ablate_from, "ablate_from", model, need="heads")
                heads += [tuple(head) for head in sahara["heads"]]
        prompt_format = config.prompt_format
        if per_prompt:  # the ships.json's prompts were formatted by its own run
            prompt_format = ships.get("settings", {}).get("prompt_format", prompt_format)
        judge = common.load_judge(config, model)
        guard = load_guard(config, model, judge)
        adapters = {"judge": common.judge_fingerprint(config.judge),
                    "guard": common.adapter_fingerprint(guard_lib.builtin_adapter_dir() if config.guard ==
                                                        guard_lib.BUILTIN else config.guard) if config.guard else None}
        folder.check(common.fingerprint("evaluate", config, {"model": model},
                                        {"prompts": data if not per_prompt else prompts, "heads": heads,
                                         "adapters": adapters}))
        result = asr.evaluate(model, queries, prompts, heads, per_prompt=per_prompt, kind=config.ablation,
                              epsilon=config.epsilon, judge=judge, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size, progress=True, mesh=common.device_mesh(config),
                              guard=guard, prompt_format=prompt_format)
        io.atomic_write_jsonl(os.path.join(config.out, "generations.jsonl"), result.records)
        common.write_disagreements(os.path.join(config.out, DISAGREEMENTS), result)
        ablated = f"top-{config.top_k} per prompt" if per_prompt else [list(head) for head in heads]
        output = {**common.shape_fields(model, result.n), "dataset": dataset, **result.summary(),
                  "ablated": ablated, **common.protocol_fields(config, result.by_judge), "ablation": config.ablation, "epsilon": config.epsilon,
                  "generation": generation_settings(config), "settings": config.to_dict()}
        common.write_result(config.out, "asr.json", output)
    if guard is not None:
        counts = result.guard["counts"]
        screened = (f"; {result.guard['screened']} answers screened out by the response judge"
                    if "screened" in result.guard else "")
        print(f"guard {config.guard}: " + ", ".join(f"{tier} {n}" for tier, n in counts.items())
              + f"; {result.guard['withheld_share']:.3f} of the prompts withheld (refused without running the model)"
              + screened)
    if result.disagreements is not None:
        by_keyword = result.by_judge["keyword"]["asr"]
        print(f"keyword judge ASR {by_keyword:.3f}; the response judge disagrees with it on "
              f"{len(result.disagreements)} responses ({config.out}/{DISAGREEMENTS})")
    print(f"ASR {result.asr:.3f} ({config.judge} judge; {result.degenerate_share:.3f} of the responses degenerate) "
          f"over {result.n} prompts with {ablated} ablated{' and the guard on' if guard else ''}; wrote "
          f"{config.out}/asr.json")
    return output


def load_guard(config, model, judge=None):
    """The guard of `--guard` (None without one); its classifier shares `model`'s weights when the guard was
    trained on the model evaluated. Its answers are screened by `judge` when that is a response judge (`--judge`),
    else by the shipped response judge when the guard was trained on the model that judge was trained on; not at all
    with `--screen=false`."""
    if not config.guard:
        return None

    path = guard_lib.builtin_adapter_dir() if config.guard == guard_lib.BUILTIN else config.guard
    same = classifier.Adapter.load(path).model.get("spec", "") == common.adapter_spec(config.model)
    screening = (None if not config.screen else
                 judge if isinstance(judge, judges.ResponseJudge) else guard_lib.AUTO)
    return guard_lib.load_guard(config.guard, model=model if same else None, dtype=config.dtype,
                                mesh=common.device_mesh(config), judge=screening)
