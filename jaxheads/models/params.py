"""The parameters of the decoder, declared once: each one's name, its shape in logical axes, its Hugging Face
checkpoint name and layout change, its GGUF name, and the config switch it depends on.

Everything else derives from `PARAMS`: the shapes of a config (`shapes`), the checkpoint name maps of loading and
export (`checkpoint_names`), the GGUF name maps (`gguf_names`), and the partition specs, which
`jaxheads.sharding` makes from the logical axes by the rules of a layout (logical axis -> mesh axes).

Logical axes: `layers` (L, the stacked layer axis), `vocab` (V), `embed` (D, the hidden size), `heads` (N query
heads), `kv_heads` (K), `head_dim` (d), `mlp` (F), `labels` (a sequence classifier's outputs). Layouts of the Hugging Face tensors (torch `[out, in]`):
`none` (as stored), `transpose` (`[F, D]` -> `[D, F]`), `in_heads` (`[H*d, D]` -> `[D, H, d]`), `out_heads`
(`[D, N*d]` -> `[N, d, D]`), `heads` (a bias `[H*d]` -> `[H, d]`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxheads.models.config import ModelConfig

AXES = ("layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "labels")


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter: `axes` its logical shape; `checkpoint` its Hugging Face name (`{i}` the layer of a
    parameter with a `layers` axis); `layout` how that tensor is rearranged; `gguf` llama.cpp's name; `when` the
    `ModelConfig` switch it needs (a leading `!` negates it); `norm` for norm weights (initialised to the
    identity)."""

    name: str
    axes: tuple[str, ...]
    checkpoint: str
    layout: str = "none"
    gguf: str | None = None
    when: str | None = None
    norm: bool = False

    def present(self, cfg: ModelConfig) -> bool:
        if self.when is None:
            return True
        negate = self.when.startswith("!")
        return bool(getattr(cfg, self.when.lstrip("!"))) != negate

    @property
    def stacked(self) -> bool:
        """Whether the parameter has one slice per layer (its first axis is `layers`)."""
        return self.axes[:1] == ("layers",)


_LAYER = "model.layers.{i}."
_BLOCK = "blk.{i}."
PARAMS = (
    Param("embed", ("vocab", "embed"), "model.embed_tokens.weight", gguf="token_embd.weight"),
    Param("final_norm", ("embed",), "model.norm.weight", gguf="output_norm.weight", norm=True),
    Param("lm_head", ("vocab", "embed"), "lm_head.weight", gguf="output.weight", when="has_lm_head"),
    # A sequence classifier (`LlamaForSequenceClassification`, ...): a bias-free `[labels, D]` head on the final
    # norm's output of the last non-pad token, instead of the LM head (`Decoder.classify`).
    Param("score", ("labels", "embed"), "score.weight", when="num_labels"),
    Param("attn_norm", ("layers", "embed"), _LAYER + "input_layernorm.weight", gguf=_BLOCK + "attn_norm.weight",
          norm=True),
    Param("q", ("layers", "embed", "heads", "head_dim"), _LAYER + "self_attn.q_proj.weight", "in_heads",
          _BLOCK + "attn_q.weight"),
    Param("k", ("layers", "embed", "kv_heads", "head_dim"), _LAYER + "self_attn.k_proj.weight", "in_heads",
          _BLOCK + "attn_k.weight"),
    Param("v", ("layers", "embed", "kv_heads", "head_dim"), _LAYER + "self_attn.v_proj.weight", "in_heads",
          _BLOCK + "attn_v.weight"),
    Param("o", ("layers", "heads", "head_dim", "embed"), _LAYER + "self_attn.o_proj.weight", "out_heads",
          _BLOCK + "attn_output.weight"),
    Param("q_bias", ("layers", "heads", "head_dim"), _LAYER + "self_attn.q_proj.bias", "heads",
          _BLOCK + "attn_q.bias", when="qkv_bias"),
    Param("k_bias", ("layers", "kv_heads", "head_dim"), _LAYER + "self_attn.k_proj.bias", "heads",
          _BLOCK + "attn_k.bias", when="qkv_bias"),
    Param("v_bias", ("layers", "kv_heads", "head_dim"), _LAYER + "self_attn.v_proj.bias", "heads",
          _BLOCK + "attn_v.bias", when="qkv_bias"),
    Param("o_bias", ("layers", "embed"), _LAYER + "self_attn.o_proj.bias", gguf=_BLOCK + "attn_output.bias",
          when="o_bias"),
    Param("q_norm", ("layers", "head_dim"), _LAYER + "self_attn.q_norm.weight", gguf=_BLOCK + "attn_q_norm.weight",
          when="qk_norm", norm=True),
    Param("k_norm", ("layers", "head_dim"), _LAYER + "self_attn.k_norm.weight", gguf=_BLOCK + "attn_k_norm.weight",
          when="qk_norm", norm=True),
    # The norm before the MLP: Llama and Gemma 1 call it post_attention_layernorm; Gemma 2/3, which also normalise
    # each sublayer's output, call it pre_feedforward_layernorm and give post_attention_layernorm to the other.
    Param("mlp_norm", ("layers", "embed"), _LAYER + "post_attention_layernorm.weight", gguf=_BLOCK + "ffn_norm.weight",
          when="!sandwich_norms", norm=True),
    Param("mlp_norm", ("layers", "embed"), _LAYER + "pre_feedforward_layernorm.weight", gguf=_BLOCK + "ffn_norm.weight",
          when="sandwich_norms", norm=True),
    Param("post_attn_norm", ("layers", "embed"), _LAYER + "post_attention_layernorm.weight",
          gguf=_BLOCK + "post_attention_norm.weight", when="sandwich_norms", norm=True),
    Param("post_mlp_norm", ("layers", "embed"), _LAYER + "post_feedforward_layernorm.weight",
          gguf=_BLOCK + "post_ffw_norm.weight", when="sandwich_norms", norm=True),
    Param("gate", ("layers", "embed", "mlp"), _LAYER + "mlp.gate_proj.weight", "transpose", _BLOCK + "ffn_gate.weight"),
    Param("up", ("layers", "embed", "mlp"), _LAYER + "mlp.up_proj.weight", "transpose", _BLOCK + "ffn_up.weight"),
    Param("down", ("layers", "mlp", "embed"), _LAYER + "mlp.down_proj.weight", "transpose", _BLOCK + "ffn_down.weight"),
    Param("gate_bias", ("layers", "mlp"), _LAYER + "mlp.gate_proj.bias", gguf=_BLOCK + "ffn_gate.bias",
          when="mlp_bias"),
    Param("up_bias", ("layers", "mlp"), _LAYER + "mlp.up_proj.bias", gguf=_BLOCK + "ffn_up.bias", when="mlp_bias"),
    Param("down_bias", ("layers", "embed"), _LAYER + "mlp.down_proj.bias", gguf=_BLOCK + "ffn_down.bias",
          when="mlp_bias"),
)


