"""`jaxheads plan`: what one device holds during a Ships or Sahara scan, and whether it fits, computed from the
model's config alone (no weights are read, so it runs anywhere before a pod is paid for); with `--topology`, XLA's
own per-chip memory and FLOPs of every program a command runs, compiled ahead of time for that TPU topology
(`jaxheads.aot`), beside the formula's estimate."""

from __future__ import annotations

import dataclasses
import math

import jax

from jaxheads import aot, tpu
from jaxheads.errors import JaxheadsError
from jaxheads.jobs import common
from jaxheads.loading import read_model_config
from jaxheads.models.config import ModelConfig
from jaxheads.placement import model_layout
from jaxheads.plan import (
    DTYPE_BYTES,
    GIB,
    MemoryPlan,
    describe,
    fitting_meshes,
    plan,
    recommend_rules,
    scan_splits,
    weights_per_device,
)
from jaxheads.scan import ablation_bytes
from jaxheads.sharding import kv_split, parse_rules

SCANS = ("ships", "sahara")
SAHARA_STEPS = 3  # the Sahara search whose time `plan --topology` reports


def parse_mesh(text: str) -> tuple[int, int]:
    """'4,2' -> (4, 2)."""
    try:
        data, model = (int(part) for part in text.split(","))
    except ValueError as error:
        raise JaxheadsError(f"--mesh wants two sizes 'data,model' such as 4,2; got {text!r}") from error
    if data < 1 or model < 1:
        raise JaxheadsError(f"--mesh sizes must be at least 1, got {text!r}")
    return data, model


def parse_programs(text: str) -> list[str]:
    programs = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in programs if name not in aot.PROGRAMS]
    if unknown or not programs:
        raise JaxheadsError(f"--programs: unknown {unknown or text!r}; choose from {', '.join(aot.PROGRAMS)}")
    return programs


def check_config(config) -> None:
    common.check_model_settings(config)
    parse_mesh(config.mesh)
    common.require_int(config, "prompts", "tokens", "batch_size", "chunk_size", "slices", "new_tokens", "train_batch",
                       "lora_rank")
    common.require_choice(config, "scan", SCANS)
    common.require(config, "device_memory", config.device_memory >= 0, ">= 0 (GiB; 0 = do not check)")
    if config.sharding:
        parse_rules(config.sharding)
    if config.topology:
        parse_programs(config.programs)


def _options(config) -> dict:
    return dict(prompts=config.prompts, tokens=config.tokens, dtype=config.dtype, batch_size=config.batch_size,
                chunk_size=config.chunk_size, dataset_level=config.scan == "sahara")


def run(config) -> dict:
    """Prints the plan (and writes plan.json when `out` is set); returns it."""
    check_config(config)
    cfg = read_model_config(config.model or None)
    result = run_topology(config, cfg) if config.topology else run_formula(config, cfg)
    if config.out:
        common.write_result(config.out, "plan.json", result)
    return result


def run_formula(config, cfg: ModelConfig) -> dict:
    data, model = parse_mesh(config.mesh)
    device_bytes = int(config.device_memory * GIB) if config.device_memory else None
    options = _options(config)
    rules = config.sharding or (recommend_rules(cfg, data, model, device_bytes, **options) if device_bytes else "tp")
    memory = plan(cfg, data, model, device_bytes=device_bytes, rules=rules, **options)
    _print_header(config, cfg)
    for line in describe(memory):
        print(line)
    advice = []
    if memory.fits is False:
        if memory.largest_chunk:
            advice.append(f"--chunk_size={memory.largest_chunk} fits on this mesh")
        meshes = fitting_meshes(cfg, data * model, device_bytes, **{**options, "chunk_size": 1}, rules=rules)
        if meshes:
            advice += [f"--mesh={d},{m} fits chunks of up to {chunk}" for d, m, chunk in meshes[:3]]
        elif not memory.largest_chunk:
            advice.append(f"no mesh of {data * model} devices fits; use more devices, fewer prompts per batch or "
                          "shorter prompts")
        for line in advice:
            print(f"  {line}")
    return {"model": config.model, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
            "num_prompts": config.prompts, **dataclasses.asdict(memory), "total": memory.total,
            "fits": memory.fits, "advice": advice, "settings": config.to_dict()}


def _print_header(config, cfg: ModelConfig) -> None:
    print(f"{config.scan} scan of {config.model or 'the embedded SmolLM2'} ({cfg.num_layers} layers x "
          f"{cfg.num_heads} heads, {config.dtype}): {config.prompts} prompts of {config.tokens} tokens, batches of "
          f"{config.batch_size}")


