"""Building a model's parameters from checkpoint tensors: which tensor fills each parameter (checked from the
tensors' names and shapes before anything is read), and each parameter built shard by shard, every shard from
the block of the Hugging Face tensor that holds it, read on its own (`jaxheads.loading.load` reads safetensors
files and GGUF tensors this way)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxheads.errors import LoadError
from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.models.decoder import Decoder
from jaxheads.sharding import Layout

IGNORED_WEIGHTS = re.compile(r".*rotary_emb\.inv_freq$|^(model\.)?(vision_tower|multi_modal_projector)\.")
# Gemma 3 multimodal checkpoints keep the text decoder under `model.language_model.` (transformers >= 4.52) or
# `language_model.model.` (earlier); both are read as the text model's `model.` (its LM head likewise).
TEXT_DECODER_PREFIX = re.compile(r"^(model\.language_model\.|language_model\.model\.)")
TEXT_LM_HEAD = "language_model.lm_head.weight"
MISSING_WEIGHTS_SHOWN = 8  # a LoadError names this many missing weights, then counts the rest


def _weight_patterns(cfg: ModelConfig) -> list[tuple[re.Pattern, str, str]]:
    rows = []
    for hf_name, (param, layout) in param_table.checkpoint_names(cfg).items():
        regex = re.escape(hf_name).replace(r"\{i\}", r"(\d+)")
        rows.append((re.compile(f"^{regex}$"), param, layout))
    return rows


def module_from_tensors(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], dtype=jnp.float32) -> Decoder:
    """The NNX module of Hugging Face-named tensors (torch layout) held in memory, checked and built as a
    checkpoint's are (`plan_weights`, `build_module`)."""
    return build_module(cfg, MappingSource(dict(tensors)), dtype)


def _text_model_name(hf_name: str) -> str:
    """A checkpoint's tensor name as the text model's (a multimodal Gemma 3 keeps its decoder under a prefix)."""
    return "lm_head.weight" if hf_name == TEXT_LM_HEAD else TEXT_DECODER_PREFIX.sub("model.", hf_name)


def _ignored(cfg: ModelConfig, hf_name: str) -> bool:
    """Whether a tensor is not read: RoPE buffers, vision towers, and the LM head of tied embeddings."""
    return bool(IGNORED_WEIGHTS.match(hf_name)) or (hf_name == "lm_head.weight" and cfg.tie_word_embeddings)


def _raise_missing(cfg: ModelConfig, filled: dict[str, set[int | None]]) -> None:
    missing = _missing_weights(cfg, filled)
    if missing:
        shown = ", ".join(missing[:MISSING_WEIGHTS_SHOWN])
        more = f" and {len(missing) - MISSING_WEIGHTS_SHOWN} more" if len(missing) > MISSING_WEIGHTS_SHOWN else ""
        raise LoadError(f"checkpoint is missing weights: {shown}{more}")


def _missing_weights(cfg: ModelConfig, filled: dict[str, set[int | None]]) -> list[str]:
    """The Hugging Face names of the weights that `filled` (parameter -> layers seen, None for a global
    parameter) lacks: global ones first, then layer by layer."""
    hf_names = {param: hf_name for hf_name, (param, _) in param_table.checkpoint_names(cfg).items()}
    missing = [hf_names[param] for param, seen in filled.items() if param in param_table.GLOBAL_PARAMS and not seen]
    for layer in range(cfg.num_layers):
        missing += [hf_names[param].format(i=layer) for param, seen in filled.items()
                    if param not in param_table.GLOBAL_PARAMS and layer not in seen]
    return missing


def module_from_arrays(cfg: ModelConfig, arrays: dict[str, Any], dtype=jnp.float32,
                       layout: Layout | None = None, remat: bool = False) -> Decoder:
    """An NNX module whose parameters are `arrays` (jaxheads names and layouts), without random init, holding
    `layout` (None: one device) and `remat` (`Decoder.remat`). Under `jit` with a layout, each parameter is
    constrained to its layout once cast to `dtype`, so the cast copy (and its gradient, in training) stays split as
    the parameter is."""
    names = param_table.shapes(cfg)
    params = {name: jnp.asarray(arrays[name], dtype) for name in names}
    if layout is not None:
        axes = param_table.logical_axes(cfg)
        params = {name: layout.constrain(value, axes[name]) for name, value in params.items()}
    module = _module_with(cfg, params, dtype, layout)
    module.remat = remat
    return module


