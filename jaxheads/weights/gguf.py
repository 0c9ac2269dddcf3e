"""Reads GGUF checkpoints (llama.cpp's format) as a Hugging Face `config.json`-style dict, float32 tensors under
Hugging Face names and layouts, and a `transformers` tokenizer, with `gguf`, numpy and `tokenizers` (no PyTorch).

The GGUF tensor names come from the parameter table (`jaxheads.models.params`, its `gguf` column); each family
has one row in `FAMILIES` saying how its GGUF tensors differ from Hugging Face's (llama.cpp's Q/K row order,
Gemma's norm offset). A new family is a new row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping

import gguf
import numpy as np

from jaxheads.errors import LoadError
from jaxheads.models.params import gguf_names

GGUF_MAGIC = b"GGUF"

# GGUF tensor name -> Hugging Face parameter name ("{i}" is the layer index), from the parameter table: one for
# the families without Gemma 2/3's sublayer norms, one for those with them.
PLAIN_NAMES = gguf_names(sandwich_norms=False)
SANDWICH_NAMES = gguf_names(sandwich_norms=True)

# GGUF tensors that are not Hugging Face parameters (`rope_freqs.weight` is read into `rope_scaling`).
NON_PARAMETER_TENSORS = ("rope_freqs.weight",)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one model family is stored in GGUF, relative to its Hugging Face checkpoint."""

    model_type: str  # Hugging Face `config.model_type`
    hf_class: str  # Hugging Face `config.architectures[0]`
    names: Mapping[str, str]  # GGUF name pattern -> Hugging Face name pattern
    permuted_qk: bool  # llama.cpp reordered Q/K rows for its interleaved RoPE; undone on load
    norm_offset: float  # added to every norm weight on load (llama.cpp stores Gemma's norms as HF's + 1)
    activation: tuple[str, str]  # config key and value of the MLP activation


# Keyed by GGUF `general.architecture`, except "mistral": llama.cpp writes Mistral models as "llama" and only
# `general.name` tells them apart (as `transformers` does).
FAMILIES = {
    "llama": Family("llama", "LlamaForCausalLM", PLAIN_NAMES, True, 0.0, ("hidden_act", "silu")),
    "mistral": Family("mistral", "MistralForCausalLM", PLAIN_NAMES, True, 0.0, ("hidden_act", "silu")),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", PLAIN_NAMES, False, 0.0, ("hidden_act", "silu")),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", PLAIN_NAMES, False, 0.0, ("hidden_act", "silu")),
    "gemma3": Family("gemma3_text", "Gemma3ForCausalLM", SANDWICH_NAMES, False, -1.0,
                     ("hidden_activation", "gelu_pytorch_tanh")),
}