def estimate_bytes(program: str, cfg: ModelConfig, memory: MemoryPlan, work: aot.Workload, chunk: int) -> int:
    """The formula's bytes per chip of a program. The scans: `jaxheads.plan` (calibrated against XLA).
    Generation: the weights, the KV cache and one pass's activations. Training (with `remat`, the trainer's
    default): float32 parameters, accumulated gradients, two moments and the gradients of the step (the frozen
    float32 base with LoRA), every layer's input kept for the backward pass, one layer's activations while it is
    recomputed and differentiated (three times a forward pass's), and the float32 logits with their gradients."""
    itemsize = DTYPE_BYTES[work.dtype]
    splits = _splits(cfg, memory)
    fixed = memory.weights + memory.gathered
    if program in ("ships", "sahara"):
        one = memory.chunk // max(memory.chunk_size, 1)
        resident = memory.representations if program == "sahara" else 0
        return fixed + memory.layer_inputs + chunk * one + resident
    if program == "generate":
        cache = 2 * cfg.num_layers * memory.rows * (work.tokens + work.new_tokens) * math.ceil(
            cfg.num_kv_heads / splits["kv_heads"]) * cfg.head_dim * itemsize
        return fixed + cache + ablation_bytes(cfg, memory.rows, work.tokens, itemsize, splits=splits)

    def rows(count: int) -> int:
        return count // memory.data if count % memory.data == 0 else count

    train_rows = rows(work.train_rows) + 2 * rows(work.surgery_pairs)
    inputs = cfg.num_layers * train_rows * work.tokens * cfg.hidden_size * itemsize
    layer = 3 * ablation_bytes(cfg, train_rows, work.tokens, itemsize, splits=splits)
    logits = 3 * train_rows * work.tokens * (cfg.vocab_size // splits["vocab"]) * 4
    full = weights_per_device(cfg, 4, memory.model, memory.data, memory.rules)
    return (5 * full if program == "train" else full) + inputs + layer + logits


def _splits(cfg: ModelConfig, memory: MemoryPlan) -> dict[str, int]:
    splits = scan_splits(cfg, memory.data, memory.model, memory.rules)
    splits["kv_heads"] = kv_split(memory.model, cfg.num_kv_heads) if dict(parse_rules(memory.rules)).get(
        "kv_heads") else 1
    return splits


def command_flops(cfg: ModelConfig, compiled: dict[str, aot.Compiled], batches: int) -> dict[str, float]:
    """FLOPs per chip of whole commands from the programs' counts: the query-level Ships scan (every head once,
    grouped by layer into chunks, each running the layers from its own on, plus one base pass per batch), a
    Sahara search of `SAHARA_STEPS` steps (each a dataset-level scan of the remaining candidates, counted from
    each candidate's own layer: a lower bound), and ASR generation over the prompts."""
    L, N = cfg.num_layers, cfg.num_heads
    totals = {}
    base = compiled.get("base")

    def scan(program: aot.Compiled, heads_per_layer: int) -> float:
        # a layer's heads fill whole chunks, except that a layer with fewer heads than a chunk runs one short chunk
        ablations = heads_per_layer if heads_per_layer <= program.chunk else (
            math.ceil(heads_per_layer / program.chunk) * program.chunk)
        chunk_flops = sum(program.flops + (L - layer - 1) * program.flops_per_layer for layer in range(L))
        return batches * (ablations / program.chunk * chunk_flops + (base.flops if base else 0.0))

    if compiled.get("ships") and compiled["ships"].fits:
        totals["ships"] = scan(compiled["ships"], N)
    if compiled.get("sahara") and compiled["sahara"].fits:
        totals["sahara"] = SAHARA_STEPS * scan(compiled["sahara"], N)
    if compiled.get("generate") and compiled["generate"].fits:
        totals["generate"] = batches * compiled["generate"].flops
    return totals


def run_topology(config, cfg: ModelConfig) -> dict:
    data, model = parse_mesh(config.mesh)
    try:
        topo = tpu.topology(config.topology, config.slices)
        mesh = tpu.mesh(topo, data, model)
    except (ValueError, RuntimeError) as error:
        raise JaxheadsError(str(error)) from error
    hbm = tpu.usable_hbm(topo.devices[0])
    options = _options(config)
    rules = config.sharding or recommend_rules(cfg, data, model, hbm, **options)
    programs = parse_programs(config.programs)
    layout = model_layout(cfg, mesh, rules)
    batch = -(-min(config.batch_size, config.prompts) // data) * data
    work = aot.Workload(cfg, layout, rows=batch, tokens=config.tokens, prompts=config.prompts, dtype=config.dtype,
                        new_tokens=config.new_tokens, train_rows=config.train_batch, lora_rank=config.lora_rank)
    memory = {scan: plan(cfg, data, model, device_bytes=hbm, rules=rules,
                         **{**options, "dataset_level": scan == "sahara"}) for scan in SCANS}
    _print_header(config, cfg)
    print(f"compiling for {topo.name} x {topo.slices} slice(s) ({topo.chips} chips, {hbm / GIB:.2f} GiB usable HBM "
          f"per chip), mesh {data} x {model}, sharding {rules}")
    compiled: dict[str, aot.Compiled] = {}
    tried: dict[str, list] = {}
    for program in programs:
        if program in SCANS:
            guess = memory[program].largest_chunk or 1
            if "ships" in compiled and compiled["ships"].chunk:
                guess = compiled["ships"].chunk
            best, attempts = aot.largest_chunk(work, program, start=guess or config.chunk_size)
            compiled[program] = best or attempts[0]
            tried[program] = [{"chunk": a.chunk, "fits": a.fits, "xla_peak_bytes": a.peak_bytes} for a in attempts]
        else:
            compiled[program] = aot.compile_program(program, work, None)
    if any(program in SCANS for program in programs):
        compiled["base"] = aot.compile_program("base", work, None)
    rows = []
    report = {}
    for program in programs:
        result = compiled[program]
        chunk = result.chunk if program in SCANS else None
        estimate = estimate_bytes(program, cfg, memory["sahara" if program == "sahara" else "ships"], work,
                                  chunk or 1)
        flops = None if result.flops is None else result.flops
        if program in SCANS and result.flops is not None:  # the chunk's FLOPs when it starts at layer 0
            flops = result.flops + (cfg.num_layers - 1) * result.flops_per_layer
        report[program] = {
            "xla_peak_bytes": result.peak_bytes, "xla_argument_bytes": result.argument_bytes,
            "xla_temp_bytes": result.temp_bytes, "estimate_bytes": estimate, "hbm_bytes": result.hbm_bytes,
            "fits": result.fits, "chunk": chunk if result.fits else (0 if program in SCANS else None),
            "flops": flops, "seconds_at_peak": None if flops is None else flops / topo.peak_flops,
            "compile_seconds": round(result.compile_seconds, 1),
            **({"tried": tried[program]} if program in tried else {})}
        rows.append(program)
    batches = math.ceil(config.prompts / batch)
    commands = {name: {"flops": flops, "seconds_at_peak": flops / topo.peak_flops}
                for name, flops in command_flops(cfg, compiled, batches).items()}
    _print_table(report, commands)
    return {"model": config.model, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
            "num_prompts": config.prompts, "topology": topo.name, "slices": topo.slices, "chips": topo.chips,
            "mesh": [data, model], "sharding": rules, "hbm_bytes": hbm, "peak_flops_per_chip": topo.peak_flops,
            "programs": report, "commands": commands, "jax": jax.__version__,
            "settings": config.to_dict()}


def _print_table(report: dict, commands: dict) -> None:
    print(f"  {'program':<11s} {'XLA peak':>9s} {'estimate':>9s} {'HBM':>7s} {'fits':>5s} {'chunk':>6s} "
          f"{'TFLOP/chip':>11s} {'s at peak':>10s}")
    for program, row in report.items():
        flops = "" if row["flops"] is None else f"{row['flops'] / 1e12:11.2f}"
        seconds = "" if row["seconds_at_peak"] is None else f"{row['seconds_at_peak']:10.3f}"
        print(f"  {program:<11s} {row['xla_peak_bytes'] / GIB:9.2f} {row['estimate_bytes'] / GIB:9.2f} "
              f"{row['hbm_bytes'] / GIB:7.2f} {'yes' if row['fits'] else 'NO':>5s} {str(row['chunk'] or ''):>6s} "
              f"{flops:>11s} {seconds:>10s}")
    for program, row in report.items():
        if not row["fits"]:
            over = row["xla_peak_bytes"] - row["hbm_bytes"]
            print(f"  {program} does NOT fit: XLA needs {row['xla_peak_bytes'] / GIB:.2f} GiB per chip, "
                  f"{over / GIB:.2f} GiB over the usable {row['hbm_bytes'] / GIB:.2f} GiB")
    for name, total in commands.items():
        print(f"  whole {name:<8s} {total['flops'] / 1e12:12.1f} TFLOP per chip, {total['seconds_at_peak']:9.1f} s "
              "at peak")