def _module_with(cfg: ModelConfig, params: dict[str, jax.Array], dtype, layout: Layout | None = None) -> Decoder:
    """An NNX module holding the arrays `params` themselves (already of `dtype`, wherever they are placed), with
    `layout` (None: one device)."""
    abstract = nnx.eval_shape(lambda: Decoder(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    abstract.layout = layout
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


# Building parameters in place: from a checkpoint's tensor names and shapes (headers only) a plan says which
# tensor fills each parameter (per layer); each parameter is then built shard by shard, every shard from the
# block of the Hugging Face tensor that holds it, read on its own.

@dataclasses.dataclass
class WeightSource:
    """Where a jaxheads parameter comes from: its layout change and the checkpoint tensor of each layer (None
    for a parameter without layers)."""

    layout: str
    names: dict[int | None, str]


class MappingSource:
    """The tensors of a mapping (name -> array; a `GGUFTensors` dequantizes one at each lookup) read as
    `SafetensorsSource` reads files: one tensor is looked up, its blocks read, and it is dropped. A lookup may
    compute the whole tensor, so each is looked up once per parameter (`whole_tensors`)."""

    whole_tensors = True

    def __init__(self, tensors: Mapping[str, Any]):
        self._tensors = tensors
        shape = getattr(tensors, "shape", None)  # GGUFTensors: without dequantizing
        self.shapes = {name: tuple(shape(name)) if callable(shape) else tuple(np.shape(tensors[name]))
                       for name in tensors}

    @contextlib.contextmanager
    def tensor(self, name: str):
        yield np.asarray(self._tensors[name])

    @staticmethod
    def read(tensor, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return tensor[index]


def plan_weights(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, WeightSource]:
    """Which checkpoint tensor (of `shapes`: name -> shape) fills each parameter, checked before anything is read:
    an unexpected tensor, one whose shape does not fit the config, and missing ones raise LoadErrors."""
    param_shapes = param_table.shapes(cfg)
    patterns = _weight_patterns(cfg)
    plan: dict[str, WeightSource] = {}
    filled: dict[str, set[int | None]] = {name: set() for name in param_shapes}
    for stored, shape in shapes.items():
        hf_name = _text_model_name(stored)
        if _ignored(cfg, hf_name):
            continue
        for regex, param, layout in patterns:
            found = regex.match(hf_name)
            if found:
                break
        else:
            raise LoadError(f"unexpected weight {hf_name!r} for a {cfg.model_type} model")
        if param not in param_shapes:
            raise LoadError(f"weight {hf_name!r} does not fit the config of this {cfg.model_type} model")
        layer = int(found.group(1)) if found.groups() else None
        expected = param_shapes[param] if layer is None else param_shapes[param][1:]
        if (layer is not None and layer >= cfg.num_layers) or tuple(shape) != param_table.hf_shape(layout, expected):
            raise LoadError(f"weight {hf_name!r} of shape {tuple(shape)} does not fit the config")
        plan.setdefault(param, WeightSource(layout, {})).names[layer] = stored
        filled[param].add(layer)
    _raise_missing(cfg, filled)
    return plan


def hf_block(layout: str, bounds: tuple[tuple[int, int], ...], cfg: ModelConfig):
    """`(index, arrange)` for the block `bounds` ((start, stop) per axis) of one layer of a jaxheads parameter:
    the block `index` of the Hugging Face tensor that holds it, and the function that turns that block into it
    (`params.to_param` on a block: transposed, heads split out of the flat `H*d` axis, whose whole heads are read,
    then cut down to the head-dimension range asked)."""
    d = cfg.head_dim

    def whole_heads(heads: tuple[int, int]) -> tuple[slice, int]:
        return slice(heads[0] * d, heads[1] * d), heads[1] - heads[0]

    if layout == "transpose":  # [a, b] <- [b, a]
        return (slice(*bounds[1]), slice(*bounds[0])), lambda block: block.T
    if layout == "in_heads":  # [D, H, d] <- [H*d, D]
        hidden, heads, within = bounds
        rows, count = whole_heads(heads)
        return (rows, slice(*hidden)), lambda block: block.T.reshape(-1, count, d)[:, :, slice(*within)]
    if layout == "out_heads":  # [H, d, D] <- [D, H*d]
        heads, within, hidden = bounds
        columns, count = whole_heads(heads)
        return (slice(*hidden), columns), lambda block: block.T.reshape(count, d, -1)[:, slice(*within), :]
    if layout == "heads":  # [H, d] <- [H*d]
        heads, within = bounds
        rows, count = whole_heads(heads)
        return (rows,), lambda block: block.reshape(count, d)[:, slice(*within)]
    return tuple(slice(*axis) for axis in bounds), lambda block: block


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(start, stop) per axis of a shard's index (as `Sharding.addressable_devices_indices_map` gives it)."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(axis.indices(size)[:2] for axis, size in zip(index, shape))


def build_parameter(cfg: ModelConfig, source, weight: WeightSource, shape: tuple[int, ...], dtype,
                    sharding: NamedSharding | None = None) -> jax.Array:
    """One parameter of `shape`, from the tensors `weight` names in `source`, in `dtype`.

    With a `sharding`, only the distinct shards this process's devices hold are built (`shards_from_source`),
    put on their devices and dropped: one shard at a time from files, which read any block cheaply, so the host
    holds one shard of one parameter beyond what is placed; all of this process's shards of the parameter
    together from a source that computes whole tensors (`whole_tensors`: a GGUF dequantizes each once). Without
    one, the whole parameter is built so and placed on the default device."""
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == jnp.bfloat16 else np.dtype(np.float32)
    if sharding is None:
        whole = tuple((0, size) for size in shape)
        return jnp.asarray(shards_from_source(cfg, source, weight, [whole], np_dtype)[whole])
    holders: dict[tuple[tuple[int, int], ...], list] = {}
    for device, index in sharding.addressable_devices_indices_map(tuple(shape)).items():
        holders.setdefault(_bounds(index, shape), []).append(device)
    groups = [list(holders)] if getattr(source, "whole_tensors", False) else [[bounds] for bounds in holders]
    placed = []
    for group in groups:
        hosts = shards_from_source(cfg, source, weight, group, np_dtype)
        for bounds in group:
            host = hosts.pop(bounds)
            placed += jax.block_until_ready([jax.device_put(host, device) for device in holders[bounds]])
            del host
    return jax.make_array_from_single_device_arrays(tuple(shape), sharding, placed)


def shards_from_source(cfg: ModelConfig, source, weight: WeightSource, shards: list[tuple[tuple[int, int], ...]],
                       np_dtype) -> dict[tuple[tuple[int, int], ...], np.ndarray]:
    """The blocks `shards` ((start, stop) per axis each) of a parameter as host arrays of `np_dtype`, read
    tensor by tensor (layer by layer for a `[L, ...]` parameter, each layer's tensor looked up once for all the
    shards that span it), each block rearranged (`hf_block`) and converted to `np_dtype` on its own."""
    buffers = {bounds: np.empty([stop - start for start, stop in bounds], np_dtype) for bounds in shards}
    stacked = None not in weight.names
    for layer in sorted(weight.names, key=lambda layer: -1 if layer is None else layer):
        spanning = [bounds for bounds in shards if not stacked or bounds[0][0] <= layer < bounds[0][1]]
        if not spanning:
            continue
        stored = weight.names[layer]
        with source.tensor(stored) as tensor:
            for bounds in spanning:
                index, arrange = hf_block(weight.layout, bounds[1:] if stacked else bounds, cfg)
                block = arrange(source.read(tensor, stored, index))
                if block.dtype != np_dtype and block.dtype != np.float32:
                    block = block.astype(np.float32)  # float16 and others: exactly, then rounded once
                if stacked:
                    buffers[bounds][layer - bounds[0][0]] = block
                else:
                    buffers[bounds][...] = block
    return buffers


def build_module(cfg: ModelConfig, source, dtype, layout: Layout | None = None):
    """The NNX module of `cfg` with every parameter built from `source` by `build_parameter` (placed by `layout`,
    which the module then holds, or on the default device), one parameter at a time, after `plan_weights` checked
    the tensors."""
    plan = plan_weights(cfg, source.shapes)
    shardings = None if layout is None else layout.parameter_shardings(param_table.logical_axes(cfg),
                                                                       param_table.shapes(cfg))
    params = {name: build_parameter(cfg, source, plan[name], shape, dtype,
                                    None if shardings is None else shardings[name])
              for name, shape in param_table.shapes(cfg).items()}
    return _module_with(cfg, params, dtype, layout)


