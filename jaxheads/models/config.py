"""Model configuration: the architecture facts a forward pass needs, as switches of the one decoder, read from a
`transformers` config by the family files (`jaxheads.models.llama`, `jaxheads.models.gemma`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxheads.errors import LoadError
from jaxheads.models import gemma, llama
from jaxheads.models.gemma import GEMMA_FAMILY
from jaxheads.models.hf import field as _get
from jaxheads.models.hf import rope_parameters as _rope_parameters
from jaxheads.models.llama import LLAMA_FAMILY

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
    norm_plus_one: bool = False  # Gemma: RMSNorm times (1 + w) in float32 (Llama: times w in the input's dtype)
    embed_scale: bool = False  # Gemma: embeddings times sqrt(D), rounded to the embedding dtype
    local_window: int | None = None
    local_layers: tuple[bool, ...] = ()  # [L] True for sliding-window (local) layers
    local_rope_theta: float | None = None  # RoPE base of the local layers (None: rope_theta, no scaling)
    # A sequence classifier (architectures `*ForSequenceClassification`): its label count (0: a causal LM) and
    # how its scores become probabilities (multi_label_classification: sigmoid per label; else softmax).
    num_labels: int = 0
    problem_type: str | None = None

    @property
    def has_lm_head(self) -> bool:
        """Whether the checkpoint has its own LM head (untied, and not a sequence classifier)."""
        return not self.tie_word_embeddings and not self.num_labels

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


def config_from_hf(hf: Any) -> ModelConfig:
    """Builds a ModelConfig from a `transformers` PretrainedConfig (or a config.json dict)."""
    model_type = _get(hf, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LoadError(
            f"unsupported model_type {model_type!r}; jaxheads supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "gemma3":  # the multimodal model: its text decoder only
        hf, model_type = gemma.text_config(hf), "gemma3_text"
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
    num_layers = _get(hf, "num_hidden_layers")
    head_dim = _get(hf, "head_dim") or hidden // num_heads
    if model_type in GEMMA_FAMILY:
        family_fields = gemma.config_fields(hf, model_type, num_layers)
    else:
        family_fields = llama.config_fields(hf, model_type)
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
        bos_token_id=_get(hf, "bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=_get(hf, "pad_token_id"),
        **family_fields,
        **classifier_fields(hf),
    )


def classifier_fields(hf: Any) -> dict[str, Any]:
    """`num_labels` and `problem_type` of a `*ForSequenceClassification` checkpoint (its labels counted as
    `transformers` counts them: `id2label`, else `num_labels`, else 2); nothing for a causal LM."""
    architectures = _get(hf, "architectures") or ()
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return {}
    id2label = _get(hf, "id2label")
    count = len(id2label) if id2label else (_get(hf, "num_labels") or 2)
    return {"num_labels": int(count), "problem_type": _get(hf, "problem_type")}
