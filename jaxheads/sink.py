"""Attention-sink statistics per head and the Surgery regularizer (docs/methods.md §7–8).

Only the attention column onto each sequence's sink (its first real token) is computed, `[L, B, N, T]`,
never the `[T, T]` maps (on long prompts the blocked kernel reads it off its running max and sum). Everything here is a pure, jittable, differentiable function of the module's
parameters and the token ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxheads.models.decoder import Decoder, positions_from_mask, prompt_attention_mask


def sink_index(mask: jax.Array) -> jax.Array:
    """Each row's sink slot `[B]`: its first real token (0 under right padding)."""
    return jnp.argmax(mask.astype(bool), axis=-1).astype(jnp.int32)


def sink_attention(module: Decoder, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """alpha `[B, L, N]` float32: per head, the mean over the real query positions after the sink of their
    attention onto the sink (first real token). `input_ids, mask: [B, T]`, left or right padded."""
    mask = jnp.asarray(mask, bool)
    sink = sink_index(mask)
    positions = positions_from_mask(mask)
    attention_mask = prompt_attention_mask(module.config, mask)
    column = module.run_layers(module.embed_tokens(input_ids), positions, attention_mask, sink_index=sink).sink
    queries = mask & (jnp.arange(mask.shape[-1])[None, :] != sink[:, None])  # [B, T]
    weights = queries.astype(jnp.float32) / jnp.maximum(queries.sum(-1, keepdims=True), 1)
    alpha = jnp.einsum("lbnt,bt->lbn", column.astype(jnp.float32), weights)
    return jnp.moveaxis(alpha, 0, 1)


def sink_divergence(module: Decoder, harmful_ids: jax.Array, harmful_mask: jax.Array, safe_ids: jax.Array,
                    safe_mask: jax.Array) -> jax.Array:
    """d `[L, N]`: batch-mean sink attention on harmful sequences minus that on safe sequences
    (each side `[B, T]`; the two sides may differ in batch size and length)."""
    harmful = sink_attention(module, harmful_ids, harmful_mask).mean(axis=0)
    safe = sink_attention(module, safe_ids, safe_mask).mean(axis=0)
    return harmful - safe


def surgery_penalty(divergence: jax.Array) -> jax.Array:
    """The Surgery regularizer: mean over heads of ReLU(d_h) (zero gradient where every d_h <= 0)."""
    return jnp.mean(jax.nn.relu(divergence))


def positive_heads(divergence: jax.Array) -> jax.Array:
    """The number of heads with d_h > 0."""
    return jnp.sum(divergence > 0)
