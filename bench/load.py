"""Seconds of the first and second `jaxheads.load()` of each packaged GGUF model (SmolLM2-135M-Instruct, the
default, and Gemma-3-270M when its package is installed) with a fresh, empty cache folder, in one run: the first
load parses the GGUF and converts it into the cache, the second reads the converted copy. A load with
`cache=False` (parsing the GGUF, as every load did before the cache) is timed beside them.

Then the cost of the model fingerprint (`jaxheads.weights.digest`) in each load from the cache: the GGUF's
sampled digest plus the check of its cache entry against the digests written with it, and with
`--verify_weights` the full sha256 of the GGUF and of every entry file; and, from the bytes each reads and the
rates measured here, an estimate for a 7B model in bfloat16 (13.5 GB in two safetensors shards).

    python bench/load.py
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jaxheads
from bench.common import machine
from jaxheads.errors import LoadError
from jaxheads.weights import cache, digest
from jaxheads.weights.packaged import PACKAGED_MODELS


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main():
    # what both kinds of load import on first use, imported before any timing so that neither pays for it
    import transformers.integrations.gguf.gguf_tokenizer_mapping  # noqa: F401
    import transformers.models.auto.tokenization_auto  # noqa: F401

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="jaxheads-load-bench-") as folder:
        os.environ[cache.CACHE_DIR_ENV] = folder
        os.environ.pop(cache.NO_CACHE_ENV, None)
        print(f"cache folder: {folder} (fresh, removed afterwards)")
        for name, (finder, label) in PACKAGED_MODELS.items():
            try:
                path = finder()  # Gemma's package assembles its file on first use: not timed
            except LoadError as error:
                print(f"{name}: skipped, {error}")
                continue
            first = timed(lambda: jaxheads.load(name))
            second = timed(lambda: jaxheads.load(name))
            direct = timed(lambda: jaxheads.load(name, cache=False))
            entry = cache.gguf_entry(path)
            size = sum(file.stat().st_size for file in entry.iterdir()) / 2**20
            print(f"{label}: GGUF {path.stat().st_size / 2**20:.0f} MiB, cache entry {size:.0f} MiB")
            print(f"  first load (parse + convert into the cache) {first:6.2f} s | second load (from the cache) "
                  f"{second:5.2f} s | ratio {first / second:5.1f}x | cache=False load {direct:6.2f} s "
                  f"({direct / second:.1f}x the second)")
            fingerprint_cost(path, entry)


def fingerprint_cost(path: pathlib.Path, entry: pathlib.Path) -> None:
    """Seconds of the fingerprint of one load from the cache (sampled, and full as --verify_weights does it), each
    the best of 3 (the files in the page cache), and the estimate for a 7B checkpoint from the bytes read."""
    files = [path] + sorted(file for file in entry.iterdir() if file.name != cache.MANIFEST)
    sampled = min(timed(lambda: (digest.file_digest(path), cache.entry_damage(entry))) for _ in range(3))
    full = min(timed(lambda: (digest.file_digest(path, full=True), cache.entry_damage(entry, full=True)))
               for _ in range(3))
    read_sampled = sum(digest.bytes_read(file.stat().st_size, file.name) for file in files)
    read_full = sum(file.stat().st_size for file in files)
    print(f"  fingerprint per load: sampled {sampled:.3f} s ({read_sampled / 2**20:.1f} MiB read of "
          f"{read_full / 2**20:.0f} MiB) | --verify_weights {full:.2f} s ({read_full / 2**20 / full:.0f} MiB/s)")
    shards = [int(6.74e9)] * 2  # a 7B model in bfloat16: 13.5 GB
    read_7b = sum(digest.bytes_read(size, "model.safetensors") for size in shards)
    print(f"  7B estimate (2 shards of 6.74 GB): sampled {read_7b / 2**20:.0f} MiB read, "
          f"{read_7b / (read_sampled / sampled):.2f} s at this load's sampled rate | full hash "
          f"{sum(shards) / (read_full / full):.0f} s at {read_full / 2**20 / full:.0f} MiB/s")


if __name__ == "__main__":
    main()
