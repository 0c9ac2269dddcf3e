"""Low-rank adapters (LoRA) on the stacked `[L, ...]` projection weights.

For a target weight W `[L, *in, *out]` the adapter is A `[L, in, r]` and B `[L, r, out]` (in/out flattened), and
the effective weight is `W + (alpha / r) · A @ B` reshaped to W's layout. B starts at zero, so training starts
from the base model exactly; `merge` folds the adapters into the weights for export.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxheads.errors import JaxheadsError

# Target module -> the number of input axes after L in the jaxheads layout (q/k/v: [L, D, heads, d] has one,
# o: [L, N, d, D] has two, the MLP weights [L, in, out] one).
TARGET_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters, their rank r and scale numerator alpha (scale = alpha / r)."""

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")

    def __post_init__(self):
        if self.rank < 1:
            raise JaxheadsError(f"LoRA rank must be at least 1, got {self.rank}")
        unknown = [name for name in self.targets if name not in TARGET_INPUT_AXES]
        if unknown or not self.targets:
            raise JaxheadsError(f"LoRA targets must be a non-empty subset of {', '.join(TARGET_INPUT_AXES)}, "
                                f"got {', '.join(self.targets) or 'none'}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def fan_in_out(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    """(in, out) sizes of a stacked weight `[L, *in, *out]`."""
    split = 1 + TARGET_INPUT_AXES[name]
    return math.prod(shape[1:split]), math.prod(shape[split:])


def init_adapters(lora: LoraConfig, weights: dict[str, jax.Array], key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Adapters `{target: {"a": [L, in, r], "b": [L, r, out]}}` in float32: A ~ N(0, 1/in), B = 0."""
    adapters = {}
    for name, name_key in zip(lora.targets, jax.random.split(key, len(lora.targets))):
        shape = weights[name].shape
        fan_in, fan_out = fan_in_out(shape, name)
        adapters[name] = {
            "a": jax.random.normal(name_key, (shape[0], fan_in, lora.rank), jnp.float32) / math.sqrt(fan_in),
            "b": jnp.zeros((shape[0], lora.rank, fan_out), jnp.float32),
        }
    return adapters


def merge(lora: LoraConfig, weights: dict[str, jax.Array],
          adapters: dict[str, dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """The weights with every adapter added: `W + scale · A @ B` in W's shape (other weights unchanged)."""
    merged = dict(weights)
    for name, adapter in adapters.items():
        weight = weights[name]
        delta = jnp.einsum("lir,lro->lio", adapter["a"], adapter["b"]) * lora.scale
        merged[name] = (weight.astype(jnp.float32) + delta.reshape(weight.shape)).astype(weight.dtype)
    return merged
