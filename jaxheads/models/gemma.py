"""Gemma decoders in Flax NNX: Gemma (1), Gemma 2 and Gemma 3 (text).

They share the Llama family's layout (heads as an explicit axis, layers stacked on a leading L axis), its
attention core with the per-head interventions of docs/methods.md §1, its KV cache and its layer loop. What differs:
RMSNorm with a `(1 + w)` weight applied in float32, embeddings scaled by √D, a GeGLU MLP, attention scaled by
`query_pre_attn_scalar ** -0.5`; Gemma 2/3 add norms after attention and MLP, attention and final-logit
soft-capping and sliding-window (local) layers among global ones; Gemma 3 adds QK-norm and a RoPE base of its
own for the local layers. Which layers are local is data (a `[L]` bool array scanned with the parameters), so
the decoder is still one `lax.scan` or a loop from a traced start layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.attention import NO_WINDOW, AttentionKernel, AttentionMask, soft_cap
from jaxheads.interventions import Interventions
from jaxheads.models.config import ModelConfig
from jaxheads.models.llama import (
    DECODER_WEIGHT_MAP,
    Llama,
    apply_rope,
    attend,
    decoder_shapes,
    rope_tables,
    scale_queries,
)

# Hugging Face parameter name -> (jaxheads parameter, layout change), as `llama.HF_WEIGHT_MAP`. Gemma 1's
# `post_attention_layernorm` is the norm before the MLP; Gemma 2/3's normalises the attention output.
GEMMA_WEIGHT_MAP = {
    **DECODER_WEIGHT_MAP,
    "model.layers.{i}.post_attention_layernorm.weight": ("mlp_norm", "none"),  # [D]
}
GEMMA2_WEIGHT_MAP = {
    **DECODER_WEIGHT_MAP,
    "model.layers.{i}.post_attention_layernorm.weight": ("post_attn_norm", "none"),  # [D]
    "model.layers.{i}.pre_feedforward_layernorm.weight": ("mlp_norm", "none"),  # [D]
    "model.layers.{i}.post_feedforward_layernorm.weight": ("post_mlp_norm", "none"),  # [D]
    "model.layers.{i}.self_attn.q_norm.weight": ("q_norm", "none"),  # [d] (Gemma 3)
    "model.layers.{i}.self_attn.k_norm.weight": ("k_norm", "none"),  # [d] (Gemma 3)
}


def weight_map(cfg: ModelConfig) -> dict[str, tuple[str, str]]:
    """The Hugging Face -> jaxheads name map of this Gemma version."""
    return GEMMA2_WEIGHT_MAP if cfg.sandwich_norms else GEMMA_WEIGHT_MAP


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every parameter of a Gemma config: the shared ones plus Gemma 2/3's post-sublayer norms."""
    shapes = decoder_shapes(cfg)
    if cfg.sandwich_norms:
        shapes.update(post_attn_norm=(cfg.num_layers, cfg.hidden_size), post_mlp_norm=(cfg.num_layers, cfg.hidden_size))
    return shapes


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Gemma's RMSNorm: normalised and multiplied by `(1 + weight)` in float32, then cast to x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def local_attention_mask(mask: jax.Array, window: int) -> jax.Array:
    """Restricts a causal mask `[B, T, S]` to keys less than `window` slots before each query.

    Every real query attends its own slot, which is the last slot its row allows, so the query's slot is read
    off the mask (the same mask serves whole prompts and cached steps; padding queries' rows are never read).
    """
    key_index = jnp.arange(mask.shape[-1])
    query_index = jnp.max(jnp.where(mask, key_index, -1), axis=-1, keepdims=True)
    return mask & (query_index - key_index < window)


