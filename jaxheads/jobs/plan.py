"""`jaxheads plan`: what one device holds during a Ships or Sahara scan, and whether it fits, computed from the
model's config alone (no weights are read, so it runs anywhere before a pod is paid for)."""

from __future__ import annotations

import dataclasses

from jaxheads.errors import JaxheadsError
from jaxheads.jobs import common
from jaxheads.loading import read_model_config
from jaxheads.plan import GIB, describe, fitting_meshes, plan

SCANS = ("ships", "sahara")


def parse_mesh(text: str) -> tuple[int, int]:
    """'4,2' -> (4, 2)."""
    try:
        data, model = (int(part) for part in text.split(","))
    except ValueError as error:
        raise JaxheadsError(f"--mesh wants two sizes 'data,model' such as 4,2; got {text!r}") from error
    if data < 1 or model < 1:
        raise JaxheadsError(f"--mesh sizes must be at least 1, got {text!r}")
    return data, model


def check_config(config) -> None:
    common.check_model_settings(config)
    parse_mesh(config.mesh)
    common.require_int(config, "prompts", "tokens", "batch_size", "chunk_size")
    common.require_choice(config, "scan", SCANS)
    common.require(config, "device_memory", lambda gib: gib >= 0, ">= 0 (GiB; 0 = do not check)")


def run(config) -> dict:
    """Prints the plan (and writes plan.json when `out` is set); returns it."""
    check_config(config)
    data, model = parse_mesh(config.mesh)
    cfg = read_model_config(config.model or None)
    device_bytes = int(config.device_memory * GIB) if config.device_memory else None
    options = dict(prompts=config.prompts, tokens=config.tokens, dtype=config.dtype, batch_size=config.batch_size,
                   chunk_size=config.chunk_size, dataset_level=config.scan == "sahara")
    memory = plan(cfg, data, model, device_bytes=device_bytes, **options)
    print(f"{config.scan} scan of {config.model or 'the embedded SmolLM2'} ({cfg.num_layers} layers x "
          f"{cfg.num_heads} heads, {config.dtype}): {config.prompts} prompts of {config.tokens} tokens, batches of "
          f"{config.batch_size}")
    for line in describe(memory):
        print(line)
    advice = []
    if memory.fits is False:
        if memory.largest_chunk:
            advice.append(f"--chunk_size={memory.largest_chunk} fits on this mesh")
        meshes = fitting_meshes(cfg, data * model, device_bytes, **{**options, "chunk_size": 1})
        if meshes:
            advice += [f"--mesh={d},{m} fits chunks of up to {chunk}" for d, m, chunk in meshes[:3]]
        elif not memory.largest_chunk:
            advice.append(f"no mesh of {data * model} devices fits; use more devices, fewer prompts per batch or "
                          "shorter prompts")
        for line in advice:
            print(f"  {line}")
    result = {"model": config.model, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
              "num_prompts": config.prompts, **dataclasses.asdict(memory), "total": memory.total,
              "fits": memory.fits, "advice": advice, "settings": config.to_dict()}
    if config.out:
        common.write_result(config.out, "plan.json", result)
    return result
