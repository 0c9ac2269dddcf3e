"""Query-level Ships scan of every head over a prompt set: ships.json, ships.csv, ships_heatmap.png.

    python -m launch.ships --dataset=builtin:harmful --limit=32 --out=runs/ships

Interrupted runs resume: finished prompt batches are kept in ships.partial.jsonl and skipped on restart.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from launch import common

common.define_flags("configs/ships.py")
flags.DEFINE_integer("chunk_size", None, "Ablations run together (vmapped) per device call; 0 = from free "
                                        "device memory.")


def main(argv):
    del argv
    from jaxheads import io, plots, ships
    from jaxheads.generate import encode_prompts
    from jaxheads.scan import model_on_mesh

    config = common.resolved_config()
    model, queries, prompts, settings = common.scan_inputs(config)
    mesh = common.device_mesh(config)
    model = model_on_mesh(model, mesh)  # once: each batch's scan then finds the weights in place
    log = io.JsonlLog(os.path.join(config.out, "ships.partial.jsonl"))
    done = common.resume_records(log, settings)
    lengths = [len(encode_prompts(model.tokenizer, [p], pad_to_multiple=1)[0][0]) for p in prompts]
    order = np.argsort(lengths, kind="stable")
    groups = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    todo = [group for group in groups if not all(int(i) in done for i in group)]
    from tqdm import tqdm

    for group in tqdm(todo, desc=f"Ships over {model.config.num_layers * model.config.num_heads} heads",
                      unit="batch", initial=len(groups) - len(todo), total=len(groups)):
        started = time.perf_counter()
        scores = ships.query_level(model, [prompts[i] for i in group], config.ablation, config.epsilon,
                                   batch_size=config.batch_size, chunk_size=config.chunk_size, progress=True,
                                   mesh=mesh)
        seconds = (time.perf_counter() - started) / len(group)
        for i, row in zip(group, scores):
            log.append({"index": int(i), "prompt": prompts[i], "scores": row.tolist(), "seconds": seconds})
            done[int(i)] = {"scores": row.tolist(), "seconds": seconds}
    scores = np.array([done[i]["scores"] for i in range(len(prompts))])
    mean = scores.mean(axis=0)
    result = {**settings, "layers": model.config.num_layers, "heads": model.config.num_heads, "prompts": prompts,
              "queries": queries, "scores": scores.tolist(), "mean": mean.tolist(),
              "seconds": float(sum(done[i]["seconds"] for i in range(len(prompts))))}
    io.atomic_write_json(os.path.join(config.out, "ships.json"), result)
    rows = [(p, l, n, float(scores[p, l, n])) for p in range(len(prompts)) for l in range(scores.shape[1])
            for n in range(scores.shape[2])]
    io.atomic_write_csv(os.path.join(config.out, "ships.csv"), ["prompt", "layer", "head", "score"], rows)
    plots.plot_head_heatmap(mean, os.path.join(config.out, "ships_heatmap.png"),
                            title=f"Ships ({config.ablation}, ε={config.epsilon:g}), mean over {len(prompts)} prompts",
                            cbar_label="KL(base ‖ ablated), nats")
    top = np.dstack(np.unravel_index(np.argsort(-mean, axis=None)[:5], mean.shape))[0]
    print(f"wrote {config.out}/ships.json; top heads (layer, head): {[tuple(map(int, h)) for h in top]}; "
          f"{result['seconds']:.1f} s")


if __name__ == "__main__":
    app.run(main)
