"""The one decoder of every supported family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2, TinyLlama, Gemma 1,
Gemma 2, Gemma 3 text) in Flax NNX; what differs between families is `ModelConfig` switches, read from a checkpoint
config by the family files (`jaxheads.models.llama`, `jaxheads.models.gemma`):

- `norm_plus_one`: Gemma's RMSNorm, `(1 + w)` applied in float32 (else Llama's);
- `embed_scale`: embeddings times sqrt(D) in the embedding dtype (Gemma);
- `hidden_act`: the gated MLP's activation (silu, or Gemma's tanh-approximated GELU);
- `sandwich_norms`: norms after attention and MLP as well as before (Gemma 2/3);
- `attn_logit_softcap`, `final_logit_softcap`: soft-capping of attention and final logits (Gemma 2);
- `qk_norm` (Qwen3, Gemma 3), `qkv_bias` / `o_bias` / `mlp_bias` (Qwen2, some Llamas);
- `local_layers`, `local_window`, `local_rope_theta`: sliding-window layers among global ones with their own RoPE
  base (Gemma 2/3), chosen as data inside the layer scan; `sliding_window`: every layer windowed (Mistral).

Heads are an explicit axis of every attention weight (`q: [L, D, N, d]`, `o: [L, N, d, D]`), so per-head
interventions act on `[B, T, N, d]` arrays before `o_proj`, and all L layers are stacked on a leading axis so the
decoder runs as one `lax.scan` (or a loop from any layer on, for prefix-reusing scans). Masks are compact
(`jaxheads.attention.AttentionMask`) and attention runs the dense or the blocked kernel by key length.

A module on a mesh holds its `layout` (`jaxheads.sharding.Layout`, static like the attention kernel): the layer
loop then constrains the hidden state and the logits by logical axis, and with FSDP rules all-gathers each
layer's weights inside the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxheads.attention import NO_WINDOW, AttentionKernel, AttentionMask, prompt_mask, soft_cap
from jaxheads.interventions import Interventions
from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.models.layers import KVCache, LayerOutputs, apply_rope, attend, rms_norm, rope_tables, scale_queries
from jaxheads.sharding import Layout, constrain

GLOBAL_PARAMS = param_table.GLOBAL_PARAMS
HIDDEN = ("batch", "length", "act_embed")  # the logical axes of the hidden state [B, T, D]


def decoder_layer(cfg: ModelConfig, p: dict, h: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: AttentionMask | jax.Array, heads: Interventions | None,
                  cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | int = 0,
                  sink_index: jax.Array | None = None, kernel: AttentionKernel = AttentionKernel(),
                  record: str | None = None, layout: Layout | None = None):
    """One decoder layer on `h: [B, T, D]` with this layer's parameters `p` (no leading L axis), RoPE tables
    `[B, T, d]` and mask (already the local or global one for this layer).

    `heads` holds this layer's intervention scales (`[N]` or `[B, N]` each); `mask`, `cache`, `cache_index`,
    `sink_index`, `kernel` and `record` are as in `layers.attend`.
    Returns `(h, cache, extra)`: the new hidden state, the updated cache (or None), and `attend`'s extra (the
    sink column, or the recorded probabilities or head outputs, or None).
    """
    eps, plus_one = cfg.rms_norm_eps, cfg.norm_plus_one
    x = rms_norm(h, p["attn_norm"], eps, plus_one)
    q = jnp.einsum("btD,Dnd->btnd", x, p["q"])
    k = jnp.einsum("btD,Dkd->btkd", x, p["k"])
    v = jnp.einsum("btD,Dkd->btkd", x, p["v"])
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = constrain(layout, q, ("batch", "length", "act_heads", None))
    k, v = (constrain(layout, a, ("batch", "length", "act_kv_heads", None)) for a in (k, v))
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], eps, plus_one), rms_norm(k, p["k_norm"], eps, plus_one)
    q = scale_queries(q, heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, cache, extra = attend(q, k, v, mask, heads, cache, cache_index, sink_index, cfg.attention_scale,
                               cfg.attn_logit_softcap, kernel, record)
    attn = jnp.einsum("btnd,ndD->btD", out, p["o"])
    if cfg.o_bias:
        attn = attn + p["o_bias"]
    if cfg.sandwich_norms:
        attn = rms_norm(attn, p["post_attn_norm"], eps, plus_one)
    h = h + attn
    x = rms_norm(h, p["mlp_norm"], eps, plus_one)
    gate = jnp.einsum("btD,DF->btF", x, p["gate"])
    up = jnp.einsum("btD,DF->btF", x, p["up"])
    if cfg.mlp_bias:
        gate, up = gate + p["gate_bias"], up + p["up_bias"]
    if cfg.hidden_act == "silu":
        act = jax.nn.silu(gate)
    else:
        act = jax.nn.gelu(gate, approximate=cfg.hidden_act == "gelu_pytorch_tanh")
    mlp = jnp.einsum("btF,FD->btD", act * up, p["down"])
    if cfg.mlp_bias:
        mlp = mlp + p["down_bias"]
    if cfg.sandwich_norms:
        mlp = rms_norm(mlp, p["post_mlp_norm"], eps, plus_one)
    return constrain(layout, h + mlp, HIDDEN), cache, extra


def _layer_axis_first(heads: Interventions | None) -> Interventions | None:
    """Moves the L axis of `[L, N]` or per-example `[B, L, N]` interventions to the front for the layer loop."""
    if heads is None:
        return None
    return jax.tree.map(lambda a: jnp.moveaxis(jnp.asarray(a), -2, 0), heads)


def run_stacked_layers(layer, params: dict[str, jax.Array], h: jax.Array, heads: Interventions | None,
                       num_layers: int, start: int | jax.Array = 0, cache: KVCache | None = None,
                       collect_inputs: bool = False, with_sink: bool = False, remat: bool = False) -> LayerOutputs:
    """Runs `layer(p, h, heads, cache) -> (h, cache, sink)` over layers `start..L-1` of the stacked `[L, ...]`
    `params` (and `[L, N]` / `[B, L, N]` `heads`, and the `[L, ...]` cache).

    A static `start` of 0 runs one `lax.scan` and can return the updated cache, every layer's input
    (`collect_inputs`) and the stacked sink columns (`with_sink`); a traced `start` runs a `fori_loop`. With
    `remat` a gradient through the scan recomputes each layer (and, with FSDP, gathers its weights again) instead of
    keeping its activations: only the hidden state between layers is saved.
    """
    heads = _layer_axis_first(heads)

    def body(carry, xs):
        p, layer_heads, layer_cache = xs
        h_out, new_cache, sink = layer(p, carry, layer_heads, layer_cache)
        return h_out, (new_cache, carry if collect_inputs else None, sink)

    if isinstance(start, int) and start == 0:
        layer_cache = None if cache is None else (cache.k, cache.v)
        scanned = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable) if remat else body
        h, (new_cache, inputs, sink) = jax.lax.scan(scanned, h, (params, heads, layer_cache))
        return LayerOutputs(h, None if cache is None else KVCache(*new_cache), inputs, sink)
    if cache is not None or collect_inputs or with_sink:
        raise ValueError("a cache, collected inputs or sink attention need start=0")

    def loop_body(index, h):
        take = lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False)
        return body(h, (jax.tree.map(take, params), jax.tree.map(take, heads), None))[0]

    return LayerOutputs(jax.lax.fori_loop(start, num_layers, loop_body, h))



class Decoder(nnx.Module):
    """A causal LM of any supported family; every parameter is an `nnx.Param` named as in
    `jaxheads.models.params`."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)
        norm_init = 0.0 if config.norm_plus_one else 1.0  # norm weights start as the identity
        for name, param in param_table.params(config).items():
            shape = param_table.shapes(config)[name]
            value = jnp.full(shape, norm_init, dtype) if param.norm else init(rngs.params(), shape, dtype)
            setattr(self, name, nnx.Param(value))
        # static (part of the graph definition): assigning another kernel or layout makes jitted functions recompile
        self.attention_kernel = AttentionKernel()
        self.layout: Layout | None = None
        self.remat = False  # training: recompute each layer in the backward pass (`run_stacked_layers`)

    @staticmethod
    def shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of a module for `config`."""
        return param_table.shapes(config)

    def layer_params(self) -> dict[str, jax.Array]:
        """The stacked `[L, ...]` decoder-layer parameters as a dict of arrays."""
        return {name: getattr(self, name)[...] for name in self.shapes(self.config) if name not in GLOBAL_PARAMS}

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings `[B, T, D]` (times sqrt(D) in the embedding's dtype with `embed_scale`, as
        `transformers` rounds it for Gemma)."""
        embed = self.embed[...]
        h = jnp.take(embed, input_ids, axis=0)
        if self.config.embed_scale:
            h = h * jnp.asarray(np.float32(self.config.hidden_size ** 0.5)).astype(embed.dtype)
        return constrain(self.layout, h, HIDDEN)

    def scanned_params(self) -> dict[str, jax.Array]:
        """The per-layer arrays the layer loop scans: `layer_params`, plus the `[L]` bool local-layer flags when
        the config has local layers."""
        params = self.layer_params()
        if self.config.local_layers:
            params["local"] = jnp.asarray(self.config.local_layers)
        return params

    def layer_function(self, positions: jax.Array, mask: AttentionMask | jax.Array, dtype,
                       cache_index: jax.Array | int = 0, sink_index: jax.Array | None = None,
                       record: str | None = None):
        """`layer(p, h, heads, cache) -> (h, cache, extra)`: one decoder layer with that layer's slice `p` of
        `scanned_params`, for tokens at RoPE `positions: [B, T]` under `mask` (activations in `dtype`); `extra`
        as in `layers.attend`. `mask` is the global (causal) one; a layer whose `p["local"]` is True narrows it to
        the local window and uses the local RoPE tables. With FSDP rules the layer's weights are gathered first."""
        cfg, kernel, layout = self.config, self.attention_kernel, self.layout
        cos, sin = rope_tables(cfg, positions, dtype)
        if cfg.local_layers:
            local_cos, local_sin = rope_tables(cfg.local_rope(), positions, dtype)
            if not isinstance(mask, AttentionMask):
                local_mask = local_attention_mask(mask, cfg.local_window)
        axes = param_table.logical_axes(cfg)
        gather = layout is not None and layout.fsdp

        def layer(p, h, layer_heads, layer_cache):
            if gather:
                p = {name: layout.gathered(value, axes[name][1:]) if name in axes else value
                     for name, value in p.items()}
            rope, layer_mask = (cos, sin), mask
            if cfg.local_layers:
                local = p["local"]
                rope = jnp.where(local, local_cos, cos), jnp.where(local, local_sin, sin)
                if isinstance(mask, AttentionMask):
                    global_window = NO_WINDOW if mask.window is None else mask.window
                    layer_mask = mask.with_window(jnp.where(local, cfg.local_window, global_window))
                else:
                    layer_mask = jnp.where(local, local_mask, mask)
            return decoder_layer(cfg, p, h, *rope, layer_mask, layer_heads, layer_cache, cache_index, sink_index,
                                 kernel, record, layout)

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
                                  collect_inputs, sink_index is not None, self.remat)

    def final_hidden(self, h: jax.Array) -> jax.Array:
        """The final-norm output (input of the LM head) `[..., D]`."""
        return rms_norm(h, self.final_norm[...], self.config.rms_norm_eps, self.config.norm_plus_one)

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits `[..., V]` from final hidden states (after the final norm), soft-capped when the config
        says so; on a mesh split over the vocabulary (`act_vocab`)."""
        head = self.embed[...] if self.config.tie_word_embeddings else self.lm_head[...]
        logits = jnp.einsum("...D,VD->...V", h, head).astype(jnp.float32)
        if logits.ndim >= 2:
            logits = constrain(self.layout, logits, ("batch",) + (None,) * (logits.ndim - 2) + ("act_vocab",))
        return soft_cap(logits, self.config.final_logit_softcap)

    def classify(self, input_ids: jax.Array, attention_mask: jax.Array, pad_token_id: int | None) -> jax.Array:
        """A sequence classifier's float32 label logits `[B, num_labels]` (its `score` head on the final-norm
        output), read as `transformers`' `*ForSequenceClassification` reads them: at each row's last token whose
        id is not `pad_token_id` (every row's last slot when it is None), whichever side the rows are padded on."""
        if not self.config.num_labels:
            raise ValueError("classify needs a sequence-classification checkpoint (num_labels > 0)")
        attention_mask = attention_mask.astype(bool)
        h = self.run_layers(self.embed_tokens(input_ids), positions_from_mask(attention_mask),
                            prompt_attention_mask(self.config, attention_mask)).h
        slots = jnp.arange(input_ids.shape[1])
        if pad_token_id is None:
            last = jnp.full(input_ids.shape[:1], input_ids.shape[1] - 1)
        else:
            last = jnp.argmax(slots * (input_ids != pad_token_id), axis=-1)
        pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return jnp.einsum("bD,KD->bK", self.final_hidden(pooled), self.score[...]).astype(jnp.float32)

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


def local_attention_mask(mask: jax.Array, window: int) -> jax.Array:
    """Restricts a causal mask `[B, T, S]` to keys less than `window` slots before each query.

    Every real query attends its own slot, which is the last slot its row allows, so the query's slot is read
    off the mask (the same mask serves whole prompts and cached steps; padding queries' rows are never read).
    """
    key_index = jnp.arange(mask.shape[-1])
    query_index = jnp.max(jnp.where(mask, key_index, -1), axis=-1, keepdims=True)
    return mask & (query_index - key_index < window)


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


