"""Seconds of the first and second `jaxheads.load()` of each packaged GGUF model (SmolLM2-135M-Instruct, the
default, and Gemma-3-270M when its package is installed) with a fresh, empty cache folder, in one run: the first
load parses the GGUF and converts it into the cache, the second reads the converted copy. A load with
`cache=False` (parsing the GGUF, as every load did before the cache) is timed beside them.

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
from jaxheads.weights import cache
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


if __name__ == "__main__":
    main()
