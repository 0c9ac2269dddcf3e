"""`jaxheads ships`: Ships of every head over a prompt set; writes ships.json, ships.csv and ships_heatmap.png.

Query level (the default): the KL divergence of each prompt's first-response-token distribution when one head is
ablated, per prompt and head; finished prompt batches are appended to ships.partial.jsonl, so an interrupted run
resumes after them. Dataset level: the principal angle between the prompts' representations with and without
each head (one scan, `--level=dataset`). With `--harmless=SET` the same scores are computed on a harmless set, and
`--specificity=λ` ranks heads by the harmful score minus λ times the harmless one (a head every answer needs moves
both sets alike)."""

from __future__ import annotations

import os
import time

import numpy as np
from tqdm import tqdm

from jaxheads import io, plots, ships
from jaxheads.jobs import common
from jaxheads.placement import model_on_mesh

LOG = "ships.partial.jsonl"
HARMLESS_LOG = "ships_harmless.partial.jsonl"
LEVELS = ("query", "dataset")


def check_config(config) -> None:
    common.check_scan_settings(config)
    common.require_choice(config, "level", LEVELS)
    common.require_int(config, "rank")
    common.require(config, "specificity", config.specificity >= 0, ">= 0")
    common.require(config, "harmless", config.harmless or config.specificity == 0,
                   "a prompt set when --specificity > 0")


def query_level_scores(model, data, config, mesh, log_path: str) -> tuple[np.ndarray, float]:
    """Scores `[P, L, N]` of every prompt of `data`, batch by batch, resuming from (and appending to) the log, and
    the seconds they took."""
    log = io.JsonlLog(log_path)
    done = {record["index"]: record for record in log.read()}
    order = np.argsort([len(ids) for ids in data.ids], kind="stable")
    groups = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    todo = [group for group in groups if not all(int(i) in done for i in group)]
    cfg = model.config
    for group in tqdm(todo, desc=f"Ships of {cfg.num_layers * cfg.num_heads} heads on {data.source}", unit="batch",
                      initial=len(groups) - len(todo), total=len(groups)):
        started = time.perf_counter()
        scores = ships.query_level(model, [data.ids[i] for i in group], config.ablation, config.epsilon,
                                   batch_size=config.batch_size, chunk_size=config.chunk_size, progress=True,
                                   mesh=mesh)
        seconds = (time.perf_counter() - started) / len(group)
        for i, row in zip(group, scores):
            done[int(i)] = {"index": int(i), "scores": row.tolist(), "seconds": seconds}
            log.append(done[int(i)])
    return np.array([done[i]["scores"] for i in range(len(data))]), sum(done[i]["seconds"] for i in range(len(data)))


def dataset_level_scores(model, data, config, mesh) -> tuple[np.ndarray, float]:
    """The dataset-level table `[L, N]` (degrees) of `data` and the seconds it took."""
    started = time.perf_counter()
    table = ships.dataset_level(model, data.ids, config.ablation, config.epsilon, rank=config.rank,
                                batch_size=config.batch_size, chunk_size=config.chunk_size, progress=True, mesh=mesh)
    return table, time.perf_counter() - started


def run(config) -> dict:
    """Scores every head on the prompts of `config.dataset` (and `config.harmless`); returns the contents of
    ships.json."""
    check_config(config)
    query = config.level == "query"
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        sets = {"prompts": common.config_prompts(config, model)}
        if config.harmless:
            sets["harmless"] = common.load_prompt_set(model, config.harmless, config.prompt_format,
                                                      config.column, config.limit)
        if not query:
            for data in sets.values():
                common.require(config, "rank", config.rank <= len(data),
                               f"at most the number of prompts of each set ({len(data)} in {data.source})")
        mesh = common.device_mesh(config)
        folder.check(common.fingerprint("ships", config, {"model": model}, sets), [LOG, HARMLESS_LOG])
        model = model_on_mesh(model, mesh)  # once: each batch's scan then finds the weights in place
        cfg = model.config
        data = sets["prompts"]
        result = {**common.shape_fields(model, len(data)), "dataset": config.dataset, "level": config.level}
        if query:
            scores, seconds = query_level_scores(model, data, config, mesh, os.path.join(config.out, LOG))
            mean = scores.mean(axis=0)
            result.update(axes={"scores": ["prompt", "layer", "head"], "mean": ["layer", "head"]},
                          queries=data.queries, prompts=data.prompts, source_rows=data.rows, scores=scores.tolist(),
                          mean=mean.tolist())
        else:
            mean, seconds = dataset_level_scores(model, data, config, mesh)
            result.update(axes={"scores": ["layer", "head"]}, queries=data.queries, prompts=data.prompts,
                          source_rows=data.rows, scores=mean.tolist())
        ranked = mean
        if config.harmless:
            harmless = sets["harmless"]
            if query:
                harmless_scores, harmless_seconds = query_level_scores(model, harmless, config, mesh,
                                                                       os.path.join(config.out, HARMLESS_LOG))
                harmless_mean = harmless_scores.mean(axis=0)
            else:
                harmless_mean, harmless_seconds = dataset_level_scores(model, harmless, config, mesh)
            seconds += harmless_seconds
            ranked = mean - config.specificity * harmless_mean
            result.update(harmless=config.harmless, num_harmless_prompts=len(harmless),
                          harmless_mean=harmless_mean.tolist(), specificity=config.specificity,
                          specific=ranked.tolist())
            result["axes"].update(harmless_mean=["layer", "head"], specific=["layer", "head"])
        result.update(seconds=float(seconds), settings=config.to_dict())
        common.write_result(config.out, "ships.json", result)
        if query:
            rows = [(p, l, n, float(scores[p, l, n])) for p in range(len(data)) for l in range(cfg.num_layers)
                    for n in range(cfg.num_heads)]
            io.atomic_write_csv(os.path.join(config.out, "ships.csv"), ["prompt", "layer", "head", "score"], rows)
        else:
            rows = [(l, n, float(mean[l, n])) for l in range(cfg.num_layers) for n in range(cfg.num_heads)]
            io.atomic_write_csv(os.path.join(config.out, "ships.csv"), ["layer", "head", "score"], rows)
        what = "mean KL(base ‖ ablated), nats" if query else "principal angle, degrees"
        if config.specificity:
            what = f"{what}: harmful − {config.specificity:g} × harmless"
        plots.plot_head_heatmap(
            ranked, os.path.join(config.out, "ships_heatmap.png"),
            title=f"{config.level}-level Ships ({config.ablation}, ε={config.epsilon:g}) of {model.name}\n"
                  f"{len(data)} prompts of {config.dataset}"
                  + (f", {len(sets['harmless'])} of {config.harmless}" if config.harmless else ""),
            cbar_label=what, diverging=bool(config.specificity))
    top = np.dstack(np.unravel_index(np.argsort(-ranked, axis=None)[:5], ranked.shape))[0]
    print(f"wrote {config.out}/ships.json; top heads (layer, head): {[tuple(map(int, h)) for h in top]}; "
          f"{result['seconds']:.1f} s")
    return result
