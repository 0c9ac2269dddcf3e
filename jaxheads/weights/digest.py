"""Content hashes of model files that stay cheap for checkpoints of hundreds of gigabytes.

`file_digest(path)` hashes a file in full when it is small (at most `SMALL_FILE` bytes: configs, tokenizers, a
tiny model's weights), and otherwise its size, its header (a safetensors file's whole JSON header: every tensor's
name, dtype, shape and offsets; the first `GGUF_HEAD` bytes of a GGUF, which hold its metadata: vocabulary, chat
template, hyperparameters) and `BLOCK` bytes every `stride(size)` bytes (and the last block). Any change to a
run of at least `stride(size)` consecutive bytes, and any change of the header, is seen; a smaller change
elsewhere only by the full hash, `file_digest(path, full=True)` (`--verify_weights`). The two kinds are told
apart by their prefix ("sha256:" and "sampled:"), and a small file's sampled digest is its full one.
"""

from __future__ import annotations

import hashlib
import os
import struct

BLOCK = 16 * 1024
SMALL_FILE = 8 * 1024 * 1024
MIN_STRIDE = 1024 * 1024
MAX_BLOCKS = 4096
GGUF_HEAD = 16 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_READ = 8 * 1024 * 1024


def stride(size: int) -> int:
    """Bytes between the starts of two sampled blocks of a file of `size` bytes: 1 MiB, or more so that at most
    `MAX_BLOCKS` blocks are read."""
    return max(MIN_STRIDE, -(-size // MAX_BLOCKS))


def file_digest(path: str | os.PathLike, full: bool = False) -> str:
    """"sha256:HEX" of the whole file (with `full`, or for a small file), else "sampled:HEX" of its size, header
    and sampled blocks (see the module docstring)."""
    size = os.stat(path).st_size
    with open(path, "rb") as handle:
        if full or size <= SMALL_FILE:
            digest = hashlib.sha256()
            while chunk := handle.read(_READ):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        digest = hashlib.sha256(struct.pack("<Q", size))
        head = _head_length(handle, size, os.fspath(path))
        handle.seek(0)
        digest.update(handle.read(head))
        step = stride(size)
        offsets = list(range(head, size - BLOCK, step)) + [size - BLOCK]
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(BLOCK))
        return f"sampled:{digest.hexdigest()}"


def _head_length(handle, size: int, path: str) -> int:
    """Bytes at the start of a file hashed in full: a safetensors file's length prefix and JSON header, the first
    `GGUF_HEAD` bytes of a GGUF, one block of anything else."""
    prefix = handle.read(8)
    if path.endswith(".safetensors") and len(prefix) == 8:
        length = struct.unpack("<Q", prefix)[0]
        if length <= min(MAX_SAFETENSORS_HEADER, size - 8):
            return 8 + length
    if prefix[:4] == b"GGUF":
        return min(size, GGUF_HEAD)
    return min(size, BLOCK)


def bytes_read(size: int, path: str = "") -> int:
    """About how many bytes `file_digest` reads for a file of `size` bytes (the header counted as one block, or
    `GGUF_HEAD` for a .gguf): the cost of a fingerprint for checkpoints too big to time here."""
    if size <= SMALL_FILE:
        return size
    head = min(size, GGUF_HEAD) if path.endswith(".gguf") else BLOCK
    return head + BLOCK * (len(range(head, size - BLOCK, stride(size))) + 1)
