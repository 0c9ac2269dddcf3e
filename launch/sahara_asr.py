"""ASR with Sahara's first k heads ablated (k = 1..K) next to k random heads (mean of several draws), the
control that shows whether the heads Sahara found matter more than any heads: sahara_asr.json and
sahara_asr.png.

    python -m launch.sahara_asr --sahara=runs/sahara/sahara.json --dataset=builtin:harmful:heldout

Random heads are drawn without replacement from the heads Sahara did not choose. Each finished setting is
kept in sahara_asr.partial.jsonl, so an interrupted run resumes with the next one.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from launch import common

common.define_flags("configs/evaluate.py")
flags.DEFINE_string("sahara", None, "The sahara.json whose heads are ablated.", required=True)
flags.DEFINE_integer("max_heads", 0, "Largest k (0 = every head in the sahara.json).")
flags.DEFINE_integer("random_draws", 5, "Random head sets per k.")
flags.DEFINE_integer("seed", 0, "Seed of the random head draws.")
flags.DEFINE_integer("max_new_tokens", None, "Greedy tokens generated per prompt.")


def head_settings(sahara_heads, num_layers: int, num_heads: int, max_heads: int, draws: int, seed: int):
    """The settings to evaluate, in order: no ablation, Sahara's first k heads, then `draws` sets of k random
    heads not chosen by Sahara, for k = 1..max_heads. Each is `(name, k, [(layer, head), ...])`."""
    from jaxheads.errors import JaxheadsError

    sahara_heads = [tuple(int(x) for x in head) for head in sahara_heads]
    if not 1 <= max_heads <= len(sahara_heads):
        raise JaxheadsError(f"max_heads must be in 1..{len(sahara_heads)} (the heads in the sahara.json), "
                            f"got {max_heads}")
    others = [(layer, head) for layer in range(num_layers) for head in range(num_heads)
              if (layer, head) not in sahara_heads]
    rng = np.random.default_rng(seed)
    settings = [("none", 0, [])]
    settings += [("sahara", k, sahara_heads[:k]) for k in range(1, max_heads + 1)]
    for k in range(1, max_heads + 1):
        for _ in range(draws):
            chosen = rng.choice(len(others), size=k, replace=False)
            settings.append(("random", k, [others[i] for i in sorted(chosen)]))
    return settings


def summary(records: list[dict], max_heads: int) -> dict:
    """`{"none": asr, "sahara": [asr for k], "random_mean": [...], "random_std": [...]}` from per-setting records."""
    def asr(name, k):
        return [r["asr"] for r in records if r["name"] == name and r["k"] == k]

    random = [asr("random", k) for k in range(1, max_heads + 1)]
    return {"none": asr("none", 0)[0], "sahara": [asr("sahara", k)[0] for k in range(1, max_heads + 1)],
            "random_mean": [float(np.mean(draws)) for draws in random],
            "random_std": [float(np.std(draws)) for draws in random]}


def main(argv):
    del argv
    from jaxheads import io, plots
    from jaxheads.eval import asr

    config = common.resolved_config()
    sahara = io.read_json(flags.FLAGS.sahara)
    model = common.load_model(config)
    queries = common.load_queries(config)
    prompts = common.format_queries(queries, config, model.tokenizer)
    max_heads = flags.FLAGS.max_heads or len(sahara["heads"])
    settings = head_settings(sahara["heads"], model.config.num_layers, model.config.num_heads, max_heads,
                             flags.FLAGS.random_draws, flags.FLAGS.seed)
    run = {"model": model.name, "sahara": os.path.abspath(flags.FLAGS.sahara), "dataset": config.dataset,
           "prompts": len(prompts), "ablation": config.ablation, "epsilon": config.epsilon,
           "max_new_tokens": config.max_new_tokens, "prompt_format": config.prompt_format,
           "random_draws": flags.FLAGS.random_draws, "seed": flags.FLAGS.seed}
    log = io.JsonlLog(os.path.join(config.out, "sahara_asr.partial.jsonl"))
    done = common.resume_records(log, run)
    mesh = common.device_mesh(config)
    for index, (name, k, heads) in enumerate(settings):
        if index in done:
            continue
        result = asr.evaluate(model, queries, prompts, heads, kind=config.ablation, epsilon=config.epsilon,
                              max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, mesh=mesh)
        done[index] = {"index": index, "name": name, "k": k, "heads": [list(h) for h in heads], "asr": result.asr}
        log.append(done[index])
        print(f"[{index + 1}/{len(settings)}] {name} k={k} {heads}: ASR {result.asr:.3f}", flush=True)
    records = [done[i] for i in range(len(settings))]
    table = summary(records, max_heads)
    io.atomic_write_json(os.path.join(config.out, "sahara_asr.json"), {**run, **table, "settings": records})
    plots.plot_ablation_asr(table, os.path.join(config.out, "sahara_asr.png"))
    for k in range(1, max_heads + 1):
        print(f"k={k}: Sahara ASR {table['sahara'][k - 1]:.3f}, random ASR {table['random_mean'][k - 1]:.3f} "
              f"± {table['random_std'][k - 1]:.3f} (no ablation {table['none']:.3f})")
    print(f"wrote {config.out}/sahara_asr.json and sahara_asr.png")


if __name__ == "__main__":
    app.run(main)
