"""Supervised fine-tuning on response tokens with optax, optional LoRA, the Surgery regularizer, and Orbax
checkpoints that resume to exactly the same state.

The trainable state is a plain pytree: the float32 parameters `{name: [L, ...]}` (full fine-tuning) or the LoRA
adapters, the optimizer state (AdamW inside `optax.MultiSteps` for gradient accumulation), the PRNG key that
draws the Surgery pairs, and the micro-batch counter that fixes the data position. Each micro-step runs one
jitted function; its result replaces the state in one assignment, so an interrupt never sees half a step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxheads import interrupts
from jaxheads.errors import JaxheadsError
from jaxheads.io import JsonlLog, atomic_write_jsonl, content_hash, fingerprint_changes
from jaxheads.loading import DTYPES, Model
from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.placement import model_layout, parameter_shardings
from jaxheads.sharding import Layout, parse_rules, place_rows, to_host, tree_shardings
from jaxheads.sink import positive_heads, sink_divergence, surgery_penalty
from jaxheads.tokens import pad_id
from jaxheads.train import lora as lora_lib
from jaxheads.train.data import Batch, Example, PairSet, pad_right, sample_indices
from jaxheads.weights.build import module_from_arrays

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "sgd")
SINK_EVAL_PAIRS = 8  # pairs behind the logged positive-divergence head count


class CheckpointError(JaxheadsError):
    """A checkpoint directory that does not belong to this run."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings. `steps` counts optimizer steps, each over `grad_accum` micro-batches of `batch_size`; 0
    means as many as `epochs` passes over the examples take (`for_examples`). These are the defaults of the training
    commands too (`jaxheads.configs.common.train_fields`), which change some of them per command."""

    steps: int = 0
    epochs: float = 1.0  # passes over the examples when steps = 0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-5
    optimizer: str = "adamw"  # or "sgd" (plain gradient steps: no moment estimates, no epsilon)
    schedule: str = "cosine"  # linear warm-up, then cosine decay to min_lr_ratio · lr, or constant
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o")
    surgery_lambda: float = 0.0  # 0 = plain SFT
    surgery_batch: int = 2  # (harmful, safe) pairs per micro-step for the regularizer
    sink_every: int = 0  # log the positive-divergence head count every this many steps (0 = never)
    max_length: int = 256
    dtype: str = "float32"  # compute dtype; parameters and optimizer state stay float32
    fsdp: bool = False  # on a mesh: also split each parameter's hidden axis over `data` (the tp_fsdp rules)
    sharding: str = "tp"  # on a mesh: the sharding rules (jaxheads.sharding.RULES); fsdp=True makes tp tp_fsdp
    remat: bool = True  # recompute each layer in the backward pass instead of keeping its activations
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if isinstance(getattr(self, field.name), float) and not math.isfinite(getattr(self, field.name)):
                raise JaxheadsError(f"{field.name} must be a finite number, got {getattr(self, field.name)}")
        if not self.surgery_lambda >= 0:
            raise JaxheadsError(f"surgery_lambda must be >= 0 (0 = plain SFT), got {self.surgery_lambda}")
        for name in ("batch_size", "grad_accum", "max_length", "save_every", "keep_checkpoints", "surgery_batch"):
            if getattr(self, name) < 1:
                raise JaxheadsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0 or not self.epochs > 0:
            raise JaxheadsError(f"steps must be >= 0 (0 = epochs passes) and epochs > 0, got steps={self.steps}, "
                                f"epochs={self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise JaxheadsError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise JaxheadsError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise JaxheadsError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.max_grad_norm < 0 or self.sink_every < 0:
            raise JaxheadsError("learning_rate must be > 0 and warmup_steps, max_grad_norm, sink_every >= 0")
        parse_rules(self.sharding)
        if self.lora_rank < 0:
            raise JaxheadsError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        lora_lib.LoraConfig(max(self.lora_rank, 1), self.lora_alpha, tuple(self.lora_targets))  # checks the targets

    def for_examples(self, num_examples: int) -> "TrainConfig":
        """This config with `steps` set: as given, or (steps = 0) the optimizer steps of `epochs` passes over
        `num_examples` examples."""
        if self.steps:
            return self
        return dataclasses.replace(self, steps=epochs_to_steps(num_examples, self.epochs, self))

    @property
    def lora(self) -> lora_lib.LoraConfig | None:
        if self.lora_rank == 0:
            return None
        return lora_lib.LoraConfig(self.lora_rank, self.lora_alpha, tuple(self.lora_targets))


class TrainState(NamedTuple):
    """Everything a resumed run needs: trainable params, optimizer state, PRNG key data, micro-batch counter."""

    params: Any
    opt_state: Any
    rng: jax.Array
    micro_step: np.ndarray


@dataclasses.dataclass
class TrainResult:
    """The trained weights (LoRA merged) as float32 numpy arrays, the metric records, the final step, and with
    LoRA the adapters themselves (`{target: {"a": [L, in, r], "b": [L, r, out]}}`, float32 numpy)."""

    weights: dict[str, np.ndarray]
    records: list[dict]
    step: int
    adapters: dict[str, dict[str, np.ndarray]] | None = None


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to `min_lr_ratio · lr` at `steps`, or constant."""
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                  max(config.steps, config.warmup_steps + 1),
                                                  config.learning_rate * config.min_lr_ratio)
    constant = optax.constant_schedule(config.learning_rate)
    if config.warmup_steps == 0:
        return constant
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, constant], [config.warmup_steps])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clipping and AdamW (no decay on norms and biases) or plain SGD with the same decay, accumulated over
    `grad_accum` micro-batches."""
    def decay_mask(params):
        if config.lora is not None:
            return jax.tree.map(lambda _: True, params)
        return {name: not name.endswith(("norm", "bias")) for name in params}

    parts = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))
    else:
        parts += [optax.add_decayed_weights(config.weight_decay, mask=decay_mask), optax.sgd(schedule)]
    return optax.MultiSteps(optax.chain(*parts), every_k_schedule=config.grad_accum)


def response_cross_entropy(logits: jax.Array, ids: jax.Array, response: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over response tokens: logits `[B, T, V]` at t predict `ids[:, t + 1]`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    weights = response[:, 1:].astype(jnp.float32)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def effective_weights(params, frozen: dict, lora: lora_lib.LoraConfig | None) -> dict:
    """The model weights: the trained parameters, or the frozen base with the LoRA adapters added."""
    return params if lora is None else lora_lib.merge(lora, frozen, params)


def _loss(params, frozen, batch: Batch, pairs: tuple[Batch, Batch] | None, *, model_config: ModelConfig,
          lora, dtype, surgery_lambda: float, layout: Layout | None = None, remat: bool = False):
    """CE on response tokens, plus λ · mean ReLU(d) of the sink divergence on `pairs` when given."""
    module = module_from_arrays(model_config, effective_weights(params, frozen, lora), dtype, layout, remat)
    ce = response_cross_entropy(module(batch.ids, batch.mask), batch.ids, batch.response)
    metrics = {"ce": ce}
    loss = ce
    if pairs is not None:
        harmful, safe = pairs
        divergence = sink_divergence(module, harmful.ids, harmful.mask, safe.ids, safe.mask)
        penalty = surgery_penalty(divergence)
        loss = ce + surgery_lambda * penalty
        metrics.update(penalty=penalty, positive_heads_batch=positive_heads(divergence))
    metrics["loss"] = loss
    return loss, metrics


# TrainConfig fields that only place the work or decide when to save: a run may resume with other values.
PLACEMENT_FIELDS = ("fsdp", "sharding", "remat", "save_every", "keep_checkpoints")


def run_fingerprint(model: Model, examples: Sequence[Example], pairs: PairSet | None, config: TrainConfig) -> dict:
    """What a checkpoint must match to be resumed by this run: the model's files (`Model.fingerprint`) and
    parameter shapes, the training examples and Surgery pairs (hashes of their token ids), and every
    `TrainConfig` field that changes the result (so a finished run asked for other steps is refused too)."""
    shapes = param_table.shapes(model.config)
    settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
                if field.name not in PLACEMENT_FIELDS and field.name != "epochs"}  # steps are set by now
    return {"model": {"name": model.name, **model.fingerprint},
            "param_shapes": {name: list(shape) for name, shape in shapes.items()},
            "examples": content_hash([[list(example.ids), example.prompt_length] for example in examples]),
            "pairs": None if pairs is None else content_hash(
                {"paired": pairs.paired, "samples": [[list(example.ids), example.prompt_length]
                                                     for example in pairs.harmful + pairs.safe]}),
            "settings": json.loads(json.dumps(settings))}


def _checkpoint_manager(directory: str, config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           cleanup_tmp_directories=True)  # left by a killed save
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


def training_shardings(tree, model_config: ModelConfig, config: TrainConfig, mesh: Mesh):
    """The `NamedSharding` of each array of a training pytree (the `TrainState`, or the frozen LoRA base) on
    `mesh`: parameters by the layout of `config.sharding` (tensor parallel by default, tp_fsdp with `fsdp`: the
    layout `jaxheads.load(..., sharding=...)` loads); optimizer moments follow their parameters; LoRA adapters,
    the PRNG key and the step counter are replicated."""
    layout = model_layout(model_config, mesh, training_rules(config))
    return tree_shardings(tree, parameter_shardings(model_config, layout), param_table.shapes(model_config),
                          layout.array_mesh)


def training_rules(config: TrainConfig) -> str:
    """The sharding rules of a training run: `config.sharding`, or tp_fsdp with `fsdp`, else tp."""
    if not config.fsdp:
        return config.sharding
    if config.sharding not in ("tp", "tp_fsdp"):
        raise JaxheadsError(f"fsdp=True is the tp_fsdp rules; it cannot be combined with sharding={config.sharding!r}")
    return "tp_fsdp"


def _restore(manager: ocp.CheckpointManager, state: TrainState, fingerprint: dict,
             shardings: TrainState | None) -> tuple[TrainState, dict]:
    """The latest checkpoint's state and metadata, after checking that it was written by a run with this
    fingerprint. With `shardings` the arrays are restored straight into that layout (which may be another
    mesh's than the one that saved them)."""
    step = manager.latest_step()
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    changes = fingerprint_changes(meta.get("fingerprint") or {}, fingerprint)
    if changes:
        raise CheckpointError(
            f"the checkpoint in {manager.directory} was written by another training run; what differs (checkpoint "
            f"-> now): {'; '.join(changes)}. Use another output folder, or delete it to start over")
    if shardings is None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    else:
        target = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                              state, shardings)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return TrainState(*restored), meta


