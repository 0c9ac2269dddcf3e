"""The Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2, TinyLlama) as `ModelConfig` switches of
the one decoder (`jaxheads.models.decoder`): read from a `transformers` config, and written back for export."""

from __future__ import annotations

from typing import Any

from jaxheads.errors import LoadError
from jaxheads.models.hf import field

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def config_fields(hf: Any, model_type: str) -> dict[str, Any]:
    """The ModelConfig fields that differ within the Llama family: activation, tied embeddings, QK-norm
    (Qwen3), biases (Qwen2's QKV; Llama's and Qwen3's attention_bias; Llama's mlp_bias), Mistral's window."""
    if field(hf, "hidden_act", "silu") != "silu":
        raise LoadError(f"unsupported hidden_act {field(hf, 'hidden_act')!r}; the Llama family uses 'silu'")
    if model_type in ("qwen2", "qwen3") and field(hf, "use_sliding_window", False):
        raise LoadError(f"{model_type} with use_sliding_window=True is not supported")
    attention_bias = bool(field(hf, "attention_bias", False))
    return {
        "hidden_act": "silu",
        "tie_word_embeddings": bool(field(hf, "tie_word_embeddings", False)),
        "qk_norm": model_type == "qwen3",
        "qkv_bias": model_type == "qwen2" or (model_type in ("llama", "qwen3") and attention_bias),
        "o_bias": model_type in ("llama", "qwen3") and attention_bias,
        "mlp_bias": model_type == "llama" and bool(field(hf, "mlp_bias", False)),
        "sliding_window": field(hf, "sliding_window") if model_type == "mistral" else None,
    }


def hf_fields(cfg) -> dict[str, Any]:
    """The `config.json` fields of a Llama-family `cfg` beyond the shared ones."""
    fields: dict[str, Any] = {"hidden_act": cfg.hidden_act}
    if cfg.model_type in ("llama", "qwen3"):
        fields["attention_bias"] = cfg.qkv_bias
    if cfg.model_type == "llama":
        fields["mlp_bias"] = cfg.mlp_bias
    if cfg.model_type == "mistral":
        fields["sliding_window"] = cfg.sliding_window
    if cfg.model_type in ("qwen2", "qwen3"):
        fields["use_sliding_window"] = False
    return fields