def params(cfg: ModelConfig) -> dict[str, Param]:
    """The parameters a config has, by name, in table order."""
    return {param.name: param for param in PARAMS if param.present(cfg)}


def axis_sizes(cfg: ModelConfig) -> dict[str, int]:
    """The size of each logical axis for `cfg`."""
    return {"layers": cfg.num_layers, "vocab": cfg.vocab_size, "embed": cfg.hidden_size, "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "mlp": cfg.intermediate_size,
            "labels": cfg.num_labels}


def shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape (layer parameters with their leading L)."""
    sizes = axis_sizes(cfg)
    return {name: tuple(sizes[axis] for axis in param.axes) for name, param in params(cfg).items()}


def logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Parameter name -> its logical axes."""
    return {name: param.axes for name, param in params(cfg).items()}


GLOBAL_PARAMS = tuple(dict.fromkeys(param.name for param in PARAMS if not param.stacked))


def checkpoint_names(cfg: ModelConfig) -> dict[str, tuple[str, str]]:
    """Hugging Face name pattern -> (parameter, layout change), for the parameters `cfg` has."""
    return {param.checkpoint: (name, param.layout) for name, param in params(cfg).items()}


def gguf_names(sandwich_norms: bool) -> dict[str, str]:
    """GGUF name pattern -> Hugging Face name pattern of a family with or without Gemma 2/3's sublayer norms (the
    other switches are read off which tensors a file holds)."""
    return {param.gguf: param.checkpoint for param in PARAMS
            if param.gguf is not None and param.when not in (("!sandwich_norms",) if sandwich_norms
                                                               else ("sandwich_norms",))}


def to_param(layout: str, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """One Hugging Face tensor (torch layout; one layer of a stacked parameter) in the jaxheads layout."""
    if layout == "transpose":
        return array.T
    if layout == "in_heads":
        return array.T.reshape(cfg.hidden_size, -1, cfg.head_dim)
    if layout == "out_heads":
        return array.T.reshape(-1, cfg.head_dim, cfg.hidden_size)
    if layout == "heads":
        return array.reshape(-1, cfg.head_dim)
    return array


def from_param(layout: str, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Inverse of `to_param`: a jaxheads parameter (one layer) back in the Hugging Face layout."""
    if layout == "transpose":
        return array.T
    if layout == "in_heads":
        return array.reshape(cfg.hidden_size, -1).T
    if layout == "out_heads":
        return array.reshape(-1, cfg.hidden_size).T
    if layout == "heads":
        return array.reshape(-1)
    return array


def hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face shape of a tensor whose jaxheads layout (one layer) is `shape` (inverse of `to_param`)."""
    if layout == "transpose":
        return tuple(reversed(shape))
    if layout == "in_heads":  # [D, H, d] <- [H*d, D]
        return shape[1] * shape[2], shape[0]
    if layout == "out_heads":  # [H, d, D] <- [D, H*d]
        return shape[2], shape[0] * shape[1]
    if layout == "heads":  # [H, d] <- [H*d]
        return (shape[0] * shape[1],)
    return tuple(shape)