def _save(manager: ocp.CheckpointManager, state: TrainState, fingerprint: dict, pending: list[dict]) -> None:
    """Saves `state` under its micro-step (once) and waits until it is on disk."""
    micro_step = int(state.micro_step)
    if manager.latest_step() != micro_step:
        meta = {"fingerprint": fingerprint, "micro_step": micro_step, "pending": pending}
        manager.save(micro_step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def step_function(model_config: ModelConfig, config: TrainConfig, optimizer: optax.GradientTransformation,
                  layout: Layout | None = None) -> Callable:
    """One micro-step `(state, frozen, batch, pair_batches) -> (state, metrics)`: the loss (CE, plus the Surgery
    penalty when `pair_batches` are given), its gradient, and the optimizer update (jit it; `jaxheads.aot`
    compiles it ahead of time)."""
    loss_fn = functools.partial(_loss, model_config=model_config, lora=config.lora, dtype=DTYPES[config.dtype],
                                surgery_lambda=config.surgery_lambda, layout=layout, remat=config.remat)

    def train_step(state: TrainState, frozen, batch, pair_batches):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batch, pair_batches)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.rng, state.micro_step + 1), metrics

    return train_step


def _latest_records(records: list[dict]) -> list[dict]:
    """Metric records with only the last one kept per step (a resumed run rewrites the steps after its checkpoint)."""
    by_step = {record["step"]: record for record in records}
    return [by_step[step] for step in sorted(by_step)]


