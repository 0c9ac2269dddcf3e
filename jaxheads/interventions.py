"""Per-head interventions as data (docs/methods.md §1–2).

An `Interventions` holds arrays of shape `[..., L, N]`; leading axes are a batch of interventions that
`jax.vmap` (or a sharded batch axis) runs over, or, for generation, one intervention per prompt.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.errors import JaxheadsError

ABLATION_KINDS = ("ua", "sc", "mean")
DEFAULT_EPSILON = 1e-5

Head = tuple[int, int]


class Interventions(NamedTuple):
    """Per-head scales, each `[..., L, N]` (a pytree, so `vmap` and sharding see it as data).

    q_scale: multiplies head n's query after q_proj and any query norm, before RoPE (1 = untouched).
    out_scale: multiplies head n's attention output before o_proj (1 = untouched).
    mean_mix: 1 replaces head n's output by the mean over the layer's heads (0 = untouched); None = never.
    """

    q_scale: jax.Array
    out_scale: jax.Array
    mean_mix: jax.Array | None = None


def identity(num_layers: int, num_heads: int, batch_shape: tuple[int, ...] = (), with_mean: bool = False) -> Interventions:
    """Interventions that change nothing, shape `[*batch_shape, L, N]`."""
    shape = (*batch_shape, num_layers, num_heads)
    ones = jnp.ones(shape, jnp.float32)
    return Interventions(ones, ones, jnp.zeros(shape, jnp.float32) if with_mean else None)


def check_heads(heads: Sequence[Head], num_layers: int, num_heads: int) -> list[Head]:
    """Validates (layer, head) pairs against the model shape; returns them as a list of int tuples."""
    checked = []
    for head in heads:
        if len(head) != 2:
            raise JaxheadsError(f"a head is a (layer, head) pair, got {head!r}")
        layer, index = int(head[0]), int(head[1])
        if not (0 <= layer < num_layers and 0 <= index < num_heads):
            raise JaxheadsError(
                f"head ({layer}, {index}) is out of range: the model has layers 0..{num_layers - 1} "
                f"and heads 0..{num_heads - 1}"
            )
        checked.append((layer, index))
    return checked


def parse_heads(text: str, flag: str = "--heads") -> list[Head]:
    """'2:3,10:0' -> [(2, 3), (10, 0)]; a bad item is an error naming the `flag` it came from."""
    heads = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            layer, head = item.split(":")
            heads.append((int(layer), int(head)))
        except ValueError as error:
            raise JaxheadsError(f"{flag} wants layer:head pairs like 2:3,10:0; cannot read {item!r}") from error
    return heads


def ablation_mask(heads: Sequence[Head], num_layers: int, num_heads: int) -> np.ndarray:
    """Boolean `[L, N]` mask with True at the given heads."""
    mask = np.zeros((num_layers, num_heads), bool)
    for layer, index in check_heads(heads, num_layers, num_heads):
        mask[layer, index] = True
    return mask


def from_mask(mask: jax.Array, kind: str = "ua", epsilon: float = DEFAULT_EPSILON) -> Interventions:
    """Interventions that ablate the heads where `mask` (`[..., L, N]`, bool) is True, by `kind`.

    ua: q_scale = ε (attention becomes ~uniform); sc: out_scale = ε; mean: mean_mix = 1.
    """
    if kind not in ABLATION_KINDS:
        raise JaxheadsError(f"unknown ablation kind {kind!r}; choose one of {', '.join(ABLATION_KINDS)}")
    mask = jnp.asarray(mask, bool)
    ones = jnp.ones(mask.shape, jnp.float32)
    scaled = jnp.where(mask, jnp.float32(epsilon), 1.0)
    if kind == "ua":
        return Interventions(scaled, ones)
    if kind == "sc":
        return Interventions(ones, scaled)
    return Interventions(ones, ones, mask.astype(jnp.float32))


def ablate(heads: Sequence[Head], num_layers: int, num_heads: int, kind: str = "ua",
           epsilon: float = DEFAULT_EPSILON) -> Interventions:
    """Interventions `[L, N]` ablating the given (layer, head) pairs together."""
    return from_mask(ablation_mask(heads, num_layers, num_heads), kind, epsilon)


def single_heads(num_layers: int, num_heads: int, kind: str = "ua", epsilon: float = DEFAULT_EPSILON) -> Interventions:
    """A batch `[L*N, L, N]`: entry `l*N + n` ablates head (l, n) alone."""
    eye = jnp.eye(num_layers * num_heads, dtype=bool).reshape(num_layers * num_heads, num_layers, num_heads)
    return from_mask(eye, kind, epsilon)
