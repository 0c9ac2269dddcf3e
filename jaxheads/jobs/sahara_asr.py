"""`jaxheads sahara_asr`: ASR with Sahara's first k heads ablated (k = 1..K) next to k random heads (the mean of
several draws), the control that shows whether the heads Sahara found matter more than any heads; writes
sahara_asr.json, sahara_asr.png and generations.jsonl (every response with its setting and verdicts). With
`top_k_from` (a ships.json) the same comparison runs per prompt: each prompt's own top-k query-level heads next to
k random heads drawn for each prompt (outside its own top K). Each finished setting is appended to
sahara_asr.partial.jsonl, so an interrupted run resumes with the next one."""

from __future__ import annotations

import os

import numpy as np

from jaxheads import io, plots
from jaxheads.errors import JaxheadsError
from jaxheads.eval import asr
from jaxheads.eval.judges import DEGENERATE_RULE
from jaxheads.jobs import common
from jaxheads.jobs.evaluate import DISAGREEMENTS, generation_settings
from jaxheads.jobs.heads import read_head_file

LOG = "sahara_asr.partial.jsonl"
GENERATIONS = "generations.jsonl"


def summary(records: list[dict], max_heads: int, key: str = "asr") -> dict:
    """`{"none": x, "sahara": [x for k], "random_mean": [...], "random_std": [...]}` of one measure (`key`: asr,
    degenerate_share or asr_non_degenerate)."""
    return common.setting_summary(records, max_heads, key, "sahara")


def check_config(config) -> None:
    common.check_generation_settings(config)
    common.require_int(config, "random_draws")
    common.require_int(config, "max_heads", "seed", minimum=0)
    if bool(config.sahara) == bool(config.top_k_from):
        raise JaxheadsError("give the heads either as --sahara=sahara.json or as --top_k_from=ships.json")


