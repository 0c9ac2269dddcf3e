"""One forward pass of a loaded model: float32 logits of a batch with interventions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxheads.errors import JaxheadsError
from jaxheads.interventions import Interventions
from jaxheads.loading import Model


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, state, input_ids, attention_mask, heads):
    return nnx.merge(graphdef, state)(input_ids, attention_mask, heads)


def forward(model: Model, input_ids, attention_mask=None, interventions: Interventions | None = None) -> jax.Array:
    """float32 logits `[B, T, V]` for left-padded `input_ids: [B, T]`.

    `interventions`: arrays `[L, N]` (shared by the batch) or `[B, L, N]` (one per example); to run a batch of
    interventions on the same inputs, `jax.vmap` this function over them.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise JaxheadsError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    graphdef, state = nnx.split(model.module)
    return _forward(graphdef, state, input_ids, mask, interventions)
