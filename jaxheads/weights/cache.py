"""A cache of GGUF files converted to Hugging Face checkpoint directories, so that a GGUF is parsed once.

Reading a GGUF (its vocabulary above all) and dequantizing its tensors takes seconds to tens of seconds; a
converted copy (`config.json`, float32 `model.safetensors` under Hugging Face names and layout, the tokenizer's
`save_pretrained` files) loads through the plain checkpoint-directory path in a fraction of that, except for the
tokenizer, which is rebuilt as the GGUF's own (`load_tokenizer`).

Entries live under `<cache root>/gguf/<key>/`, the key hashing the GGUF's resolved path, size and modification
time, `FORMAT_VERSION` and the versions of the libraries that convert it (`gguf` dequantizes, `transformers`
builds the tokenizer), so a replaced file or a changed conversion gets a new entry. An entry is written in a
staging folder next to it and renamed into place, so readers never see half of one; its manifest lists every
file with its size, and an entry whose files do not match it is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import shutil
import struct
import tempfile
import uuid

import numpy as np

from jaxheads.errors import LoadError
from jaxheads.models.config import config_from_hf
from jaxheads.weights.gguf import GGUFTensors, make_tokenizer, read_gguf

FORMAT_VERSION = 1  # bump when what an entry holds, or how it is converted, changes
CACHE_DIR_ENV = "JAXHEADS_CACHE_DIR"
NO_CACHE_ENV = "JAXHEADS_NO_CACHE"
MANIFEST = "jaxheads-cache.json"
CONVERTING_LIBRARIES = ("gguf", "transformers", "tokenizers")


def cache_root() -> pathlib.Path:
    """`$JAXHEADS_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxheads`, else `~/.cache/jaxheads`."""
    if os.environ.get(CACHE_DIR_ENV):
        return pathlib.Path(os.path.expanduser(os.environ[CACHE_DIR_ENV]))
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]) / "jaxheads"
    return pathlib.Path.home() / ".cache" / "jaxheads"


def disabled_by_environment() -> bool:
    """Whether `$JAXHEADS_NO_CACHE` is set to something other than empty or 0."""
    return os.environ.get(NO_CACHE_ENV, "") not in ("", "0")


def gguf_key(path: pathlib.Path) -> str:
    """The cache key of a GGUF file: a hash of its resolved path, size, mtime_ns and the conversion's versions."""
    resolved = path.resolve()
    stat = resolved.stat()
    identity = {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": FORMAT_VERSION,
                **{library: importlib.metadata.version(library) for library in CONVERTING_LIBRARIES}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def gguf_entry(path: pathlib.Path) -> pathlib.Path:
    """Where the converted copy of a GGUF file lives (whether or not it exists yet)."""
    return cache_root() / "gguf" / gguf_key(path)


def cached_gguf(path: pathlib.Path) -> tuple[pathlib.Path, bool]:
    """The cache entry of a GGUF file, converted now if it is missing or damaged; and whether it was converted now.

    Raises OSError when the cache folder cannot be written, LoadError for a GGUF that cannot be converted.
    """
    entry = gguf_entry(path)
    if is_complete(entry):
        return entry, False
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".staging", dir=entry.parent))
    try:
        convert_gguf(path, staging)
        return entry, _install(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place


def convert_gguf(path: pathlib.Path, directory: pathlib.Path) -> None:
    """Writes a GGUF file as a checkpoint directory: config.json, float32 model.safetensors, tokenizer files and
    the manifest (last, so that a directory with a manifest is complete)."""
    checkpoint = read_gguf(path)
    config_from_hf(checkpoint.config)  # a config jaxheads cannot use is refused before anything is written
    recipe = checkpoint.tokenizer_recipe()
    (directory / "config.json").write_text(json.dumps(checkpoint.config, indent=2))
    write_safetensors(directory / "model.safetensors", checkpoint.tensors)
    if recipe is not None:
        recipe.tokenizer().save_pretrained(directory)
    stat = path.stat()
    files = {str(file.relative_to(directory)): file.stat().st_size
             for file in sorted(directory.rglob("*")) if file.is_file()}
    manifest = {
        "format": FORMAT_VERSION,
        "source": {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "files": files,
        "tokenizer": None if recipe is None else {"class": recipe.class_name, "arguments": recipe.arguments},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def load_tokenizer(entry: pathlib.Path):
    """The tokenizer of an entry, built as from the GGUF: the class and arguments its manifest records around the
    saved tokenizer.json (the GGUF tokenizer's backend as written); None if the GGUF has no tokenizer.

    `AutoTokenizer` on the entry would pick the class for the model type, and a class with its own `__init__`
    rebuilds its normalizer and pre-tokenizer from its defaults (Qwen2Tokenizer adds NFC normalization, which
    the GGUF tokenizer does not do), so it could tokenize differently from the GGUF.
    """
    try:
        recipe = json.loads((entry / MANIFEST).read_text())["tokenizer"]
        if recipe is None:
            return None
        return make_tokenizer(recipe["class"], recipe["arguments"], tokenizer_file=str(entry / "tokenizer.json"))
    except Exception as error:  # a damaged entry: missing or unreadable files, raised as several kinds
        raise LoadError(f"could not load the tokenizer cached in {entry}: {error}") from error


def write_safetensors(path: pathlib.Path, tensors: GGUFTensors) -> None:
    """Writes the tensors as one float32 safetensors file, dequantizing one tensor at a time (the header, which
    comes first, needs only their shapes), so that memory holds one tensor rather than the whole model."""
    header, offset = {}, 0
    for name in tensors:
        shape = tensors.shape(name)
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, values in tensors.items():
            if values.shape != tuple(header[name]["shape"]):
                raise LoadError(f"tensor {name!r} dequantized to shape {values.shape}, not its stated "
                                f"{tuple(header[name]['shape'])}")
            handle.write(np.ascontiguousarray(values, dtype="<f4").data)


def is_complete(entry: pathlib.Path) -> bool:
    """Whether an entry has its manifest and every file the manifest lists (config and weights at least), each
    of the size it was written with."""
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        return {"config.json", "model.safetensors"} <= files.keys() and all(
            (entry / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, unreadable or not a manifest
        return False


def discard(entry: pathlib.Path) -> None:
    """Removes an entry: renamed aside first (atomic), so that no reader finds it half deleted."""
    trash = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}.trash")
    try:
        entry.rename(trash)
    except FileNotFoundError:  # not there, or another process removed it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def _install(staging: pathlib.Path, entry: pathlib.Path) -> bool:
    """Renames a complete staging folder to the entry; True if it became the entry, False if another process
    installed a complete entry first (its entry is then used, and the staging folder is left to be removed)."""
    try:
        staging.rename(entry)
        return True
    except OSError:  # the entry exists: a concurrent writer finished first, or it is damaged
        if is_complete(entry):
            return False
    discard(entry)
    try:
        staging.rename(entry)
        return True
    except OSError:
        if is_complete(entry):  # another process replaced the damaged entry in between
            return False
        raise
