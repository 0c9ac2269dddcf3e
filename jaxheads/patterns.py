"""Attention patterns and per-head outputs of chosen layers, read off the model's own layer code.

One pass of the layer loop keeps every layer's input (`[L, B, T, D]`, linear in T, with the interventions of
earlier layers applied); each requested layer is then run again from its input by the same layer function as
the forward pass (`Decoder.layer_function`, Gemma's local/global choice included) with `record` asking it to return
its attention probabilities `[B, N, T, T]` (the dense kernel: this is the one T² analysis) or its per-head outputs
`[B, T, N, d]` (the input of o_proj; any kernel, so linear in T). Requested layers run one after another.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxheads.errors import JaxheadsError
from jaxheads.interventions import Interventions
from jaxheads.loading import Model
from jaxheads.models.decoder import positions_from_mask, prompt_attention_mask
from jaxheads.placement import split_on_mesh
from jaxheads.sharding import place_rows


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "record"))
def _recorded(graphdef, state, input_ids, attention_mask, heads, layers: tuple[int, ...], record: str) -> jax.Array:
    """What `record` asks each of `layers` for, stacked `[L', ...]`."""
    module = nnx.merge(graphdef, state)
    positions = positions_from_mask(attention_mask)
    mask = prompt_attention_mask(module.config, attention_mask)
    inputs = module.run_layers(module.embed_tokens(input_ids), positions, mask, heads, collect_inputs=True).inputs
    layer = module.layer_function(positions, mask, inputs.dtype, record=record)
    chosen = jnp.asarray(layers, jnp.int32)
    params = jax.tree.map(lambda a: a[chosen], module.scanned_params())
    # interventions [L, N] or per example [B, L, N] -> [L', N] / [L', B, N], as the layer loop slices them
    layer_heads = None if heads is None else jax.tree.map(lambda a: jnp.moveaxis(jnp.asarray(a), -2, 0)[chosen],
                                                          heads)
    return jax.lax.map(lambda xs: layer(xs[0], xs[1], xs[2], None)[2], (params, inputs[chosen], layer_heads))


def _run(model: Model, input_ids, attention_mask, layers, interventions, record, mesh: Mesh | None) -> jax.Array:
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise JaxheadsError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    num_layers = model.config.num_layers
    layers = tuple(range(num_layers)) if layers is None else tuple(int(layer) for layer in layers)
    if not layers or any(not 0 <= layer < num_layers for layer in layers):
        raise JaxheadsError(f"layers must be a non-empty list of layers in 0..{num_layers - 1}, got {list(layers)}")
    graphdef, state = nnx.split(model.module)
    if mesh is not None:
        graphdef, state = split_on_mesh(model.module, mesh)
        input_ids, mask = place_rows((input_ids, mask), mesh)
    return _recorded(graphdef, state, input_ids, mask, interventions, layers, record)


def attention_patterns(model: Model, input_ids, attention_mask=None, layers: Sequence[int] | None = None,
                       interventions: Interventions | None = None, mesh: Mesh | None = None) -> jax.Array:
    """float32 attention probabilities `[B, L', N, T, T]` (query t over key slot s) of `layers` (default: all,
    in the given order) for left-padded `input_ids: [B, T]`, after masking, sliding windows and soft-capping, with
    `interventions` (`[L, N]` or `[B, L, N]`) applied: a query scale changes its own head's pattern, and every
    intervention changes the layers after it. Rows of padding queries (no key to attend) are zero. On a `mesh`
    rows are split over `data` where they divide and the weights laid out by the model's layout."""
    patterns = _run(model, input_ids, attention_mask, layers, interventions, "probs", mesh)  # [L', B, N, T, T]
    return jnp.moveaxis(patterns, 0, 1)


def head_outputs(model: Model, input_ids, attention_mask=None, layers: Sequence[int] | None = None,
                 interventions: Interventions | None = None, mesh: Mesh | None = None) -> jax.Array:
    """Per-head attention outputs `[B, L', T, N, d]` of `layers` (default: all): the input of o_proj split into
    heads, after `out_scale` and `mean_mix`, in the model's dtype. Runs the model's attention kernel (the blocked
    one on long prompts), so memory stays linear in T. Rows of padding queries are zero."""
    outputs = _run(model, input_ids, attention_mask, layers, interventions, "heads", mesh)  # [L', B, T, N, d]
    return jnp.moveaxis(outputs, 0, 1)
