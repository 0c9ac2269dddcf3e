"""`jaxheads sahara`: greedy search for the head group whose joint ablation most changes the dataset-level
representation of the prompts (minus `specificity` times the same score on a `harmless` set, when given); writes
sahara.json and sahara_heads.png. Each finished step is appended to
sahara.partial.jsonl: an interrupted search resumes with the next step, a rerun with more steps continues a
finished one, and a rerun with fewer steps reports the first ones (the greedy search's first k steps do not
depend on how many follow)."""

from __future__ import annotations

import os

import numpy as np

from jaxheads import io, plots
from jaxheads.jobs import common
from jaxheads.sahara import SaharaStep, sahara

LOG = "sahara.partial.jsonl"


def check_config(config) -> None:
    common.check_scan_settings(config)
    common.require_int(config, "steps", "rank")
    common.require(config, "specificity", config.specificity >= 0, ">= 0")
    common.require(config, "harmless", config.harmless or config.specificity == 0,
                   "a prompt set when --specificity > 0")


def step_record(step) -> dict:
    """A step as JSON: its chosen head and score table, and with specificity the two tables it came from."""
    record = {"chosen": list(step.chosen), "scores": common.json_table(step.scores)}
    if step.harmful_scores is not None:
        record.update(harmful_scores=common.json_table(step.harmful_scores),
                      harmless_scores=common.json_table(step.harmless_scores))
    return record


def run(config) -> dict:
    """Runs (or resumes) the search; returns the contents of sahara.json."""
    check_config(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        data = common.config_prompts(config, model)
        sets = {"prompts": data}
        if config.specificity:
            sets["harmless"] = common.load_prompt_set(model, config.harmless, config.prompt_format, config.column,
                                                      config.limit)
        cfg = model.config
        common.require(config, "steps", config.steps <= cfg.num_layers * cfg.num_heads,
                       f"at most the model's {cfg.num_layers * cfg.num_heads} heads")
        for prompt_set in sets.values():
            common.require(config, "rank", config.rank <= len(prompt_set),
                           f"at most the number of prompts of each set ({len(prompt_set)} in {prompt_set.source})")
        folder.check(common.fingerprint("sahara", config, {"model": model}, sets, exclude=("steps",)), [LOG])
        log = io.JsonlLog(os.path.join(config.out, LOG))
        logged = log.read()
        saved = [SaharaStep(np.array(record["scores"], float), tuple(record["chosen"]),
                            *(None if record.get(name) is None else np.array(record[name], float)
                              for name in ("harmful_scores", "harmless_scores")))
                 for record in logged[:config.steps]]
        seconds = [record["seconds"] for record in logged[:config.steps]]
        lap = common.stopwatch()

        def save(step):
            seconds.append(lap())
            log.append({"index": len(saved), **step_record(step), "seconds": seconds[-1]})
            saved.append(step)
            print(f"step {len(saved)}: head {step.chosen}, score {np.nanmax(step.scores):.3f}°", flush=True)

        result = sahara(model, data.ids, steps=config.steps, rank=config.rank, kind=config.ablation,
                        epsilon=config.epsilon, batch_size=config.batch_size, chunk_size=config.chunk_size,
                        done_steps=list(saved), on_step=save, progress=True, mesh=common.device_mesh(config),
                        harmless_prompts=sets["harmless"].ids if config.specificity else (),
                        specificity=config.specificity)
        output = {
            **common.shape_fields(model, len(data)), "dataset": config.dataset,
            "heads": [list(head) for head in result.heads],
            "axes": {f"steps.{name}": ["layer", "head"] for name in ("scores", "harmful_scores", "harmless_scores")},
            **({"harmless": config.harmless, "num_harmless_prompts": len(sets["harmless"]),
                "specificity": config.specificity} if config.specificity else {}),
            "steps": [{**step_record(step), "seconds": took} for step, took in zip(result.steps, seconds)],
            "seconds": float(sum(seconds)), "settings": config.to_dict(),
        }
        common.write_result(config.out, "sahara.json", output)
        plots.plot_chosen_heads(cfg.num_layers, cfg.num_heads, result.heads, [s.scores for s in result.steps],
                                os.path.join(config.out, "sahara_heads.png"),
                                title=f"Sahara ({config.ablation}) on {model.name}, {len(data)} prompts of "
                                      f"{config.dataset}")
    print(f"wrote {config.out}/sahara.json; heads {result.heads}; {output['seconds']:.1f} s")
    return output