def per_prompt_settings(rankings: list[list[tuple[int, int]]], num_layers: int, num_heads: int, max_heads: int,
                        draws: int, seed: int) -> list[tuple[str, int, list[list[tuple[int, int]]]]]:
    """As `common.head_settings` with one head list per prompt: no ablation, each prompt's own first k heads, then
    `draws` sets in which every prompt gets k random heads outside its own first `max_heads`."""
    every = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    if not 1 <= max_heads <= min(len(row) for row in rankings) or max_heads > len(every) - max_heads:
        raise JaxheadsError(f"--max_heads must be in 1..{min(min(len(row) for row in rankings), len(every) // 2)} "
                            f"for per-prompt heads, got {max_heads}")
    rng = np.random.default_rng(seed)
    settings = [("none", 0, [[] for _ in rankings])]
    settings += [("sahara", k, [row[:k] for row in rankings]) for k in range(1, max_heads + 1)]
    others = [[head for head in every if head not in row[:max_heads]] for row in rankings]
    for k in range(1, max_heads + 1):
        for _ in range(draws):
            settings.append(("random", k, [[pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
                                           for pool in others]))
    return settings


def run(config) -> dict:
    """Evaluates every setting (resuming finished ones); returns the contents of sahara_asr.json."""
    check_config(config)
    per_prompt = bool(config.top_k_from)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        source = read_head_file(config.top_k_from or config.sahara, "top_k_from" if per_prompt else "sahara",
                                       model, need="query" if per_prompt else "heads")
        cfg = model.config
        if per_prompt:
            count = config.limit or len(source["queries"])
            queries, prompts = source["queries"][:count], source["prompts"][:count]
            rankings = asr.top_heads_per_prompt(np.array(source["scores"])[:count], cfg.num_layers * cfg.num_heads)
            max_heads = config.max_heads or 1
            settings = per_prompt_settings(rankings, cfg.num_layers, cfg.num_heads, max_heads, config.random_draws,
                                           config.seed)
            dataset, heads_data = f"the prompts of {config.top_k_from}", rankings
        else:
            data = common.config_prompts(config, model)
            queries, prompts, dataset, heads_data = data.queries, data.prompts, config.dataset, source["heads"]
            max_heads = config.max_heads or len(source["heads"])
            settings = common.head_settings([tuple(head) for head in source["heads"]], cfg.num_layers, cfg.num_heads,
                                            max_heads, config.random_draws, config.seed, "sahara")
        # the rule that marks responses degenerate is part of each logged result: a log written under another
        # rule is not resumed into this one
        folder.check(common.fingerprint("sahara_asr", config, {"model": model},
                                        {"prompts": prompts, "heads": heads_data, "degenerate_rule": DEGENERATE_RULE}),
                     [LOG])
        log = io.JsonlLog(os.path.join(config.out, LOG))
        done = {record["index"]: record for record in log.read()}
        mesh = common.device_mesh(config)
        judge = common.load_judge(config, model)
        for index, (name, k, heads) in enumerate(settings):
            if index in done:
                continue
            result = asr.evaluate(model, queries, prompts, heads, per_prompt=per_prompt, kind=config.ablation,
                                  epsilon=config.epsilon, judge=judge, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size, mesh=mesh)
            listed = [[list(h) for h in row] for row in heads] if per_prompt else [list(h) for h in heads]
            done[index] = {"index": index, "name": name, "k": k, "heads": listed,
                           **{key: value for key, value in result.summary().items() if key not in ("n", "judge")}}
            if result.disagreements is not None:
                done[index]["judge_disagreements"] = result.disagreements
            done[index]["generations"] = result.records
            log.append(done[index])
            shown = f"{k} per prompt" if per_prompt else heads
            print(f"[{index + 1}/{len(settings)}] {name} k={k} {shown}: ASR {result.asr:.3f}, degenerate "
                  f"{result.degenerate_share:.3f}", flush=True)
        records = [done[i] for i in range(len(settings))]
        disagreements = [{"setting": record["index"], "name": record["name"], "k": record["k"], **line}
                         for record in records for line in record.pop("judge_disagreements", [])]
        # every response of every setting, to read what the ablated model said and to judge it again later
        io.atomic_write_jsonl(os.path.join(config.out, GENERATIONS),
                              [{"setting": record["index"], "name": record["name"], "k": record["k"], **line}
                               for record in records for line in record.pop("generations", [])])
        if disagreements:  # with a response judge: where it and the keyword judge disagree, per setting
            io.atomic_write_jsonl(os.path.join(config.out, DISAGREEMENTS), disagreements)
        table = summary(records, max_heads)
        output = {**common.shape_fields(model, len(prompts)), "dataset": dataset,
                  "heads_from": os.path.abspath(config.top_k_from or config.sahara),
                  "chosen": "each prompt's own top k" if per_prompt else "Sahara's first k",
                  "ablation": config.ablation, "epsilon": config.epsilon,
                  "judge": asr.judge_description(judge), "asr_protocol": config.asr_protocol,
                  "generation": generation_settings(config),
                  "axes": {name: ["k"] for name in ("sahara", "random_mean", "random_std")}, **table,
                  "degenerate_share": summary(records, max_heads, "degenerate_share"),
                  "asr_non_degenerate": summary(records, max_heads, "asr_non_degenerate"),
                  "evaluations": records, "settings": config.to_dict()}
        common.write_result(config.out, "sahara_asr.json", output)
        plots.plot_ablation_asr(table, os.path.join(config.out, "sahara_asr.png"),
                                title=f"ASR of {model.name} on {len(prompts)} prompts of {dataset}",
                                chosen_label="each prompt's top heads" if per_prompt else "Sahara heads")
    broken = output["degenerate_share"]
    for k in range(1, max_heads + 1):
        print(f"k={k}: {output['chosen']} ASR {table['sahara'][k - 1]:.3f} (degenerate {broken['sahara'][k - 1]:.3f}), random ASR "
              f"{table['random_mean'][k - 1]:.3f} ± {table['random_std'][k - 1]:.3f} (degenerate "
              f"{broken['random_mean'][k - 1]:.3f}); no ablation {table['none']:.3f}")
    print(f"wrote {config.out}/sahara_asr.json, sahara_asr.png and {GENERATIONS}")
    return output