# Llama 3.x RoPE settings; a GGUF keeps only their effect (`rope_freqs.weight`), checked against these.
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class GGUFTensors(Mapping[str, np.ndarray]):
    """Hugging Face name -> float32 array, dequantized from the file at each lookup (nothing is cached, so
    iterating over `items()` holds one tensor at a time)."""

    def __init__(self, tensors: dict[str, Any], convert: Callable[[Any], np.ndarray]):
        self._tensors = tensors
        self._convert = convert

    def __getitem__(self, name: str) -> np.ndarray:
        return self._convert(self._tensors[name])

    def __contains__(self, name: object) -> bool:  # without dequantizing
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of a tensor, without dequantizing it (the conversion to Hugging Face's layout keeps shapes)."""
        return tuple(int(size) for size in reversed(self._tensors[name].shape))

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"GGUFTensors({len(self)} tensors)"


@dataclasses.dataclass
class GGUFCheckpoint:
    """A GGUF file read as a Hugging Face checkpoint: `config.json`-style dict and tensors in torch layout."""

    config: dict[str, Any]
    tensors: GGUFTensors
    architecture: str  # GGUF `general.architecture`
    quant_types: set[str]  # ggml types of the file's tensors, e.g. {"Q4_1", "Q8_0", "F32"}
    metadata: GGUFMetadata
    path: pathlib.Path

    def tokenizer_recipe(self) -> TokenizerRecipe | None:
        """How to build the file's tokenizer (see `tokenizer_recipe`), from the metadata already read."""
        return tokenizer_recipe(self.metadata, self.path, self.config["model_type"])

    def tokenizer(self):
        """The file's `transformers` tokenizer, chat template included; None if the file has none."""
        recipe = self.tokenizer_recipe()
        return None if recipe is None else recipe.tokenizer()


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Reads a GGUF file's config and tensor index; tensors are dequantized to float32 when looked up."""
    path = _checked_path(path)
    reader = _reader(path)
    metadata = GGUFMetadata(reader)
    family = _family(metadata, path)
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    supported = dequantizable_types()
    for tensor in reader.tensors:
        if tensor.tensor_type not in supported:
            raise LoadError(
                f"tensor {tensor.name!r} in {path} is stored as {tensor.tensor_type.name}, which gguf.quants cannot "
                f"dequantize; supported types: {', '.join(sorted(qtype.name for qtype in supported))}")
    hf_tensors = {}
    for name, tensor in by_name.items():
        if name in NON_PARAMETER_TENSORS:
            continue
        pattern, layer = _name_pattern(name)
        if pattern not in family.names:
            raise LoadError(f"unexpected tensor {name!r} in {path}: not part of a GGUF {family.model_type} model")
        hf_tensors[family.names[pattern].format(i=layer)] = tensor
    architecture = metadata.required("general.architecture")
    config = _hf_config(metadata, architecture, family, by_name, path)
    convert = functools.partial(_hf_tensor, family=family, num_heads=config["num_attention_heads"],
                                num_kv_heads=config["num_key_value_heads"])
    return GGUFCheckpoint(config=config, tensors=GGUFTensors(hf_tensors, convert), architecture=architecture,
                          quant_types={tensor.tensor_type.name for tensor in reader.tensors}, metadata=metadata,
                          path=path)


def _reader(path: pathlib.Path) -> gguf.GGUFReader:
    """A `gguf.GGUFReader` of a file that starts with the GGUF magic bytes."""
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the parser raises several kinds for a truncated or damaged file
        raise LoadError(f"{path} is not a readable GGUF file: {error}") from error


def _family(metadata: GGUFMetadata, path: pathlib.Path) -> Family:
    """The model family of a GGUF file, from its architecture (and, for Mistral, its name)."""
    architecture = metadata.required("general.architecture")
    family_key = architecture
    if architecture == "llama" and "mistral" in str(metadata.get("general.name", "")).lower():
        family_key = "mistral"
    if family_key not in FAMILIES:
        raise LoadError(f"{path} holds a GGUF architecture {architecture!r}, which jaxheads cannot read; "
                        f"supported: {', '.join(FAMILIES)}")
    return FAMILIES[family_key]


@functools.cache
def dequantizable_types() -> frozenset[gguf.GGMLQuantizationType]:
    """The ggml types that the installed `gguf.quants.dequantize` turns into floats (probed with one zero block)."""
    found = set()
    for qtype, (_, block_bytes) in gguf.GGML_QUANT_SIZES.items():
        try:
            gguf.quants.dequantize(np.zeros((1, block_bytes), np.uint8), qtype)
        except NotImplementedError:
            continue
        found.add(qtype)
    return frozenset(found)


def unpermute_rotary_rows(values: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row order for a `[heads * d, ...]` weight or bias.

    llama.cpp interleaves each head's two rotary halves (rows i and i + d/2 become rows 2i and 2i + 1); viewing
    the rows as (heads, d/2, 2) and swapping the last two axes restores Hugging Face's order.
    """
    rows = values.shape[0]
    if rows % (2 * num_heads):
        raise LoadError(f"a Q/K tensor with {rows} rows cannot be split into {num_heads} heads of rotary pairs")
    pairs = values.reshape(num_heads, rows // num_heads // 2, 2, *values.shape[1:])
    return np.ascontiguousarray(pairs.swapaxes(1, 2).reshape(values.shape))


def _hf_tensor(tensor, family: Family, num_heads: int, num_kv_heads: int) -> np.ndarray:
    """One GGUF tensor as a float32 array in Hugging Face's layout and convention."""
    values = _dequantize(tensor)
    if family.permuted_qk and tensor.name.endswith((".attn_q.weight", ".attn_q.bias")):
        values = unpermute_rotary_rows(values, num_heads)
    elif family.permuted_qk and tensor.name.endswith((".attn_k.weight", ".attn_k.bias")):
        values = unpermute_rotary_rows(values, num_kv_heads)
    elif family.norm_offset and tensor.name.endswith("norm.weight"):
        values += np.float32(family.norm_offset)
    return values


def _dequantize(tensor) -> np.ndarray:
    """float32 values of a GGUF tensor, shaped in numpy order (ggml lists dimensions fastest-first)."""
    shape = tuple(int(size) for size in reversed(tensor.shape))
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    if not values.flags.writeable:  # a view of the read-only file map (F32 tensors): take a private copy
        values = values.copy()
    return values.reshape(shape)


def _name_pattern(name: str) -> tuple[str, int | None]:
    """`"blk.3.attn_q.weight"` -> (`"blk.{i}.attn_q.weight"`, 3); a name outside the blocks -> (name, None)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        return ".".join(["blk", "{i}", *parts[2:]]), int(parts[1])
    return name, None


class GGUFMetadata:
    """Typed access to a GGUF file's key/value metadata."""

    def __init__(self, reader: gguf.GGUFReader):
        self._fields = reader.fields

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.FLOAT32:
            return float(str(np.float32(value)))  # the shortest decimal of the float32 (1e-05, not 9.9999997e-06)
        return value

    def required(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise LoadError(f"GGUF metadata has no {key!r}, which is needed to build the model config")
        return value


def _hf_config(metadata: GGUFMetadata, arch: str, family: Family, tensors: dict, path: pathlib.Path) -> dict[str, Any]:
    """The Hugging Face `config.json` fields that the metadata and tensor shapes of a GGUF file determine."""
    hidden_size = _int(metadata.required(f"{arch}.embedding_length"), "embedding_length")
    num_heads = _int(metadata.required(f"{arch}.attention.head_count"), "attention.head_count")
    num_kv_heads = _int(metadata.get(f"{arch}.attention.head_count_kv", num_heads), "attention.head_count_kv")
    head_dim = _int(metadata.get(f"{arch}.attention.key_length")
                    or metadata.get(f"{arch}.rope.dimension_count") or hidden_size // num_heads, "head_dim")
    if "token_embd.weight" not in tensors:
        raise LoadError(f"{path} has no token_embd.weight tensor")
    rope_theta = float(metadata.get(f"{arch}.rope.freq_base", 10000.0))
    rope_scaling = _rope_scaling(metadata, arch)
    if "rope_freqs.weight" in tensors and rope_scaling is None:
        rope_scaling = _llama3_rope_scaling(_dequantize(tensors["rope_freqs.weight"]), head_dim, rope_theta, path)
    names = [_name_pattern(name)[0] for name in tensors]
    config = {
        "model_type": family.model_type,
        "architectures": [family.hf_class],
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "hidden_size": hidden_size,
        "intermediate_size": _int(metadata.required(f"{arch}.feed_forward_length"), "feed_forward_length"),
        "num_hidden_layers": _int(metadata.required(f"{arch}.block_count"), "block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": _int(metadata.get(f"{arch}.context_length", 2048), "context_length"),
        "rms_norm_eps": float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": any(name.startswith("blk.{i}.attn_") and name.endswith(".bias") for name in names),
        "mlp_bias": any(name.startswith("blk.{i}.ffn_") and name.endswith(".bias") for name in names),
        "sliding_window": metadata.get(f"{arch}.attention.sliding_window"),
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    activation_key, activation = family.activation
    config[activation_key] = activation
    return config


def _int(value: Any, key: str) -> int:
    if not isinstance(value, int):
        raise LoadError(f"GGUF metadata {key} is {value!r}; jaxheads needs one integer (the same for every layer)")
    return value


def _rope_scaling(metadata: GGUFMetadata, arch: str) -> dict[str, Any] | None:
    """`rope_scaling` from the `{arch}.rope.scaling.*` metadata, or None when the file has none."""
    scaling_type = metadata.get(f"{arch}.rope.scaling.type")
    if scaling_type in (None, "none"):
        return None
    scaling = {"rope_type": scaling_type, "factor": float(metadata.required(f"{arch}.rope.scaling.factor"))}
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _llama3_rope_divisors(head_dim: int, rope_theta: float, scaling: Mapping[str, float]) -> np.ndarray:
    """The `[d/2]` divisors that Llama 3 RoPE scaling applies to the inverse frequencies (llama.cpp's rope_freqs)."""
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1 - smooth) / factor + smooth)


def _llama3_rope_scaling(divisors: np.ndarray, head_dim: int, rope_theta: float, path: pathlib.Path) -> dict[str, Any]:
    """Llama 3 `rope_scaling` recovered from `rope_freqs.weight` (llama.cpp writes no scaling metadata for it).

    The factor is the largest divisor; the other settings are Llama 3.x's, checked by recomputing every divisor.
    """
    scaling = {"rope_type": "llama3", "factor": float(divisors.max()), **LLAMA3_ROPE}
    expected = _llama3_rope_divisors(head_dim, rope_theta, scaling)
    if expected.shape != divisors.shape or not np.allclose(expected, divisors, rtol=1e-5):
        raise LoadError(f"{path} has a rope_freqs.weight tensor that is not Llama 3 RoPE scaling with "
                        f"{LLAMA3_ROPE}; jaxheads supports only that use of rope_freqs")
    return scaling


def _checked_path(path: str | os.PathLike) -> pathlib.Path:
    """The path of an existing file that starts with the GGUF magic bytes."""
    path = pathlib.Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise LoadError(f"no such GGUF file: {path}")
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise LoadError(f"{path} is not a GGUF file: it starts with {head!r}, not {GGUF_MAGIC!r}")
    return path


def load_gguf_tokenizer(path: str | os.PathLike):
    """The `transformers` tokenizer stored in a GGUF file, chat template included; None if the file has none."""
    path = _checked_path(path)
    metadata = GGUFMetadata(_reader(path))
    recipe = tokenizer_recipe(metadata, path, _family(metadata, path).model_type)
    return None if recipe is None else recipe.tokenizer()


@dataclasses.dataclass
class TokenizerRecipe:
    """A GGUF file's tokenizer as `transformers` builds it: a tokenizer class (by name) around a `tokenizers`
    backend, with arguments (special tokens, BOS/EOS flags, chat template: JSON values) from the metadata."""

    class_name: str
    backend: Any  # tokenizers.Tokenizer
    arguments: dict[str, Any]

    def tokenizer(self):
        return make_tokenizer(self.class_name, self.arguments, tokenizer_object=self.backend)


def make_tokenizer(class_name: str, arguments: dict[str, Any], **backend):
    """An instance of the `transformers` tokenizer class `class_name` with `arguments`, around a backend given as
    `tokenizer_object=` (a `tokenizers.Tokenizer`) or `tokenizer_file=` (a saved tokenizer.json), which it uses
    as it is (a class such as GemmaTokenizer builds its own backend only when given neither)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    return tokenizer_class_from_name(class_name)(**backend, **arguments)


# GGUF special-token keys (`tokenizer.ggml.*`) -> the `transformers` tokenizer argument they name
GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                       "pad_token": "padding_token_id"}


def tokenizer_recipe(metadata: GGUFMetadata, path: pathlib.Path, model_type: str) -> TokenizerRecipe | None:
    """How to build the `transformers` tokenizer that a GGUF file's `tokenizer.*` metadata describes; None if the
    file has no tokenizer.

    The recipe is what `AutoTokenizer.from_pretrained(directory, gguf_file=name)` builds (the tokenizer class that
    `transformers` maps `model_type` to, the `tokenizers` backend from `convert_gguf_tokenizer`, the special
    tokens, BOS/EOS flags and chat template of the metadata), but from metadata that `gguf.GGUFReader` has read:
    `transformers`' own GGUF reader imports PyTorch. Files next to the GGUF (a `tokenizer.json`, a chat template)
    play no part, whereas `transformers` lets them override the GGUF's.
    """
    tokenizer_type = metadata.get("tokenizer.ggml.model")
    if tokenizer_type is None:
        return None
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    # as transformers' `get_gguf_tokenizer`: the metadata under its argument names, in two groups
    grouped = {group: {name: metadata.get(f"tokenizer.{key}") for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    tokens = tokenizer_dict.get("tokens")
    if not tokens:
        raise LoadError(f"{path} names a {tokenizer_type!r} tokenizer but has no tokenizer.ggml.tokens vocabulary")
    if tokenizer_type == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
        tokenizer_config.setdefault("add_bos_token", True)
    for argument, key in GGUF_SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise LoadError(f"GGUF metadata tokenizer.ggml.{key} of {path} is {token_id}, outside its vocabulary "
                            f"of {len(tokens)} tokens")
        tokenizer_config[argument] = None if token_id is None else tokens[token_id]
    try:
        backend, extra_arguments = convert_gguf_tokenizer(metadata.required("general.architecture"), tokenizer_dict)
    except Exception as error:  # transformers raises several kinds for a tokenizer it cannot convert
        raise LoadError(f"could not build the {tokenizer_type!r} tokenizer of {path}: {error}") from error
    tokenizer_class = TOKENIZER_MAPPING.get(CONFIG_MAPPING[model_type], TokenizersBackend)
    return TokenizerRecipe(class_name=tokenizer_class.__name__, backend=backend,
                           arguments={"name_or_path": str(path.parent), **tokenizer_config, **extra_arguments})
