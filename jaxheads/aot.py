"""Ahead-of-time compiles of the programs the commands run, for a TPU topology, on any host (no TPU, no weights):
XLA's own per-chip memory and FLOPs.

The programs are the library's own jitted functions, lowered with abstract parameters (`jax.ShapeDtypeStruct`s
carrying each parameter's `NamedSharding` from the layout rules) on a mesh over a topology's chips
(`jaxheads.tpu`):

- `ships`: one call of `scan.ablated_pass` on a chunk of ablations, with the saved layer inputs of a batch
  resident (the query-level Ships scan is a sequence of these);
- `sahara`: the same call and the store of its representations into the resident `[M + 1, P, D]` float32
  representations of every candidate on every prompt (a step of dataset-level Ships and of Sahara);
- `generate`: `generation.generate_ids` on a batch of prompts (ASR);
- `train`, `train_lora`: one micro-step of `train.trainer.step_function` (full fine-tuning or LoRA) with the
  Surgery penalty on (harmful, safe) pairs.

Each compile gives `memory_analysis()` (argument, temporary and peak bytes per chip) or XLA's out-of-memory error
(how many bytes the program would need), and the FLOPs per chip counted from the optimized HLO with every loop body
counted as often as it runs (`jaxheads.hlo.hlo_flops`; `cost_analysis()` counts a loop body once).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxheads import hlo, tpu
from jaxheads.generation import Sampling, generate_ids
from jaxheads.interventions import Interventions
from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.models.decoder import Decoder
from jaxheads.placement import model_layout, parameter_shardings
from jaxheads.scan import MAX_AUTO_CHUNK, SAVED_INPUTS, _store, ablated_pass, base_pass
from jaxheads.sharding import DATA, Layout, rules_text, tree_shardings
from jaxheads.train import lora as lora_lib
from jaxheads.train.data import Batch
from jaxheads.train.trainer import TrainConfig, TrainState, make_optimizer, step_function, training_shardings

PROGRAMS = ("ships", "sahara", "generate", "train", "train_lora")
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class Workload:
    """What the programs run on: a model config in a layout, `rows` prompt rows per batch (the whole batch, split
    over `data`) of `tokens` tokens, `prompts` prompts in all, `new_tokens` generated per prompt, and training
    micro-batches of `train_rows` examples of `tokens` tokens with `surgery_pairs` (harmful, safe) pairs and
    LoRA rank `lora_rank`."""

    config: ModelConfig
    layout: Layout
    rows: int
    tokens: int
    prompts: int
    dtype: str = "bfloat16"
    new_tokens: int = 64
    train_rows: int = 8
    surgery_pairs: int = 2
    lora_rank: int = 16

    @property
    def chunk_on_data(self) -> bool:
        """Whether the ablation chunk is split over `data` (rows that do not fill it), as `scan.chunk_on_data`."""
        return self.rows % self.layout.mesh.shape[DATA] != 0


@dataclasses.dataclass
class Compiled:
    """XLA's numbers for one program per chip: memory (None where it did not fit), the bytes it would need when
    it does not, FLOPs (`flops_per_layer`: those of one trip of a loop whose trip count is data, the layer loop of
    an ablated pass from a traced start layer), and the compile time."""

    program: str
    chunk: int | None
    hbm_bytes: int
    fits: bool
    peak_bytes: int
    argument_bytes: int | None = None
    temp_bytes: int | None = None
    output_bytes: int | None = None
    flops: float | None = None
    flops_per_layer: float | None = None
    collectives: dict | None = None
    compile_seconds: float = 0.0
    hlo_text: str | None = dataclasses.field(default=None, repr=False)


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _replicated(layout: Layout) -> NamedSharding:
    return NamedSharding(layout.mesh, PartitionSpec())


def _rows(layout: Layout, rows: int) -> NamedSharding:
    divides = rows % layout.mesh.shape[DATA] == 0
    return NamedSharding(layout.mesh, PartitionSpec(DATA) if divides else PartitionSpec())


def abstract_model(cfg: ModelConfig, layout: Layout, dtype: str = "bfloat16"):
    """`(graphdef, state)` of a model of `cfg` in `layout` whose parameters are `ShapeDtypeStruct`s with their
    layout's shardings (nothing is allocated)."""
    module = nnx.eval_shape(lambda: Decoder(cfg, dtype=DTYPES[dtype], rngs=nnx.Rngs(0)))
    module.layout = layout
    graphdef, state = nnx.split(module)
    shardings = tree_shardings(state, parameter_shardings(cfg, layout), param_table.shapes(cfg), layout.array_mesh)
    return graphdef, jax.tree.map(lambda leaf, sharding: _sds(leaf.shape, leaf.dtype, sharding), state, shardings)


