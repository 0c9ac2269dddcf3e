"""Model configuration: the architecture facts a forward pass needs, read from a `transformers` config."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxheads.errors import LoadError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only model (hashable, so it can be a static jit argument).

    Symbols (DESIGN.md): L = num_layers, N = num_heads, K = num_kv_heads, d = head_dim, V = vocab_size.
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

    @property
    def group_size(self) -> int:
        """G = N / K query heads per KV head."""
        return self.num_heads // self.num_kv_heads

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


def _rope_parameters(hf: Any) -> dict:
    """RoPE settings from either the new `rope_parameters` or the older `rope_theta` + `rope_scaling` fields."""
    params = dict(_get(hf, "rope_parameters") or {})
    scaling = _get(hf, "rope_scaling") or {}
    params = {**scaling, **params}
    params.setdefault("rope_theta", _get(hf, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def config_from_hf(hf: Any) -> ModelConfig:
    """Builds a ModelConfig from a `transformers` PretrainedConfig (or a config.json dict)."""
    model_type = _get(hf, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LoadError(
            f"unsupported model_type {model_type!r}; jaxheads supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
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
    if _get(hf, "hidden_act", "silu") != "silu":
        raise LoadError(f"unsupported hidden_act {_get(hf, 'hidden_act')!r}; the Llama family uses 'silu'")
    max_pos = _get(hf, "max_position_embeddings", 2048)
    return ModelConfig(
        model_type=model_type,
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_get(hf, "intermediate_size"),
        num_layers=_get(hf, "num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=_get(hf, "head_dim") or hidden // num_heads,
        rms_norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        rope_theta=float(rope["rope_theta"]),
        rope_type=rope["rope_type"],
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=int(rope.get("original_max_position_embeddings") or max_pos),
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or (model_type in ("llama", "qwen3") and attention_bias),
        o_bias=model_type in ("llama", "qwen3") and attention_bias,
        mlp_bias=model_type == "llama" and bool(_get(hf, "mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=sliding,
        bos_token_id=_get(hf, "bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=_get(hf, "pad_token_id"),
    )
