"""The Gemma family (Gemma 1, Gemma 2, Gemma 3 text, and the text decoder of multimodal Gemma 3) as `ModelConfig`
switches of the one decoder (`jaxheads.models.decoder`): `(1 + w)` norms in float32 and embeddings times sqrt(D)
(all), a GeGLU MLP, attention scaled by `query_pre_attn_scalar ** -0.5`; Gemma 2/3 add norms after attention and
MLP, attention and final-logit soft-capping and sliding-window (local) layers among global ones; Gemma 3 adds
QK-norm and a RoPE base of its own for the local layers. Read from a `transformers` config, and written back for
export."""

from __future__ import annotations

from typing import Any

from jaxheads.errors import LoadError
from jaxheads.models.hf import field

GEMMA_FAMILY = ("gemma", "gemma2", "gemma3_text", "gemma3")  # gemma3: the text decoder of the multimodal model
# Gemma's defaults where a config.json (or a GGUF file's metadata) leaves a field out, as in `transformers`.
GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")
GEMMA_DEFAULT_WINDOW = 4096
GEMMA2_DEFAULT_SOFTCAPS = (50.0, 30.0)  # attention logits, final logits
GEMMA3_DEFAULT_LOCAL_ROPE_THETA = 10000.0
GEMMA3_DEFAULT_PATTERN = 6  # every sixth layer is global


def text_config(hf: Any) -> dict[str, Any]:
    """The text decoder's config of a multimodal Gemma 3 config: its `text_config` (often partial in a
    config.json) completed by `transformers.Gemma3TextConfig`'s own defaults, with the outer config's special
    token ids where it sets them (the outer `eos_token_id` lists the chat's end-of-turn token)."""
    text = field(hf, "text_config")
    if text is None:
        raise LoadError("this gemma3 config has no text_config")
    if isinstance(text, dict):
        from transformers import Gemma3TextConfig  # transformers is only imported for this one config form

        text = Gemma3TextConfig.from_dict(text)
    text = text.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if field(hf, key) is not None:
            text[key] = field(hf, key)
    return text


def config_fields(hf: Any, model_type: str, num_layers: int) -> dict[str, Any]:
    """The ModelConfig fields of Gemma (1, 2, 3 text)."""
    if field(hf, "attention_bias", False):
        raise LoadError(f"{model_type} with attention_bias=True is not supported")
    if field(hf, "use_bidirectional_attention", False):
        raise LoadError(f"{model_type} with use_bidirectional_attention=True is not supported")
    if model_type == "gemma":
        activation = field(hf, "hidden_act", "gelu_pytorch_tanh")
        activation = "gelu_pytorch_tanh" if activation == "gelu" else activation  # as transformers reads it
    else:
        activation = field(hf, "hidden_activation", "gelu_pytorch_tanh")
    if activation not in GEMMA_ACTIVATIONS:
        raise LoadError(f"unsupported activation {activation!r}; Gemma uses one of {', '.join(GEMMA_ACTIVATIONS)}")
    fields = {"hidden_act": activation, "tie_word_embeddings": bool(field(hf, "tie_word_embeddings", True)),
              "norm_plus_one": True, "embed_scale": True}
    if model_type == "gemma":
        return fields
    layer_types = field(hf, "layer_types")
    if layer_types is None:
        pattern = 2 if model_type == "gemma2" else field(hf, "sliding_window_pattern", GEMMA3_DEFAULT_PATTERN)
        layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise LoadError(f"layer_types {layer_types!r} must give full_attention or sliding_attention for each of "
                        f"the {num_layers} layers")
    default_caps = GEMMA2_DEFAULT_SOFTCAPS if model_type == "gemma2" else (None, None)
    attn_cap = field(hf, "attn_logit_softcapping", default_caps[0])
    final_cap = field(hf, "final_logit_softcapping", default_caps[1])
    fields.update(
        query_pre_attn_scalar=float(field(hf, "query_pre_attn_scalar") or 256),
        attn_logit_softcap=None if attn_cap is None else float(attn_cap),
        final_logit_softcap=None if final_cap is None else float(final_cap),
        sandwich_norms=True,
        qk_norm=model_type == "gemma3_text",
        local_window=int(field(hf, "sliding_window") or GEMMA_DEFAULT_WINDOW),
        local_layers=tuple(kind == "sliding_attention" for kind in layer_types),
    )
    if model_type == "gemma3_text":
        local = dict(field(hf, "rope_parameters") or {}).get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise LoadError(f"unsupported RoPE scaling {local['rope_type']!r} on Gemma 3's local layers")
        fields["local_rope_theta"] = float(local.get("rope_theta")
                                           or field(hf, "rope_local_base_freq", GEMMA3_DEFAULT_LOCAL_ROPE_THETA))
    return fields


def hf_fields(cfg, rope: dict) -> dict[str, Any]:
    """The `config.json` fields of Gemma 1/2/3 (text) beyond the shared ones; norm weights need no change, as
    jaxheads keeps Hugging Face's `w` of the `(1 + w)` norms."""
    if cfg.model_type == "gemma":
        return {"hidden_act": cfg.hidden_act, "attention_bias": False}
    scalar = cfg.query_pre_attn_scalar
    fields = {
        "hidden_activation": cfg.hidden_act,
        "attention_bias": False,
        "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,  # transformers: an int
        "attn_logit_softcapping": cfg.attn_logit_softcap,
        "final_logit_softcapping": cfg.final_logit_softcap,
        "sliding_window": cfg.local_window,
        "layer_types": ["sliding_attention" if local else "full_attention" for local in cfg.local_layers],
    }
    if cfg.model_type == "gemma3_text":
        local_rope = {"rope_type": "default", "rope_theta": cfg.local_rope_theta}
        fields["rope_parameters"] = {"full_attention": rope, "sliding_attention": local_rope}
    return fields
