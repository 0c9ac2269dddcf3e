"""Llama-family decoder in Flax NNX: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3 (QK-norm), SmolLM2, TinyLlama.

Heads are an explicit axis of every attention weight (`q: [L, D, N, d]`, `o: [L, N, d, D]`), so per-head
interventions (docs/methods.md §1) act on `[B, T, N, d]` arrays before `o_proj`, and all L layers are stacked on a
leading axis so the decoder runs as one `lax.scan` (or a loop from any layer on, for prefix-reusing scans).
Masks are described compactly (`jaxheads.attention.AttentionMask`) and attention runs the dense or the blocked
kernel by key length (the module's `attention_kernel`), so long prompts need memory linear in their length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from jaxheads.attention import AttentionKernel, AttentionMask, attention, prompt_mask
from jaxheads.interventions import Interventions
from jaxheads.models.config import ModelConfig
from jaxheads.sharding import MODEL

# Hugging Face parameter name -> (jaxheads parameter, layout change). `{i}` is the layer index; layer
# parameters are stacked on a leading L axis. Shapes: D hidden, N/K query/KV heads, d head size, F MLP size.
# DECODER_WEIGHT_MAP holds the weights every supported family names alike (the twin of `decoder_shapes`).
DECODER_WEIGHT_MAP = {
    "model.embed_tokens.weight": ("embed", "none"),  # [V, D]
    "model.norm.weight": ("final_norm", "none"),  # [D]
    "lm_head.weight": ("lm_head", "none"),  # [V, D]
    "model.layers.{i}.input_layernorm.weight": ("attn_norm", "none"),  # [D]
    "model.layers.{i}.self_attn.q_proj.weight": ("q", "in_heads"),  # [N*d, D] -> [D, N, d]
    "model.layers.{i}.self_attn.k_proj.weight": ("k", "in_heads"),  # [K*d, D] -> [D, K, d]
    "model.layers.{i}.self_attn.v_proj.weight": ("v", "in_heads"),  # [K*d, D] -> [D, K, d]
    "model.layers.{i}.self_attn.o_proj.weight": ("o", "out_heads"),  # [D, N*d] -> [N, d, D]
    "model.layers.{i}.mlp.gate_proj.weight": ("gate", "transpose"),  # [F, D] -> [D, F]
    "model.layers.{i}.mlp.up_proj.weight": ("up", "transpose"),  # [F, D] -> [D, F]
    "model.layers.{i}.mlp.down_proj.weight": ("down", "transpose"),  # [D, F] -> [F, D]
}
HF_WEIGHT_MAP = {
    **DECODER_WEIGHT_MAP,
    "model.layers.{i}.self_attn.q_proj.bias": ("q_bias", "heads"),  # [N*d] -> [N, d]
    "model.layers.{i}.self_attn.k_proj.bias": ("k_bias", "heads"),  # [K*d] -> [K, d]
    "model.layers.{i}.self_attn.v_proj.bias": ("v_bias", "heads"),  # [K*d] -> [K, d]
    "model.layers.{i}.self_attn.o_proj.bias": ("o_bias", "none"),  # [D]
    "model.layers.{i}.self_attn.q_norm.weight": ("q_norm", "none"),  # [d] (Qwen3)
    "model.layers.{i}.self_attn.k_norm.weight": ("k_norm", "none"),  # [d] (Qwen3)
    "model.layers.{i}.post_attention_layernorm.weight": ("mlp_norm", "none"),  # [D]
    "model.layers.{i}.mlp.gate_proj.bias": ("gate_bias", "none"),
    "model.layers.{i}.mlp.up_proj.bias": ("up_bias", "none"),
    "model.layers.{i}.mlp.down_proj.bias": ("down_bias", "none"),
}


def decoder_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters every supported family has (layer parameters with their leading L): embeddings,
    norms, per-head attention weights, gated MLP, an untied LM head and QK-norm weights when the config has them."""
    L, D, N, K, d, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)
    shapes = {
        "embed": (V, D), "final_norm": (D,),
        "attn_norm": (L, D), "q": (L, D, N, d), "k": (L, D, K, d), "v": (L, D, K, d), "o": (L, N, d, D),
        "mlp_norm": (L, D), "gate": (L, D, F), "up": (L, D, F), "down": (L, F, D),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (V, D)
    if cfg.qk_norm:
        shapes.update(q_norm=(L, d), k_norm=(L, d))
    return shapes


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every parameter of a Llama-family config: the shared ones plus the biases it has."""
    L, D, N, K, d, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size)
    shapes = decoder_shapes(cfg)
    if cfg.qkv_bias:
        shapes.update(q_bias=(L, N, d), k_bias=(L, K, d), v_bias=(L, K, d))
    if cfg.o_bias:
        shapes["o_bias"] = (L, D)
    if cfg.mlp_bias:
        shapes.update(gate_bias=(L, F), up_bias=(L, F), down_bias=(L, D))
    return shapes


GLOBAL_PARAMS = ("embed", "final_norm", "lm_head")

# Tensor parallelism: parameter -> the axis of its shape (as in `param_shapes`) split over the mesh's `model`
# axis: query heads N of q, o and q_bias, KV heads K of k, v and their biases, MLP width F of gate, up, down.
# Every other parameter (embeddings, LM head, norms, output biases) is replicated.
MODEL_PARALLEL_AXES = {"q": 2, "q_bias": 1, "o": 1, "k": 2, "v": 2, "k_bias": 1, "v_bias": 1,
                       "gate": 2, "up": 2, "down": 1, "gate_bias": 1, "up_bias": 1}


def partition_specs(shapes: dict[str, tuple[int, ...]], model_axis_size: int) -> dict[str, PartitionSpec]:
    """A `PartitionSpec` for every parameter of `shapes`: its `MODEL_PARALLEL_AXES` axis split over `model`
    when that axis divides by `model_axis_size` (e.g. K = 2 KV heads stay whole on a model axis of 4),
    everything else replicated."""
    specs = {}
    for name, shape in shapes.items():
        axis = MODEL_PARALLEL_AXES.get(name)
        if axis is None or model_axis_size == 1 or shape[axis] % model_axis_size:
            specs[name] = PartitionSpec()
        else:
            specs[name] = PartitionSpec(*([MODEL if i == axis else None for i in range(len(shape))]))
    return specs


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


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, cast back to x's dtype before the weight (as `transformers` does)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
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


def make_mask(query_index: jax.Array, key_valid: jax.Array, sliding_window: int | None) -> jax.Array:
    """Boolean `[B, T, S]`: query at sequence index `query_index[t]` may attend key slot s.

    Causal (s <= index), key slot valid (`key_valid: [B, S]`, False for padding and unwritten cache), and,
    with a sliding window W, index - s < W. (The dense form of `AttentionMask(key_valid, query_index, W)`.)
    """
    return AttentionMask(key_valid, query_index, sliding_window).dense()


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


def decoder_layer(cfg: ModelConfig, p: dict, h: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: AttentionMask | jax.Array, heads: Interventions | None,
                  cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | int = 0,
                  sink_index: jax.Array | None = None, kernel: AttentionKernel = AttentionKernel(),
                  record: str | None = None):
    """One decoder layer on `h: [B, T, D]` with this layer's parameters `p` (no leading L axis).

    `heads` holds this layer's intervention scales (`[N]` or `[B, N]` each); `mask`, `cache`, `cache_index`,
    `sink_index`, `kernel` and `record` are as in `attend`.
    Returns `(h, cache, extra)`: the new hidden state, the updated cache (or None), and `attend`'s extra (the
    sink column, or the recorded probabilities or head outputs, or None).
    """
    x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btD,Dnd->btnd", x, p["q"])
    k = jnp.einsum("btD,Dkd->btkd", x, p["k"])
    v = jnp.einsum("btD,Dkd->btkd", x, p["v"])
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = scale_queries(q, heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, cache, sink = attend(q, k, v, mask, heads, cache, cache_index, sink_index, cfg.attention_scale,
                              kernel=kernel, record=record)
    attn = jnp.einsum("btnd,ndD->btD", out, p["o"])
    if cfg.o_bias:
        attn = attn + p["o_bias"]
    h = h + attn
    x = rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btD,DF->btF", x, p["gate"])
    up = jnp.einsum("btD,DF->btF", x, p["up"])
    if cfg.mlp_bias:
        gate, up = gate + p["gate_bias"], up + p["up_bias"]
    mlp = jnp.einsum("btF,FD->btD", jax.nn.silu(gate) * up, p["down"])
    if cfg.mlp_bias:
        mlp = mlp + p["down_bias"]
    return h + mlp, cache, sink


def _layer_axis_first(heads: Interventions | None) -> Interventions | None:
    """Moves the L axis of `[L, N]` or per-example `[B, L, N]` interventions to the front for the layer loop."""
    if heads is None:
        return None
    return jax.tree.map(lambda a: jnp.moveaxis(jnp.asarray(a), -2, 0), heads)


def run_stacked_layers(layer, params: dict[str, jax.Array], h: jax.Array, heads: Interventions | None,
                       num_layers: int, start: int | jax.Array = 0, cache: KVCache | None = None,
                       collect_inputs: bool = False, with_sink: bool = False) -> LayerOutputs:
    """Runs `layer(p, h, heads, cache) -> (h, cache, sink)` over layers `start..L-1` of the stacked `[L, ...]`
    `params` (and `[L, N]` / `[B, L, N]` `heads`, and the `[L, ...]` cache).

    A static `start` of 0 runs one `lax.scan` and can return the updated cache, every layer's input
    (`collect_inputs`) and the stacked sink columns (`with_sink`); a traced `start` runs a `fori_loop`.
    """
    heads = _layer_axis_first(heads)

    def body(carry, xs):
        p, layer_heads, layer_cache = xs
        h_out, new_cache, sink = layer(p, carry, layer_heads, layer_cache)
        return h_out, (new_cache, carry if collect_inputs else None, sink)

    if isinstance(start, int) and start == 0:
        layer_cache = None if cache is None else (cache.k, cache.v)
        h, (new_cache, inputs, sink) = jax.lax.scan(body, h, (params, heads, layer_cache))
        return LayerOutputs(h, None if cache is None else KVCache(*new_cache), inputs, sink)
    if cache is not None or collect_inputs or with_sink:
        raise ValueError("a cache, collected inputs or sink attention need start=0")

    def loop_body(index, h):
        take = lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False)
        return body(h, (jax.tree.map(take, params), jax.tree.map(take, heads), None))[0]

    return LayerOutputs(jax.lax.fori_loop(start, num_layers, loop_body, h))


class Llama(nnx.Module):
    """A Llama-family causal LM; every parameter is an `nnx.Param` named as in `param_shapes`."""

    NORM_INIT = 1.0  # norm weights start as the identity (Gemma's (1 + w) norms override this with 0)

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)
        for name, shape in self.shapes(self.config).items():
            if name.endswith("norm"):
                value = jnp.full(shape, self.NORM_INIT, dtype)
            else:
                value = init(rngs.params(), shape, dtype)
            setattr(self, name, nnx.Param(value))
        # static (part of the graph definition): assigning another kernel makes jitted functions recompile
        self.attention_kernel = AttentionKernel()

    @staticmethod
    def shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of a module of this class for `config`."""
        return param_shapes(config)

    @staticmethod
    def hf_weight_map(config: ModelConfig) -> dict[str, tuple[str, str]]:
        """Hugging Face parameter name -> (jaxheads parameter, layout change) for `config`."""
        return HF_WEIGHT_MAP

    @classmethod
    def partition_specs(cls, config: ModelConfig, model_axis_size: int) -> dict[str, PartitionSpec]:
        """Tensor-parallel `PartitionSpec`s of this class's parameters for a `model` mesh axis of that size."""
        return partition_specs(cls.shapes(config), model_axis_size)

    def layer_params(self) -> dict[str, jax.Array]:
        """The stacked `[L, ...]` decoder-layer parameters as a dict of arrays."""
        return {name: getattr(self, name)[...] for name in self.shapes(self.config) if name not in GLOBAL_PARAMS}

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings `[B, T, D]`."""
        return jnp.take(self.embed[...], input_ids, axis=0)

    def scanned_params(self) -> dict[str, jax.Array]:
        """The per-layer arrays the layer loop scans: `layer_params` (Gemma adds its local-layer flags)."""
        return self.layer_params()

    def layer_function(self, positions: jax.Array, mask: AttentionMask | jax.Array, dtype,
                       cache_index: jax.Array | int = 0, sink_index: jax.Array | None = None,
                       record: str | None = None):
        """`layer(p, h, heads, cache) -> (h, cache, extra)`: one decoder layer with that layer's slice `p` of
        `scanned_params`, for tokens at RoPE `positions: [B, T]` under `mask` (activations in `dtype`); `extra`
        as in `attend` (the sink column, or what `record` asks for)."""
        cfg, kernel = self.config, self.attention_kernel
        cos, sin = rope_tables(cfg, positions, dtype)

        def layer(p, h, layer_heads, layer_cache):
            return decoder_layer(cfg, p, h, cos, sin, mask, layer_heads, layer_cache, cache_index, sink_index, kernel,
                                 record)

        return layer

    def run_layers(self, h: jax.Array, positions: jax.Array, mask: AttentionMask | jax.Array,
                   heads: Interventions | None = None, start: int | jax.Array = 0, cache: KVCache | None = None,
                   cache_index: jax.Array | int = 0, collect_inputs: bool = False,
                   sink_index: jax.Array | None = None) -> LayerOutputs:
        """Runs decoder layers `start..L-1` on `h: [B, T, D]`.

        `mask` is an `AttentionMask` (e.g. `prompt_attention_mask`), or a dense `[B, T, S]` bool array, which
        always runs the dense kernel. `start` may be a traced scalar (then the layers run in a `fori_loop`, for
        scans that reuse a prefix). With a static `start` of 0 this can also return the inputs of every layer
        (`collect_inputs`) and the attention onto each row's sink slot (`sink_index: [B]`), stacked over layers.
        """
        layer = self.layer_function(positions, mask, h.dtype, cache_index, sink_index)
        return run_stacked_layers(layer, self.scanned_params(), h, heads, self.config.num_layers, start, cache,
                                  collect_inputs, sink_index is not None)

    def final_hidden(self, h: jax.Array) -> jax.Array:
        """The final-norm output (input of the LM head) `[..., D]`."""
        return rms_norm(h, self.final_norm[...], self.config.rms_norm_eps)

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits `[..., V]` from final hidden states (after the final norm)."""
        head = self.embed[...] if self.config.tie_word_embeddings else self.lm_head[...]
        return jnp.einsum("...D,VD->...V", h, head).astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 heads: Interventions | None = None) -> jax.Array:
        """float32 logits `[B, T, V]` for (left-padded) `input_ids: [B, T]` with interventions `heads`."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = attention_mask.astype(bool)
        positions = positions_from_mask(attention_mask)
        mask = prompt_attention_mask(self.config, attention_mask)
        h = self.run_layers(self.embed_tokens(input_ids), positions, mask, heads).h
        return self.logits(self.final_hidden(h))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions `[B, T]` of left-padded tokens: 0 at each sequence's first real token."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def prompt_attention_mask(cfg: ModelConfig, attention_mask: jax.Array) -> AttentionMask:
    """The compact attention mask of a whole (left-padded) prompt `[B, T]` with no cache: key validity, each
    query's slot, and the config's sliding window (Mistral; Gemma's local layers set theirs per layer)."""
    return prompt_mask(attention_mask, cfg.sliding_window)


def attention_mask_for_prompt(cfg: ModelConfig, attention_mask: jax.Array) -> jax.Array:
    """The dense `[B, T, T]` attention mask of a whole (left-padded) prompt with no cache (T² booleans; the
    model's own callers use `prompt_attention_mask`)."""
    return prompt_attention_mask(cfg, attention_mask).dense()


def to_param(name: str, layout: str, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Converts one Hugging Face tensor (torch layout) to the jaxheads layout of parameter `name`."""
    if layout == "transpose":
        return array.T
    if layout == "in_heads":
        return array.T.reshape(cfg.hidden_size, -1, cfg.head_dim)
    if layout == "out_heads":
        return array.T.reshape(-1, cfg.head_dim, cfg.hidden_size)
    if layout == "heads":
        return array.reshape(-1, cfg.head_dim)
    return array


def from_param(name: str, layout: str, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Inverse of `to_param`: a jaxheads parameter (one layer) back to the Hugging Face layout."""
    if layout == "transpose":
        return array.T
    if layout == "in_heads":
        return array.reshape(cfg.hidden_size, -1).T
    if layout == "out_heads":
        return array.reshape(-1, cfg.hidden_size).T
    if layout == "heads":
        return array.reshape(-1)
    return array