def decoder_layer(cfg: ModelConfig, p: dict, h: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: AttentionMask | jax.Array, heads: Interventions | None,
                  cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | int = 0,
                  sink_index: jax.Array | None = None, kernel: AttentionKernel = AttentionKernel(),
                  record: str | None = None):
    """One Gemma decoder layer on `h: [B, T, D]`, with this layer's parameters `p`, RoPE tables `[B, T, d]`
    and mask (already the local or global one); arguments and result as `llama.decoder_layer`."""
    eps = cfg.rms_norm_eps
    x = rms_norm(h, p["attn_norm"], eps)
    q = jnp.einsum("btD,Dnd->btnd", x, p["q"])
    k = jnp.einsum("btD,Dkd->btkd", x, p["k"])
    v = jnp.einsum("btD,Dkd->btkd", x, p["v"])
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], eps), rms_norm(k, p["k_norm"], eps)
    q = scale_queries(q, heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, cache, sink = attend(q, k, v, mask, heads, cache, cache_index, sink_index, cfg.attention_scale,
                              cfg.attn_logit_softcap, kernel, record)
    attn = jnp.einsum("btnd,ndD->btD", out, p["o"])
    if cfg.sandwich_norms:
        attn = rms_norm(attn, p["post_attn_norm"], eps)
    h = h + attn
    x = rms_norm(h, p["mlp_norm"], eps)
    gate = jnp.einsum("btD,DF->btF", x, p["gate"])
    up = jnp.einsum("btD,DF->btF", x, p["up"])
    act = jax.nn.gelu(gate, approximate=cfg.hidden_act == "gelu_pytorch_tanh")
    mlp = jnp.einsum("btF,FD->btD", act * up, p["down"])
    if cfg.sandwich_norms:
        mlp = rms_norm(mlp, p["post_mlp_norm"], eps)
    return h + mlp, cache, sink


class Gemma(Llama):
    """A Gemma (1, 2 or 3 text) causal LM with the Llama module's interface (`embed_tokens`, `run_layers`,
    `final_hidden`, `logits`, `__call__`); every parameter is an `nnx.Param` named as in `param_shapes`."""

    NORM_INIT = 0.0  # (1 + w) norms: w = 0 is the identity

    @staticmethod
    def shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of a Gemma module for `config`."""
        return param_shapes(config)

    @staticmethod
    def hf_weight_map(config: ModelConfig) -> dict[str, tuple[str, str]]:
        """Hugging Face parameter name -> (jaxheads parameter, layout change) for this Gemma version."""
        return weight_map(config)

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings `[B, T, D]`, times √D in the embedding's dtype (as `transformers` rounds it)."""
        embed = self.embed[...]
        scale = jnp.asarray(np.float32(self.config.hidden_size ** 0.5)).astype(embed.dtype)
        return jnp.take(embed, input_ids, axis=0) * scale

    def scanned_params(self) -> dict[str, jax.Array]:
        """`layer_params`, plus the `[L]` bool local-layer flags when the config has local layers."""
        params = self.layer_params()
        if self.config.local_layers:
            params["local"] = jnp.asarray(self.config.local_layers)
        return params

    def layer_function(self, positions: jax.Array, mask: AttentionMask | jax.Array, dtype,
                       cache_index: jax.Array | int = 0, sink_index: jax.Array | None = None,
                       record: str | None = None):
        """As `Llama.layer_function`; `mask` is the global (causal) one, and a layer whose `p["local"]` is True
        narrows it to the local window and uses the local RoPE tables (chosen as data inside the layer scan)."""
        cfg, kernel = self.config, self.attention_kernel
        cos, sin = rope_tables(cfg, positions, dtype)
        if cfg.local_layers:
            local_cos, local_sin = rope_tables(cfg.local_rope(), positions, dtype)
            if not isinstance(mask, AttentionMask):
                local_mask = local_attention_mask(mask, cfg.local_window)

        def layer(p, h, layer_heads, layer_cache):
            if cfg.local_layers:
                local = p["local"]
                rope = jnp.where(local, local_cos, cos), jnp.where(local, local_sin, sin)
                if isinstance(mask, AttentionMask):
                    global_window = NO_WINDOW if mask.window is None else mask.window
                    layer_mask = mask.with_window(jnp.where(local, cfg.local_window, global_window))
                else:
                    layer_mask = jnp.where(local, local_mask, mask)
            else:
                rope, layer_mask = (cos, sin), mask
            return decoder_layer(cfg, p, h, *rope, layer_mask, layer_heads, layer_cache, cache_index, sink_index,
                                 kernel, record)

        return layer

    def final_hidden(self, h: jax.Array) -> jax.Array:
        """The final-norm output (input of the LM head) `[..., D]`."""
        return rms_norm(h, self.final_norm[...], self.config.rms_norm_eps)

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits `[..., V]` from final hidden states, soft-capped when the config says so (Gemma 2)."""
        return soft_cap(super().logits(h), self.config.final_logit_softcap)
