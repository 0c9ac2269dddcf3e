"""`jaxheads ships`: query-level Ships of every head over a prompt set; writes ships.json, ships.csv and
ships_heatmap.png. Finished prompt batches are appended to ships.partial.jsonl, so an interrupted run resumes
after them."""

from __future__ import annotations

import os
import time

import numpy as np

from jaxheads import io, plots
from jaxheads.jobs import common

LOG = "ships.partial.jsonl"


def check_config(config) -> None:
    common.check_scan_settings(config)


def run(config) -> dict:
    """Scores every head on every prompt of `config.dataset`; returns the contents of ships.json."""
    from tqdm import tqdm

    from jaxheads import ships
    from jaxheads.scan import model_on_mesh

    check_config(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        data = common.config_prompts(config, model)
        mesh = common.device_mesh(config)
        folder.check(common.fingerprint("ships", config, {"model": model}, {"prompts": data}), [LOG])
        model = model_on_mesh(model, mesh)  # once: each batch's scan then finds the weights in place
        log = io.JsonlLog(os.path.join(config.out, LOG))
        done = {record["index"]: record for record in log.read()}
        order = np.argsort([len(ids) for ids in data.ids], kind="stable")
        groups = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        todo = [group for group in groups if not all(int(i) in done for i in group)]
        cfg = model.config
        for group in tqdm(todo, desc=f"Ships of {cfg.num_layers * cfg.num_heads} heads", unit="batch",
                          initial=len(groups) - len(todo), total=len(groups)):
            started = time.perf_counter()
            scores = ships.query_level(model, [data.ids[i] for i in group], config.ablation, config.epsilon,
                                       batch_size=config.batch_size, chunk_size=config.chunk_size, progress=True,
                                       mesh=mesh)
            seconds = (time.perf_counter() - started) / len(group)
            for i, row in zip(group, scores):
                done[int(i)] = {"index": int(i), "scores": row.tolist(), "seconds": seconds}
                log.append(done[int(i)])
        scores = np.array([done[i]["scores"] for i in range(len(data))])
        mean = scores.mean(axis=0)
        result = {
            **common.shape_fields(model, len(data)), "dataset": config.dataset,
            "axes": {"scores": ["prompt", "layer", "head"], "mean": ["layer", "head"]},
            "queries": data.queries, "prompts": data.prompts, "source_rows": data.rows,
            "scores": scores.tolist(), "mean": mean.tolist(),
            "seconds": float(sum(done[i]["seconds"] for i in range(len(data)))), "settings": config.to_dict(),
        }
        common.write_result(config.out, "ships.json", result)
        rows = [(p, l, n, float(scores[p, l, n])) for p in range(len(data)) for l in range(cfg.num_layers)
                for n in range(cfg.num_heads)]
        io.atomic_write_csv(os.path.join(config.out, "ships.csv"), ["prompt", "layer", "head", "score"], rows)
        plots.plot_head_heatmap(
            mean, os.path.join(config.out, "ships_heatmap.png"),
            title=f"Ships ({config.ablation}, ε={config.epsilon:g}) of {model.name}\n"
                  f"mean over {len(data)} prompts of {config.dataset}",
            cbar_label="KL(base ‖ ablated), nats")
    top = np.dstack(np.unravel_index(np.argsort(-mean, axis=None)[:5], mean.shape))[0]
    print(f"wrote {config.out}/ships.json; top heads (layer, head): {[tuple(map(int, h)) for h in top]}; "
          f"{result['seconds']:.1f} s")
    return result