def _resumed_log(path: str, micro_step: int, grad_accum: int) -> JsonlLog:
    """The metrics log with each step once, cut back to the steps the restored state has done (a run killed after
    logging a step but before saving it logs that step again)."""
    log = JsonlLog(path)
    done = micro_step // grad_accum if micro_step else -1  # at micro-step 0 even the step-0 record is redone
    records = log.read()
    kept = [record for record in _latest_records(records) if record["step"] <= done]
    if kept != records:
        atomic_write_jsonl(path, kept)
    return log


def check_finite_record(record: dict, path: str) -> None:
    """Refuses a metrics record with a NaN or infinite value: the training diverged (or the weights hold NaNs)."""
    bad = [f"{name} = {value}" for name, value in record.items()
           if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise JaxheadsError(f"training diverged at step {record['step']}: {', '.join(bad)} (not logged to {path}); "
                            "lower --learning_rate or --max_grad_norm, or check the data and the model's weights")


def train(model: Model, examples: Sequence[Example], config: TrainConfig, out_dir: str | os.PathLike,
          pairs: PairSet | None = None, on_step: Callable[[int, dict], None] | None = None,
          mesh: Mesh | None = None) -> TrainResult:
    """Fine-tunes `model` on `examples` for `config.steps` optimizer steps, resuming from the latest checkpoint
    in `out_dir/checkpoints` if there is one.

    `pairs` feed the Surgery regularizer (`surgery_lambda > 0`) and the logged positive-head count
    (`sink_every`). Metrics go to `out_dir/metrics.jsonl`; `on_step(step, record)` is called after each
    optimizer step. On KeyboardInterrupt the current state is saved before the interrupt propagates; an interrupt
    that arrives while a step is committed (its state, log record and checkpoint) or saved waits until that is done.

    On a `mesh`, batch rows are split over `data` and the state is laid out by `training_shardings` (checkpoints
    save that sharded state and restore onto any mesh); without one, everything runs on the default device.
    """
    if config.surgery_lambda > 0 and pairs is None:
        raise JaxheadsError("surgery_lambda > 0 needs (harmful, safe) pairs for the sink divergence; pass pairs")
    if not examples:
        raise JaxheadsError("no training examples given")
    config = config.for_examples(len(examples))
    out_dir = os.fspath(out_dir)
    model_config, lora, dtype = model.config, config.lora, DTYPES[config.dtype]
    base = {name: jnp.asarray(getattr(model.module, name)[...], jnp.float32)
            for name in param_table.shapes(model_config)}
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    params = base if lora is None else lora_lib.init_adapters(lora, base, init_key)
    frozen = {} if lora is None else base
    optimizer = make_optimizer(config)
    state = TrainState(params, optimizer.init(params), jax.random.key_data(rng), np.asarray(0, np.int64))
    shardings, place_batch = None, lambda batch: batch
    if mesh is not None:
        shardings = training_shardings(state, model_config, config, mesh)
        state = jax.device_put(state, shardings)
        frozen = jax.device_put(frozen, training_shardings(frozen, model_config, config, mesh))
        place_batch = functools.partial(place_rows, mesh=mesh)
    fingerprint = run_fingerprint(model, examples, pairs, config)
    manager = _checkpoint_manager(os.path.join(out_dir, "checkpoints"), config)
    pending: list[dict] = []
    if manager.latest_step() is not None:
        state, meta = _restore(manager, state, fingerprint, shardings)
        pending = meta.get("pending", [])

    layout = None if mesh is None else model_layout(model_config, mesh, training_rules(config))
    train_step = jax.jit(step_function(model_config, config, optimizer, layout),
                         out_shardings=None if shardings is None else (shardings, None))

    @jax.jit
    def count_positive_heads(params, frozen, harmful: Batch, safe: Batch):
        module = module_from_arrays(model_config, effective_weights(params, frozen, lora), dtype)
        return positive_heads(sink_divergence(module, harmful.ids, harmful.mask, safe.ids, safe.mask))

    pad = pad_id(model.tokenizer)
    sink_pairs = None
    if pairs is not None and config.sink_every:
        sink_pairs = pairs.batches(range(min(SINK_EVAL_PAIRS, len(pairs.harmful))),
                                   range(min(SINK_EVAL_PAIRS, len(pairs.safe))), pad, config.max_length)
    schedule = learning_rate_schedule(config)
    log = _resumed_log(os.path.join(out_dir, "metrics.jsonl"), int(state.micro_step), config.grad_accum)
    if int(state.micro_step) == 0 and sink_pairs is not None:
        log.append({"step": 0, "positive_heads": int(count_positive_heads(state.params, frozen, *sink_pairs))})
    started = time.perf_counter()
    try:
        while int(state.micro_step) < config.steps * config.grad_accum:
            micro_step = int(state.micro_step)
            chosen = sample_indices(micro_step, config.batch_size, len(examples), config.seed)
            batch = pad_right([examples[i] for i in chosen], pad, config.max_length)
            rng, pair_key = jax.random.split(jax.random.wrap_key_data(state.rng))
            pair_batches = None
            if config.surgery_lambda > 0:
                pair_batches = pairs.batches(*pairs.draw(pair_key, config.surgery_batch), pad, config.max_length)
            stepped, metrics = train_step(state._replace(rng=jax.random.key_data(rng)), frozen, place_batch(batch),
                                          place_batch(pair_batches))
            metrics = {name: float(value) for name, value in metrics.items()}  # waits for the step
            with interrupts.deferred():  # the step, its log record and its checkpoint land together or not at all
                state = stepped
                pending.append(metrics)
                if int(state.micro_step) % config.grad_accum:
                    continue
                step = int(state.micro_step) // config.grad_accum
                record = {"step": step, "lr": float(schedule(step - 1)),
                          **{name: float(np.mean([m[name] for m in pending])) for name in pending[0]},
                          "seconds": time.perf_counter() - started}
                if sink_pairs is not None and (step % config.sink_every == 0 or step == config.steps):
                    record["positive_heads"] = int(count_positive_heads(state.params, frozen, *sink_pairs))
                check_finite_record(record, log.path)
                pending = []
                log.append(record)
                if step % config.save_every == 0 or step == config.steps:
                    _save(manager, state, fingerprint, pending)
            if on_step is not None:
                on_step(step, record)
    except KeyboardInterrupt:
        with interrupts.deferred():
            _save(manager, state, fingerprint, pending)
            manager.close()
        raise
    with interrupts.deferred():
        _save(manager, state, fingerprint, pending)
        manager.close()
    weights = effective_weights(state.params, frozen, lora)
    adapters = None if lora is None else jax.tree.map(lambda value: to_host(value).astype(np.float32), state.params)
    return TrainResult({name: to_host(value).astype(np.float32) for name, value in weights.items()},
                       _latest_records(log.read()), int(state.micro_step) // config.grad_accum, adapters)


def trained_model(model: Model, weights: dict[str, np.ndarray], dtype: str = "float32") -> Model:
    """A `Model` like `model` with its parameters replaced by `weights`."""
    return dataclasses.replace(model, module=module_from_arrays(model.config, weights, DTYPES[dtype]))


def epochs_to_steps(num_examples: int, epochs: float, config: TrainConfig) -> int:
    """Optimizer steps that cover `epochs` passes over `num_examples` examples."""
    return max(1, math.ceil(epochs * num_examples / (config.batch_size * config.grad_accum)))
