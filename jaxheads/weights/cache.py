"""A cache of GGUF files converted to Hugging Face checkpoint directories, so that a GGUF is parsed once.

Reading a GGUF (its vocabulary above all) and dequantizing its tensors takes seconds to tens of seconds; a
converted copy (`config.json`, float32 `model.safetensors` under Hugging Face names and layout, the tokenizer's
`save_pretrained` files) loads through the plain checkpoint-directory path in a fraction of that, except for the
tokenizer, which is rebuilt as the GGUF's own (`load_tokenizer`).

Entries live under `<cache root>/gguf/<key>/`, the key hashing the GGUF's resolved path, size, modification
time and content digest (`jaxheads.weights.digest`: its metadata in full and sampled blocks of its tensors),
`FORMAT_VERSION` and the versions of the libraries that convert it (`gguf` dequantizes, `transformers` builds the
tokenizer), so a replaced file (even one of the same size and modification time) or a changed conversion gets a
new entry. An entry is written in a staging folder next to it and renamed into place, so readers never see half
of one. Its manifest lists every file with its size, its full sha256 and its sampled digest, all taken at write
time; a read checks each file's size and sampled digest (each small file, such as config.json and the tokenizer,
is hashed in full), or every file's full sha256 with `full=True`, and an entry whose files do not match is
reported on stderr in one line and converted again. The manifest's `content` (a hash of every file's sha256)
names the entry in the fingerprint of a run that read it.
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
import sys
import tempfile
import uuid

import numpy as np

from jaxheads.errors import LoadError
from jaxheads.models.config import config_from_hf
from jaxheads.weights.digest import file_digest
from jaxheads.weights.gguf import GGUFTensors, make_tokenizer, read_gguf

try:  # where JAX reads its persistent compilation cache (`heal_compilation_cache`); private, so it may move
    from jax._src import compilation_cache as _compilation_cache
    from jax._src import compiler as _compiler
    _JAX_COMPILATION_CACHE = (_compilation_cache, _compiler)
except ImportError:
    _JAX_COMPILATION_CACHE = (None, None)

FORMAT_VERSION = 2  # bump when what an entry holds, or how it is converted, changes
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


def gguf_key(path: pathlib.Path, digest: str | None = None) -> str:
    """The cache key of a GGUF file: a hash of its resolved path, size, mtime_ns, content digest (`digest`, the
    file's `file_digest`, computed when not given) and the conversion's versions."""
    resolved = path.resolve()
    stat = resolved.stat()
    identity = {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": FORMAT_VERSION,
                "digest": digest or file_digest(resolved),
                **{library: importlib.metadata.version(library) for library in CONVERTING_LIBRARIES}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def gguf_entry(path: pathlib.Path, digest: str | None = None) -> pathlib.Path:
    """Where the converted copy of a GGUF file lives (whether or not it exists yet)."""
    return cache_root() / "gguf" / gguf_key(path, digest)


def cached_gguf(path: pathlib.Path, digest: str | None = None, full: bool = False) -> tuple[pathlib.Path, bool]:
    """The cache entry of a GGUF file, converted now if it is missing or damaged (a damaged one is reported on
    stderr); and whether it was converted now. `digest`: the GGUF's `file_digest` when already known; `full`:
    check the entry's files against their full sha256 rather than their sampled digests.

    Raises OSError when the cache folder cannot be written, LoadError for a GGUF that cannot be converted.
    """
    entry = gguf_entry(path, digest)
    damage = entry_damage(entry, full)
    if damage is None:
        return entry, False
    if (entry / MANIFEST).exists():
        sys.stderr.write(f"jaxheads: the cached conversion {entry} is damaged ({damage}); converting {path} again\n")
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
    files = {str(file.relative_to(directory)): {"size": file.stat().st_size, "sha256": file_digest(file, full=True),
                                                "digest": file_digest(file)}
             for file in sorted(directory.rglob("*")) if file.is_file()}
    manifest = {
        "format": FORMAT_VERSION,
        "source": {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "files": files,
        "content": hashlib.sha256(json.dumps({name: file["sha256"] for name, file in files.items()},
                                             sort_keys=True).encode()).hexdigest(),
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


def is_complete(entry: pathlib.Path, full: bool = False) -> bool:
    """Whether an entry has its manifest and every file the manifest lists (config and weights at least), each
    as it was written (`entry_damage`)."""
    return entry_damage(entry, full) is None


def entry_damage(entry: pathlib.Path, full: bool = False) -> str | None:
    """What is wrong with an entry, in a few words, or None when it has its manifest and every file it lists
    (config and weights at least) has the size and sampled digest it was written with (its full sha256 with
    `full`)."""
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        missing = {"config.json", "model.safetensors"} - files.keys()
        if missing:
            return f"its manifest lists no {', '.join(sorted(missing))}"
        for name, recorded in files.items():
            file = entry / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != recorded["size"]:
                return f"{name} has {file.stat().st_size} bytes, not the {recorded['size']} written"
            if file_digest(file, full) != recorded["sha256" if full else "digest"]:
                return f"the content of {name} differs from what was written"
        return None
    except OSError as error:
        return f"cannot read it: {error}"
    except (ValueError, KeyError, TypeError, AttributeError):  # not a manifest of this format
        return f"{MANIFEST} is missing or not a manifest of format {FORMAT_VERSION}"


def entry_content(entry: pathlib.Path) -> str:
    """The content hash the manifest of a complete entry records (a hash of every file's sha256)."""
    return json.loads((entry / MANIFEST).read_text())["content"]


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


def heal_compilation_cache(directory: pathlib.Path) -> bool:
    """Makes JAX's persistent compilation cache in `directory` replace entries it cannot read: JAX warns about such
    an entry and compiles again, but never overwrites an existing entry, so a damaged one would be warned about on
    every run. Here an entry that fails to load is removed (said in one line on stderr) before JAX compiles, so
    the fresh compilation is written in its place. Returns False where this JAX has no such hook (nothing done)."""
    compilation_cache, compiler = _JAX_COMPILATION_CACHE
    if compilation_cache is None:
        return False
    read = getattr(compilation_cache, "get_executable_and_time", None)
    if read is None or getattr(compiler, "compilation_cache", None) is not compilation_cache:
        return False
    if getattr(read, "_jaxheads_heals", False):  # already installed
        return True

    def healing_read(cache_key, *args, **kwargs):
        try:
            return read(cache_key, *args, **kwargs)
        except Exception as error:
            if isinstance(error, getattr(compilation_cache, "CacheVerificationError", ())):
                raise
            removed = [path for path in (directory / f"{cache_key}-cache", directory / f"{cache_key}-atime")
                       if path.exists()]
            for path in removed:
                path.unlink(missing_ok=True)
            if removed:
                sys.stderr.write(f"jaxheads: removed the unreadable compilation cache entry {removed[0]} "
                                 f"({type(error).__name__}); compiling it again\n")
            raise

    healing_read._jaxheads_heals = True
    compilation_cache.get_executable_and_time = healing_read
    return True