def _scan_arguments(work: Workload, chunk: int):
    cfg, layout = work.config, work.layout
    graphdef, state = abstract_model(cfg, layout, work.dtype)
    B, T, L, N = work.rows, work.tokens, cfg.num_layers, cfg.num_heads
    dtype = DTYPES[work.dtype]
    inputs_shape = (L, B, T, cfg.hidden_size)
    rows = _replicated(layout) if work.chunk_on_data else _rows(layout, B)
    inputs = _sds(inputs_shape, dtype, layout.sharding(SAVED_INPUTS, inputs_shape) if not work.chunk_on_data else
                  layout.with_rules(batch=None).sharding(SAVED_INPUTS, inputs_shape))
    heads_sharding = _rows(layout, chunk) if work.chunk_on_data else _replicated(layout)
    scale = _sds((chunk, L, N), jnp.float32, heads_sharding)
    base_logp_shape = (B, cfg.vocab_size)
    base_layout = layout.with_rules(batch=None) if work.chunk_on_data else layout
    base_logp = _sds(base_logp_shape, jnp.float32, base_layout.sharding(("batch", "act_vocab"), base_logp_shape))
    return (graphdef, state, inputs, _sds((B, T), jnp.bool_, rows), _sds((), jnp.int32, _replicated(layout)),
            Interventions(scale, scale, None), base_logp)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_axis"), donate_argnums=7)
def sahara_step(graphdef, state, layer_inputs, mask, start, heads, base_logp, representations, rows, columns,
                chunk_axis=None):
    """One chunk of a dataset-level scan as the scan runs it back to back: the ablated pass, then its
    representations stored into the resident ones (donated, so they are updated in place)."""
    kl, hidden = ablated_pass(graphdef, state, layer_inputs, mask, start, heads, base_logp, chunk_axis=chunk_axis)
    return kl, _store(representations, rows, columns, hidden)


def lower(program: str, work: Workload, chunk: int = 16):
    """The lowered (not yet compiled) program, on the workload's mesh."""
    cfg, layout = work.config, work.layout
    chunk_axis = DATA if work.chunk_on_data else None
    if program == "base":
        graphdef, state, _, mask, *_ = _scan_arguments(work, 1)
        ids = _sds(mask.shape, jnp.int32, mask.sharding)
        return base_pass.lower(graphdef, state, ids, mask)
    if program == "ships":
        return ablated_pass.lower(*_scan_arguments(work, chunk), chunk_axis=chunk_axis)
    if program == "sahara":
        arguments = _scan_arguments(work, chunk)
        shape = (cfg.num_layers * cfg.num_heads, work.prompts, cfg.hidden_size)
        split = layout.mesh.shape["model"] > 1 and cfg.hidden_size % layout.mesh.shape["model"] == 0
        representations = _sds(shape, jnp.float32, NamedSharding(layout.mesh, PartitionSpec(None, None,
                                                                                            "model" if split else None)))
        rows = _sds((chunk,), jnp.int32, _replicated(layout))
        columns = _sds((work.rows,), jnp.int32, _replicated(layout))
        return sahara_step.lower(*arguments, representations, rows, columns, chunk_axis=chunk_axis)
    if program == "generate":
        graphdef, state = abstract_model(cfg, layout, work.dtype)
        rows = _rows(layout, work.rows)
        key = jax.eval_shape(lambda: jax.random.key(0))
        return generate_ids.lower(graphdef, state, _sds((work.rows, work.tokens), jnp.int32, rows),
                                  _sds((work.rows, work.tokens), jnp.bool_, rows), None,
                                  _sds(key.shape, key.dtype, _replicated(layout)), max_new_tokens=work.new_tokens,
                                  sampling=Sampling(), eos_ids=(0,), pad=0)
    if program in ("train", "train_lora"):
        return _lower_train(work, lora=program == "train_lora")
    raise ValueError(f"unknown program {program!r}; the programs are {', '.join(PROGRAMS)}")


def train_config(work: Workload, lora: bool) -> TrainConfig:
    """The training settings of the `train` / `train_lora` programs: the workload's micro-batch, with Surgery."""
    return TrainConfig(batch_size=work.train_rows, max_length=work.tokens, dtype=work.dtype,
                       lora_rank=work.lora_rank if lora else 0, surgery_lambda=0.1, surgery_batch=work.surgery_pairs,
                       sharding=rules_text(work.layout.rules))


