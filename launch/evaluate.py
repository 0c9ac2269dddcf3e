"""Attack success rate with heads ablated: asr.json and generations.jsonl.

    python -m launch.evaluate --ablate_from=runs/sahara/sahara.json --dataset=builtin:harmful:heldout
    python -m launch.evaluate --top_k_from=runs/ships/ships.json --top_k=1   # each prompt's own top head
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from launch import common

common.define_flags("configs/evaluate.py")
flags.DEFINE_string("ablate", None, "Heads ablated for every prompt, as layer:head pairs, e.g. 2:3,10:0.")
flags.DEFINE_string("ablate_from", None, "A sahara.json whose chosen heads are ablated.")
flags.DEFINE_string("top_k_from", None, "A ships.json: ablate each of its prompts' own top-k heads.")
flags.DEFINE_integer("top_k", None, "With --top_k_from: heads ablated per prompt.")
flags.DEFINE_integer("max_new_tokens", None, "Greedy tokens generated per prompt.")


def parse_heads(text: str) -> list[tuple[int, int]]:
    """'2:3,10:0' -> [(2, 3), (10, 0)]."""
    from jaxheads.errors import JaxheadsError

    heads = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            layer, head = item.split(":")
            heads.append((int(layer), int(head)))
        except ValueError as error:
            raise JaxheadsError(f"--ablate wants layer:head pairs like 2:3,10:0; cannot read {item!r}") from error
    return heads


def main(argv):
    del argv
    from jaxheads import io
    from jaxheads.errors import DataError
    from jaxheads.eval import asr

    config = common.resolved_config()
    model = common.load_model(config)
    per_prompt = bool(config.top_k_from)
    if per_prompt:
        ships = io.read_json(config.top_k_from)
        queries, prompts = ships["queries"], ships["prompts"]
        if config.limit:
            queries, prompts = queries[:config.limit], prompts[:config.limit]
        heads = asr.top_heads_per_prompt(np.array(ships["scores"])[:len(prompts)], config.top_k)
    else:
        queries = common.load_queries(config)
        prompts = common.format_queries(queries, config, model.tokenizer)
        heads = parse_heads(config.ablate)
        if config.ablate_from:
            heads += [tuple(h) for h in io.read_json(config.ablate_from)["heads"]]
    if per_prompt and (config.ablate or config.ablate_from):
        raise DataError("--top_k_from cannot be combined with --ablate or --ablate_from")
    result = asr.evaluate(model, queries, prompts, heads, per_prompt=per_prompt, kind=config.ablation,
                          epsilon=config.epsilon, max_new_tokens=config.max_new_tokens,
                          batch_size=config.batch_size, progress=True, mesh=common.device_mesh(config))
    io.atomic_write_text(os.path.join(config.out, "generations.jsonl"),
                         "".join(json.dumps(record) + "\n" for record in result.records))
    ablated = [list(h) for h in heads] if not per_prompt else f"top-{config.top_k} per prompt"
    io.atomic_write_json(os.path.join(config.out, "asr.json"),
                         {"asr": result.asr, "n": result.n, "ablated": ablated, "ablation": config.ablation,
                          "epsilon": config.epsilon, "model": model.name, "prompt_format": config.prompt_format})
    print(f"ASR {result.asr:.3f} over {result.n} prompts with {ablated} ablated; wrote {config.out}/asr.json")


if __name__ == "__main__":
    app.run(main)
