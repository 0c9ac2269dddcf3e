"""The pieces of a decoder layer: RMSNorm (Llama's and Gemma's `(1 + w)` form), RoPE, grouped-query attention
with the per-head interventions of docs/methods.md §1 (`q_scale` on queries after any query norm, `mean_mix` and
`out_scale` on the per-head outputs before o_proj), and the KV-cache and layer-output types."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxheads.attention import AttentionKernel, AttentionMask, attention
from jaxheads.interventions import Interventions
from jaxheads.models.config import ModelConfig


class KVCache(NamedTuple):
    """Keys and values of every layer, `[L, B, S, K, d]`, for S = prompt + generated positions."""

    k: jax.Array
    v: jax.Array


class LayerOutputs(NamedTuple):
    """What `run_layers` returns: the last hidden state `[B, T, D]`, the updated cache, and on request the
    inputs of every layer `[L, B, T, D]` and the attention onto the sink slot `[L, B, N, T]` (float32)."""

    h: jax.Array
    cache: KVCache | None = None
    inputs: jax.Array | None = None
    sink: jax.Array | None = None


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, plus_one: bool = False) -> jax.Array:
    """RMSNorm computed in float32. Llama's (`plus_one=False`): cast back to x's dtype, then times the weight (as
    `transformers` does); Gemma's: times `(1 + weight)` in float32, then cast."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:
        return (normed * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * normed.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables `[B, T, d]` for integer positions `[B, T]`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(cfg.inv_freq())
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates `[B, T, heads, d]` by the half-split RoPE convention of `transformers` (rotate_half)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _per_head(scale: jax.Array) -> jax.Array:
    """Broadcasts a per-head scale `[N]` or per-example `[B, N]` against `[B, T, N, d]`."""
    if scale.ndim == 1:
        return scale[None, None, :, None]
    return scale[:, None, :, None]


def scale_queries(q: jax.Array, heads: Interventions | None) -> jax.Array:
    """Applies `q_scale` to queries `[B, T, N, d]` (after any query norm, which would otherwise undo it)."""
    if heads is None:
        return q
    return q * _per_head(heads.q_scale).astype(q.dtype)


RECORDS = ("probs", "heads")  # what a layer can return in place of the sink column


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | jax.Array, heads: Interventions | None,
           cache: tuple[jax.Array, jax.Array] | None, cache_index: jax.Array | int, sink_index: jax.Array | None,
           scale: float, softcap: float | None = None, kernel: AttentionKernel = AttentionKernel(),
           record: str | None = None):
    """Grouped-query attention of rotated `q: [B, T, N, d]` over `k, v: [B, T, K, d]`, then `out_scale` and
    `mean_mix` on the per-head output.

    With a `cache` (`k, v: [B, S, K, d]`), this step's keys/values are written at `cache_index` and attention runs
    over all S slots. `mask` describes which slots each query may attend (an `AttentionMask`, or a dense `[B, T, S]`
    bool array); `kernel` picks the dense or the blocked kernel from the key length (`jaxheads.attention`).
    Logits are `scale * q.k` in float32, soft-capped to `softcap * tanh(. / softcap)` when `softcap` is set.
    Returns `(out [B, T, N, d], cache or None, extra)`. `extra` is, with `sink_index: [B]` (each row's sink key
    slot), the float32 attention of every head and query onto that slot `[B, N, T]`; with `record="probs"` the
    float32 attention probabilities `[B, N, T, S]` (dense kernel whatever the length); with `record="heads"` the
    per-head output `out` itself (the input of o_proj); otherwise None.
    """
    if record is not None and record not in RECORDS:
        raise ValueError(f"record must be one of {RECORDS}, got {record!r}")
    if cache is not None:
        k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, axis=1)
        cache, k, v = (k_cache, v_cache), k_cache, v_cache
    out, sink, probs = attention(q, k, v, mask, scale, softcap, sink_index, kernel, with_probs=record == "probs")
    out = intervene_on_outputs(out, heads)
    return out, cache, {"probs": probs, "heads": out}.get(record, sink)


def intervene_on_outputs(out: jax.Array, heads: Interventions | None) -> jax.Array:
    """`mean_mix` then `out_scale` on per-head attention outputs `[B, T, N, d]` (the input of o_proj)."""
    if heads is not None:
        if heads.mean_mix is not None:
            mix = _per_head(heads.mean_mix).astype(out.dtype)
            out = out * (1 - mix) + out.mean(axis=2, keepdims=True) * mix
        out = out * _per_head(heads.out_scale).astype(out.dtype)
    return out
