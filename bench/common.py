"""Helpers shared by the benchmarks: machine description, timing, matmul peak, AdvBench prompts."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp

import jaxheads.tpu  # noqa: F401  (before any device query: keeps libtpu quiet on a host without a TPU)

ADVBENCH_HELP = "AdvBench's harmful_behaviors CSV (column goal or input), passed by path"


def machine() -> str:
    """One line naming the CPU/accelerator the benchmark ran on."""
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device.platform}:{device.device_kind} x{jax.device_count()}; host {cpu}, {os.cpu_count()} cores; jax {jax.__version__}"


def best_time(fn, repeats: int = 3) -> float:
    """Fastest wall time of `fn()` over `repeats` runs (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_gflops(dtype=jnp.float32, size: int = 2048) -> float:
    """Measured GFLOP/s of a large square matmul: this device's practical peak for `dtype`."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    seconds = best_time(lambda: matmul(a).block_until_ready(), repeats=5)
    return 2 * size ** 3 / seconds / 1e9


def advbench(path: str | os.PathLike, limit: int) -> list[str]:
    """The first `limit` AdvBench instructions of the CSV at `path` (read as `jaxheads` reads any prompt file)."""
    from jaxheads.data.loaders import load_prompts

    return load_prompts(os.fspath(path), limit=limit)


def layer_flops(cfg, tokens: int, keys: int) -> float:
    """Multiply-add FLOPs of one decoder layer on `tokens` query positions attending `keys` positions."""
    D, N, K, d, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    projections = 2 * tokens * D * (N * d + 2 * K * d + N * d)
    attention = 2 * 2 * tokens * keys * N * d
    mlp = 2 * tokens * 3 * D * F
    return projections + attention + mlp
