"""Model configuration: the architecture facts a forward pass needs, read from a `transformers` config."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxheads.errors import LoadError

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
GEMMA_FAMILY = ("gemma", "gemma2", "gemma3_text", "gemma3")  # gemma3: the text decoder of the multimodal model
SUPPORTED_MODEL_TYPES = LLAMA_FAMILY + GEMMA_FAMILY
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only model (hashable, so it can be a static jit argument).

    Symbols (docs/methods.md, Notation): L = num_layers, N = num_heads, K = num_kv_heads, d = head_dim, V = vocab_size.
    `sliding_window` limits every layer (Mistral); Gemma 2/3 instead limit only the layers flagged in
    `local_layers` to `local_window`, and Gemma 3 gives those local layers their own RoPE base.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    query_pre_attn_scalar: float | None = None  # attention logits are scaled by its ** -0.5 (None: head_dim)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sandwich_norms: bool = False  # Gemma 2/3: norms after attention and MLP as well as before
    local_window: int | None = None
    local_layers: tuple[bool, ...] = ()  # [L] True for sliding-window (local) layers
    local_rope_theta: float | None = None  # RoPE base of the local layers (None: rope_theta, no scaling)

    @property
    def group_size(self) -> int:
        """G = N / K query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def attention_scale(self) -> float:
        """The factor on query-key dot products: `query_pre_attn_scalar ** -0.5`, by default `d ** -0.5`."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def local_rope(self) -> ModelConfig:
        """This config with the RoPE settings of the local layers (Gemma 3: own base, no scaling)."""
        if self.local_rope_theta is None:
            return self
        return dataclasses.replace(self, rope_theta=self.local_rope_theta, rope_type="default", rope_factor=1.0)

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [d/2] in float32, computed as `transformers` does."""
        dim = self.head_dim
        inv_freq = 1.0 / (np.float32(self.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        inv_freq = inv_freq.astype(np.float32)
        if self.rope_type == "linear":
            return (inv_freq / np.float32(self.rope_factor)).astype(np.float32)
        if self.rope_type == "llama3":
            factor = self.rope_factor
            low_wavelen = self.rope_original_max_positions / self.rope_low_freq_factor
            high_wavelen = self.rope_original_max_positions / self.rope_high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
            smooth = (self.rope_original_max_positions / wavelen - self.rope_low_freq_factor) / (
                self.rope_high_freq_factor - self.rope_low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(is_medium, smoothed, scaled).astype(np.float32)
        return inv_freq


def _get(hf: Any, name: str, default: Any = None) -> Any:
    if isinstance(hf, dict):
        return hf.get(name, default)
    return getattr(hf, name, default)


def _rope_parameters(hf: Any, layer_type: str = "full_attention") -> dict:
    """RoPE settings from either the new `rope_parameters` or the older `rope_theta` + `rope_scaling` fields.

    Gemma 3 keeps one set per layer type (`{"full_attention": {...}, "sliding_attention": {...}}`).
    """
    params = dict(_get(hf, "rope_parameters") or {})
    if "full_attention" in params:
        params = dict(params.get(layer_type) or {})
    scaling = _get(hf, "rope_scaling") or {}
    params = {**scaling, **params}
    params.setdefault("rope_theta", _get(hf, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


# Gemma's defaults where a config.json (or a GGUF file's metadata) leaves a field out, as in `transformers`.
GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")
GEMMA_DEFAULT_WINDOW = 4096
GEMMA2_DEFAULT_SOFTCAPS = (50.0, 30.0)  # attention logits, final logits
GEMMA3_DEFAULT_LOCAL_ROPE_THETA = 10000.0
GEMMA3_DEFAULT_PATTERN = 6  # every sixth layer is global


def _gemma_fields(hf: Any, model_type: str, num_layers: int) -> dict[str, Any]:
    """The ModelConfig fields that only Gemma (1, 2, 3 text) sets."""
    if _get(hf, "attention_bias", False):
        raise LoadError(f"{model_type} with attention_bias=True is not supported")
    if _get(hf, "use_bidirectional_attention", False):
        raise LoadError(f"{model_type} with use_bidirectional_attention=True is not supported")
    if model_type == "gemma":
        activation = _get(hf, "hidden_act", "gelu_pytorch_tanh")
        activation = "gelu_pytorch_tanh" if activation == "gelu" else activation  # as transformers reads it
    else:
        activation = _get(hf, "hidden_activation", "gelu_pytorch_tanh")
    if activation not in GEMMA_ACTIVATIONS:
        raise LoadError(f"unsupported activation {activation!r}; Gemma uses one of {', '.join(GEMMA_ACTIVATIONS)}")
    fields = {"hidden_act": activation, "tie_word_embeddings": bool(_get(hf, "tie_word_embeddings", True))}
    if model_type == "gemma":
        return fields
    layer_types = _get(hf, "layer_types")
    if layer_types is None:
        pattern = 2 if model_type == "gemma2" else _get(hf, "sliding_window_pattern", GEMMA3_DEFAULT_PATTERN)
        layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise LoadError(f"layer_types {layer_types!r} must give full_attention or sliding_attention for each of "
                        f"the {num_layers} layers")
    default_caps = GEMMA2_DEFAULT_SOFTCAPS if model_type == "gemma2" else (None, None)
    attn_cap = _get(hf, "attn_logit_softcapping", default_caps[0])
    final_cap = _get(hf, "final_logit_softcapping", default_caps[1])
    fields.update(
        query_pre_attn_scalar=float(_get(hf, "query_pre_attn_scalar") or 256),
        attn_logit_softcap=None if attn_cap is None else float(attn_cap),
        final_logit_softcap=None if final_cap is None else float(final_cap),
        sandwich_norms=True,
        qk_norm=model_type == "gemma3_text",
        local_window=int(_get(hf, "sliding_window") or GEMMA_DEFAULT_WINDOW),
        local_layers=tuple(kind == "sliding_attention" for kind in layer_types),
    )
    if model_type == "gemma3_text":
        local = dict(_get(hf, "rope_parameters") or {}).get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise LoadError(f"unsupported RoPE scaling {local['rope_type']!r} on Gemma 3's local layers")
        fields["local_rope_theta"] = float(local.get("rope_theta")
                                           or _get(hf, "rope_local_base_freq", GEMMA3_DEFAULT_LOCAL_ROPE_THETA))
    return fields


def gemma3_text_config(hf: Any) -> dict[str, Any]:
    """The text decoder's config of a multimodal Gemma 3 config: its `text_config` (often partial in a
    config.json) completed by `transformers.Gemma3TextConfig`'s own defaults, with the outer config's special
    token ids where it sets them (the outer `eos_token_id` lists the chat's end-of-turn token)."""
    text = _get(hf, "text_config")
    if text is None:
        raise LoadError("this gemma3 config has no text_config")
    if isinstance(text, dict):
        from transformers import Gemma3TextConfig

        text = Gemma3TextConfig.from_dict(text)
    text = text.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if _get(hf, key) is not None:
            text[key] = _get(hf, key)
    return text


def config_from_hf(hf: Any) -> ModelConfig:
    """Builds a ModelConfig from a `transformers` PretrainedConfig (or a config.json dict)."""
    model_type = _get(hf, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LoadError(
            f"unsupported model_type {model_type!r}; jaxheads supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "gemma3":  # the multimodal model: its text decoder only
        hf, model_type = gemma3_text_config(hf), "gemma3_text"
    rope = _rope_parameters(hf)
    if rope["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise LoadError(
            f"unsupported RoPE scaling {rope['rope_type']!r}; jaxheads supports {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    num_heads = _get(hf, "num_attention_heads")
    hidden = _get(hf, "hidden_size")
    num_kv = _get(hf, "num_key_value_heads") or num_heads
    if num_heads % num_kv:
        raise LoadError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv}")
    eos = _get(hf, "eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    attention_bias = bool(_get(hf, "attention_bias", False))
    sliding = _get(hf, "sliding_window") if model_type == "mistral" else None
    if model_type in ("qwen2", "qwen3") and _get(hf, "use_sliding_window", False):
        raise LoadError(f"{model_type} with use_sliding_window=True is not supported")
    num_layers = _get(hf, "num_hidden_layers")
    head_dim = _get(hf, "head_dim") or hidden // num_heads
    if model_type in GEMMA_FAMILY:
        family_fields = _gemma_fields(hf, model_type, num_layers)
    elif _get(hf, "hidden_act", "silu") != "silu":
        raise LoadError(f"unsupported hidden_act {_get(hf, 'hidden_act')!r}; the Llama family uses 'silu'")
    else:
        family_fields = {"tie_word_embeddings": bool(_get(hf, "tie_word_embeddings", False)),
                         "qk_norm": model_type == "qwen3"}
    max_pos = _get(hf, "max_position_embeddings", 2048)
    return ModelConfig(
        model_type=model_type,
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_get(hf, "intermediate_size"),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        rms_norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        rope_theta=float(rope["rope_theta"]),
        rope_type=rope["rope_type"],
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=int(rope.get("original_max_position_embeddings") or max_pos),
        max_position_embeddings=max_pos,
        qkv_bias=model_type == "qwen2" or (model_type in ("llama", "qwen3") and attention_bias),
        o_bias=model_type in ("llama", "qwen3") and attention_bias,
        mlp_bias=model_type == "llama" and bool(_get(hf, "mlp_bias", False)),
        sliding_window=sliding,
        bos_token_id=_get(hf, "bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=_get(hf, "pad_token_id"),
        **family_fields,
    )
