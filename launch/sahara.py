"""Sahara greedy head-group search: sahara.json and sahara_heads.png.

    python -m launch.sahara --dataset=builtin:harmful --limit=64 --steps=3 --out=runs/sahara

Each finished step is kept in sahara.partial.jsonl; an interrupted search resumes from the next step.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from launch import common

common.define_flags("configs/ships.py")
flags.DEFINE_integer("chunk_size", None, "Ablations run together (vmapped) per device call; 0 = from free "
                                        "device memory.")
flags.DEFINE_integer("steps", None, "Heads to select (greedy steps).")
flags.DEFINE_integer("rank", None, "Number of principal angles summed in the dataset-level score.")


def main(argv):
    del argv
    from jaxheads import io, plots
    from jaxheads.sahara import SaharaStep, sahara

    config = common.resolved_config()
    model, _, prompts, settings = common.scan_inputs(config)
    settings["rank"] = config.rank
    log = io.JsonlLog(os.path.join(config.out, "sahara.partial.jsonl"))
    done = common.resume_records(log, settings)
    saved = [SaharaStep(np.array(done[i]["scores"], float), tuple(done[i]["chosen"])) for i in sorted(done)]
    seconds = sum(done[i]["seconds"] for i in done)

    def save(step):
        nonlocal seconds
        elapsed = time_of_step()
        seconds += elapsed
        log.append({"index": len(saved), "scores": np.where(np.isnan(step.scores), None, step.scores).tolist(),
                    "chosen": list(step.chosen), "seconds": elapsed})
        saved.append(step)
        print(f"step {len(saved)}: head {step.chosen}, score {np.nanmax(step.scores):.3f}°", flush=True)

    time_of_step = common.stopwatch()
    result = sahara(model, prompts, steps=config.steps, rank=config.rank, kind=config.ablation,
                    epsilon=config.epsilon, batch_size=config.batch_size, chunk_size=config.chunk_size,
                    done_steps=list(saved), on_step=save, progress=True, mesh=common.device_mesh(config))
    steps = [{"scores": np.where(np.isnan(s.scores), None, s.scores).tolist(), "chosen": list(s.chosen)}
             for s in result.steps]
    output = {**settings, "layers": model.config.num_layers, "heads_per_layer": model.config.num_heads,
              "prompts": len(prompts), "heads": [list(h) for h in result.heads], "steps": steps,
              "rank": config.rank, "seconds": seconds}
    io.atomic_write_json(os.path.join(config.out, "sahara.json"), output)
    plots.plot_chosen_heads(model.config.num_layers, model.config.num_heads, result.heads,
                            [s.scores for s in result.steps], os.path.join(config.out, "sahara_heads.png"))
    print(f"wrote {config.out}/sahara.json; heads {result.heads}; {seconds:.1f} s")


if __name__ == "__main__":
    app.run(main)
