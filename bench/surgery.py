"""Step time and peak memory of one full fine-tuning step (AdamW) three ways, in one run: plain SFT, Surgery
with the sink column (`jaxheads.sink`), and Surgery with the regularizer computed from full `[L, B, N, T, T]`
attention maps (what a reference that asks for `output_attentions` materialises).

    python bench/surgery.py [--model PATH] [--batch 4] [--pairs 2] [--length 128] [--repeats 3]

Peak memory is XLA's compiled-step footprint from `memory_analysis`: the temporaries the step needs beyond its
inputs, and the total with arguments and outputs (parameters and AdamW state included). Inputs are random
tokens: the cost does not depend on which tokens they are.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxheads
from bench.common import machine
from jaxheads.models.decoder import attention_mask_for_prompt, positions_from_mask
from jaxheads.models.layers import apply_rope, rms_norm, rope_tables
from jaxheads.models.params import shapes as param_shapes
from jaxheads.sink import sink_attention, sink_index, surgery_penalty
from jaxheads.train import Batch, TrainConfig
from jaxheads.train.trainer import make_optimizer, response_cross_entropy
from jaxheads.weights.build import module_from_arrays

VARIANTS = ("sft", "surgery (sink column)", "surgery (full attention maps)")


def full_map_sink_attention(module, input_ids, mask):
    """alpha `[B, L, N]` as `sink_attention`, but read from every layer's full attention map `[B, N, T, T]`,
    all L of which are kept (recomputed from each layer's input)."""
    cfg = module.config
    mask = jnp.asarray(mask, bool)
    positions = positions_from_mask(mask)
    attention_mask = attention_mask_for_prompt(cfg, mask)
    inputs = module.run_layers(module.embed_tokens(input_ids), positions, attention_mask, collect_inputs=True).inputs
    cos, sin = rope_tables(cfg, positions, inputs.dtype)

    def layer_map(h, p):
        x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
        q = jnp.einsum("btD,Dnd->btnd", x, p["q"])
        k = jnp.einsum("btD,Dkd->btkd", x, p["k"])
        if cfg.qkv_bias:
            q, k = q + p["q_bias"], k + p["k_bias"]
        if cfg.qk_norm:
            q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
        q, k = apply_rope(q, cos, sin), jnp.repeat(apply_rope(k, cos, sin), cfg.group_size, axis=2)
        logits = jnp.einsum("btnd,bsnd->bnts", q, k).astype(jnp.float32) * cfg.head_dim ** -0.5
        return jax.nn.softmax(jnp.where(attention_mask[:, None], logits, jnp.finfo(jnp.float32).min), axis=-1)

    maps = jax.vmap(layer_map)(inputs, module.layer_params())  # [L, B, N, T, T]
    sink = sink_index(mask)
    column = jnp.take_along_axis(maps, sink[None, :, None, None, None], axis=-1)[..., 0]
    queries = mask & (jnp.arange(mask.shape[-1])[None, :] != sink[:, None])
    weights = queries.astype(jnp.float32) / jnp.maximum(queries.sum(-1, keepdims=True), 1)
    return jnp.moveaxis(jnp.einsum("lbnt,bt->lbn", column, weights), 0, 1)


def step_function(cfg, optimizer, variant: str, surgery_lambda: float):
    """A jitted full fine-tuning step `(params, opt_state, batch, harmful, safe) -> (params, opt_state, loss)`."""
    alpha = {VARIANTS[1]: sink_attention, VARIANTS[2]: full_map_sink_attention}.get(variant)

    def loss_fn(params, batch, harmful, safe):
        module = module_from_arrays(cfg, params, jnp.float32)
        loss = response_cross_entropy(module(batch.ids, batch.mask), batch.ids, batch.response)
        if alpha is not None:
            divergence = alpha(module, harmful.ids, harmful.mask).mean(0) - alpha(module, safe.ids, safe.mask).mean(0)
            loss = loss + surgery_lambda * surgery_penalty(divergence)
        return loss

    @jax.jit
    def step(params, opt_state, batch, harmful, safe):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, harmful, safe)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def seconds_of_call(step, arguments) -> float:
    """Wall time of one call of `step`, until its results are ready."""
    started = time.perf_counter()
    jax.block_until_ready(step(*arguments))
    return time.perf_counter() - started


def random_batch(rng, size: int, length: int, vocab: int) -> Batch:
    """Random tokens `[size, length]`, all real, the second half marked as response."""
    ids = rng.integers(3, vocab, (size, length)).astype(np.int32)
    response = np.zeros((size, length), bool)
    response[:, length // 2:] = True
    return Batch(ids, np.ones((size, length), bool), response)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="local model directory or .gguf; default: embedded SmolLM2")
    parser.add_argument("--batch", type=int, default=4, help="task examples per step")
    parser.add_argument("--pairs", type=int, default=2, help="(harmful, safe) pairs per step")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--surgery_lambda", type=float, default=300.0)
    args = parser.parse_args()
    model = jaxheads.load(args.model)
    cfg = model.config
    rng = np.random.default_rng(0)
    batch = random_batch(rng, args.batch, args.length, cfg.vocab_size)
    harmful, safe = (random_batch(rng, args.pairs, args.length, cfg.vocab_size) for _ in range(2))
    params = {name: jnp.asarray(getattr(model.module, name)[...], jnp.float32) for name in param_shapes(cfg)}
    optimizer = make_optimizer(TrainConfig(steps=100, learning_rate=1e-5, warmup_steps=0))
    opt_state = optimizer.init(params)
    print(f"machine: {machine()}")
    print(f"model: {model.name} (L={cfg.num_layers}, N={cfg.num_heads}); full fine-tuning, AdamW; task batch "
          f"{args.batch} x {args.length} tokens; Surgery pairs {args.pairs} harmful + {args.pairs} safe x "
          f"{args.length} tokens; {args.repeats} interleaved repeats")
    column = np.asarray(jax.jit(sink_attention)(model.module, harmful.ids, harmful.mask))
    full = np.asarray(jax.jit(full_map_sink_attention)(model.module, harmful.ids, harmful.mask))
    print(f"sink column vs full maps: max |alpha difference| = {np.abs(column - full).max():.2e}")
    arguments = (params, opt_state, batch, harmful, safe)
    compiled = {variant: step_function(cfg, optimizer, variant, args.surgery_lambda).lower(*arguments).compile()
                for variant in VARIANTS}
    times = {variant: [] for variant in VARIANTS}
    for variant in VARIANTS:  # warm-up
        jax.block_until_ready(compiled[variant](*arguments))
    for _ in range(args.repeats):  # interleaved, so that load changes on a shared machine hit every variant
        for variant in VARIANTS:
            times[variant].append(seconds_of_call(compiled[variant], arguments))
    print(f"{'step':32s} {'best s':>8s} {'median s':>9s} {'temporaries MiB':>16s} {'total MiB':>10s}")
    for variant in VARIANTS:
        memory = compiled[variant].memory_analysis()
        total = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                 - memory.alias_size_in_bytes)
        print(f"{variant:32s} {min(times[variant]):8.3f} {np.median(times[variant]):9.3f} "
              f"{memory.temp_size_in_bytes / 2**20:16.1f} {total / 2**20:10.1f}")


if __name__ == "__main__":
    main()
