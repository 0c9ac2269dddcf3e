"""Reading a `transformers` config (a PretrainedConfig or a config.json dict) field by field."""

from __future__ import annotations

from typing import Any


def field(hf: Any, name: str, default: Any = None) -> Any:
    """`hf.name` or `hf[name]`, else `default`."""
    if isinstance(hf, dict):
        return hf.get(name, default)
    return getattr(hf, name, default)


def rope_parameters(hf: Any, layer_type: str = "full_attention") -> dict:
    """RoPE settings from either the new `rope_parameters` or the older `rope_theta` + `rope_scaling` fields.

    Gemma 3 keeps one set per layer type (`{"full_attention": {...}, "sliding_attention": {...}}`).
    """
    params = dict(field(hf, "rope_parameters") or {})
    if "full_attention" in params:
        params = dict(params.get(layer_type) or {})
    scaling = field(hf, "rope_scaling") or {}
    params = {**scaling, **params}
    params.setdefault("rope_theta", field(hf, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params
