"""`jaxheads sahara_asr`: ASR with Sahara's first k heads ablated (k = 1..K) next to k random heads (the mean of
several draws), the control that shows whether the heads Sahara found matter more than any heads; writes
sahara_asr.json and sahara_asr.png. Each finished setting is appended to sahara_asr.partial.jsonl, so an
interrupted run resumes with the next one."""

from __future__ import annotations

import os

from jaxheads import io, plots
from jaxheads.jobs import common
from jaxheads.jobs.evaluate import generation_settings

LOG = "sahara_asr.partial.jsonl"


def summary(records: list[dict], max_heads: int, key: str = "asr") -> dict:
    """`{"none": x, "sahara": [x for k], "random_mean": [...], "random_std": [...]}` of one measure (`key`: asr,
    degenerate_share or asr_non_degenerate)."""
    return common.setting_summary(records, max_heads, key, "sahara")


def check_config(config) -> None:
    from jaxheads.interventions import ABLATION_KINDS

    common.check_model_settings(config)
    common.check_prompt_settings(config)
    common.require_choice(config, "ablation", ABLATION_KINDS)
    common.check_epsilon(config)
    common.require_int(config, "max_new_tokens", "batch_size", "random_draws")
    common.check_judge(config)
    common.require_int(config, "max_heads", "seed", minimum=0)
    common.require(config, "sahara", bool, "the path of a sahara.json")


def run(config) -> dict:
    """Evaluates every setting (resuming finished ones); returns the contents of sahara_asr.json."""
    from jaxheads.eval import asr

    check_config(config)
    sahara = io.read_json(config.sahara)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        data = common.config_prompts(config, model)
        max_heads = config.max_heads or len(sahara["heads"])
        settings = common.head_settings([tuple(head) for head in sahara["heads"]], model.config.num_layers,
                                        model.config.num_heads, max_heads, config.random_draws, config.seed, "sahara")
        folder.check(common.fingerprint("sahara_asr", config, {"model": model},
                                        {"prompts": data, "sahara_heads": sahara["heads"]}), [LOG])
        log = io.JsonlLog(os.path.join(config.out, LOG))
        done = {record["index"]: record for record in log.read()}
        mesh = common.device_mesh(config)
        for index, (name, k, heads) in enumerate(settings):
            if index in done:
                continue
            result = asr.evaluate(model, data.queries, data.prompts, heads, kind=config.ablation,
                                  epsilon=config.epsilon, judge=config.judge, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size, mesh=mesh)
            done[index] = {"index": index, "name": name, "k": k, "heads": [list(h) for h in heads],
                           **{key: value for key, value in result.summary().items() if key not in ("n", "judge")}}
            log.append(done[index])
            print(f"[{index + 1}/{len(settings)}] {name} k={k} {heads}: ASR {result.asr:.3f}, degenerate "
                  f"{result.degenerate_share:.3f}", flush=True)
        records = [done[i] for i in range(len(settings))]
        table = summary(records, max_heads)
        output = {**common.shape_fields(model, len(data)), "dataset": config.dataset,
                  "sahara": os.path.abspath(config.sahara), "ablation": config.ablation, "epsilon": config.epsilon,
                  "judge": asr.judge_description(asr.make_judge(config.judge)),
                  "generation": generation_settings(config),
                  "axes": {name: ["k"] for name in ("sahara", "random_mean", "random_std")}, **table,
                  "degenerate_share": summary(records, max_heads, "degenerate_share"),
                  "asr_non_degenerate": summary(records, max_heads, "asr_non_degenerate"),
                  "evaluations": records, "settings": config.to_dict()}
        common.write_result(config.out, "sahara_asr.json", output)
        plots.plot_ablation_asr(table, os.path.join(config.out, "sahara_asr.png"),
                                title=f"ASR of {model.name} on {len(data)} prompts of {config.dataset}")
    broken = output["degenerate_share"]
    for k in range(1, max_heads + 1):
        print(f"k={k}: Sahara ASR {table['sahara'][k - 1]:.3f} (degenerate {broken['sahara'][k - 1]:.3f}), random ASR "
              f"{table['random_mean'][k - 1]:.3f} ± {table['random_std'][k - 1]:.3f} (degenerate "
              f"{broken['random_mean'][k - 1]:.3f}); no ablation {table['none']:.3f}")
    print(f"wrote {config.out}/sahara_asr.json and sahara_asr.png")
    return output