def _lower_train(work: Workload, lora: bool):
    cfg, layout = work.config, work.layout
    config = train_config(work, lora)
    optimizer = make_optimizer(dataclasses.replace(config, steps=100))
    base = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in param_table.shapes(cfg).items()}
    params = base if not lora else jax.eval_shape(lambda: lora_lib.init_adapters(config.lora, base,
                                                                                  jax.random.key(0)))
    frozen = {} if not lora else base
    state = TrainState(params, jax.eval_shape(optimizer.init, params), jax.ShapeDtypeStruct((2,), jnp.uint32),
                       jax.ShapeDtypeStruct((), jnp.int32))
    mesh = layout.mesh
    shardings = training_shardings(state, cfg, config, mesh)
    state = jax.tree.map(lambda leaf, sharding: _sds(leaf.shape, leaf.dtype, sharding), state, shardings)
    frozen = jax.tree.map(lambda leaf, sharding: _sds(leaf.shape, leaf.dtype, sharding), frozen,
                          training_shardings(frozen, cfg, config, mesh))

    def batch(rows):
        sharding = _rows(layout, rows)
        return Batch(*(_sds((rows, work.tokens), dtype, sharding) for dtype in (jnp.int32, jnp.bool_, jnp.bool_)))

    step = jax.jit(step_function(cfg, config, optimizer, model_layout(cfg, mesh, config.sharding)),
                   out_shardings=(shardings, None), donate_argnums=0)
    return step.lower(state, frozen, batch(work.train_rows), (batch(work.surgery_pairs), batch(work.surgery_pairs)))


def compile_program(program: str, work: Workload, chunk: int | None = 16, keep_text: bool = False) -> Compiled:
    """Compiles one program for the workload's topology and reads XLA's numbers."""
    devices = work.layout.mesh.devices.flat
    hbm = tpu.usable_hbm(next(iter(devices)))
    started = time.perf_counter()
    lowered = lower(program, work, chunk or 1)
    cache = jax.config.jax_enable_compilation_cache  # a compile-only TPU executable cannot be cached here
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        compiled = lowered.compile()
    except Exception as error:  # jax.errors.JaxRuntimeError; anything but an out-of-memory error is re-raised
        needed = tpu.parse_oom(str(error))
        if needed is None:
            raise
        return Compiled(program, chunk, needed[1], False, needed[0], compile_seconds=time.perf_counter() - started)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    peak = int(getattr(memory, "peak_memory_in_bytes", 0) or (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                                              + memory.temp_size_in_bytes - memory.alias_size_in_bytes))
    text = compiled.as_text()
    one, two = hlo.hlo_flops(text, 1), hlo.hlo_flops(text, 2)
    trips = work.new_tokens - 1 if program == "generate" else 1
    return Compiled(program, chunk, hbm, peak <= hbm, peak, memory.argument_size_in_bytes, memory.temp_size_in_bytes,
                    memory.output_size_in_bytes, hlo.hlo_flops(text, trips), two - one,
                    hlo.collective_bytes(text), seconds, text if keep_text else None)


def largest_chunk(work: Workload, program: str = "ships", start: int = 16,
                  limit: int = MAX_AUTO_CHUNK) -> tuple[Compiled | None, list[Compiled]]:
    """The largest chunk (a power of two up to `limit`, then refined halfway) for which XLA says `program` fits,
    searched from `start` (e.g. the formula's guess): `(the compile of that chunk or None, every compile tried)`."""
    tried: dict[int, Compiled] = {}

    def fits(chunk: int) -> bool:
        if chunk not in tried:
            tried[chunk] = compile_program(program, work, chunk)
        return tried[chunk].fits

    chunk = int(2 ** np.floor(np.log2(np.clip(start, 1, limit))))
    if fits(chunk):
        while chunk < limit and fits(min(chunk * 2, limit)):
            chunk = min(chunk * 2, limit)
        low, high = chunk, min(chunk * 2, limit) if chunk < limit else None
    else:
        while chunk > 1 and not fits(chunk // 2):
            chunk //= 2
        low, high = (chunk // 2, chunk) if chunk > 1 else (None, 1)
    if low is not None and high is not None and high - low > 1 and fits((low + high) // 2):
        low = (low + high) // 2
    best = tried.get(low) if low is not None else None
    return best, [tried[chunk] for chunk in sorted(tried)]


def ablated_flops_floor(cfg: ModelConfig, rows: int, tokens: int, layers: int) -> float:
    """The matmul FLOPs of one ablation on `rows` prompts of `tokens` tokens that runs `layers` decoder layers
    (those from its first ablated layer on) and the LM head at the last position only: per layer the q, k, v, o
    projections, the attention scores and their weighted sum over all `tokens` keys, and the gated MLP."""
    D, F, N, K, d, V = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.vocab_size)
    per_token = 2 * D * d * (2 * N + 2 * K) + 2 * 3 * D * F + 2 * 2 * N * d * tokens
    return rows * (layers * tokens * per_token + 2 * D * V)
