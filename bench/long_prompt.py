"""Peak memory and time of a query-level Ships scan of one long prompt, dense attention kernel vs blocked, on a
randomly initialised model (no download): 512, 1024, 2048 and 4096 tokens, each kernel forced at each length
(by default lengths up to 1024 run dense and longer ones blocked). Each measurement runs in a fresh subprocess,
so compilation caches and memory high-water marks do not carry over; a dense run whose estimated activations
(`scan.ablation_bytes`) would not fit in half the available memory is reported, not run.

    python bench/long_prompt.py                     # tiny shape (hidden 64, 3 layers, 4 heads), as the tests
    python bench/long_prompt.py --shape=small --lengths=512,1024,2048
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SHAPES = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
                 head_dim=16),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                  num_kv_heads=4, head_dim=32),
}
CHUNK = 16
KERNELS = ("dense", "blocked")


def status_bytes(field: str) -> int | None:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_bytes() -> int:
    """Memory a run may use: the accelerator's free memory, else the host's MemAvailable."""
    import jax

    from jaxheads.scan import free_device_bytes

    free = free_device_bytes(jax.devices()[0])
    if free is not None:
        return free
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no memory statistics")


def kernel_for(name: str):
    from jaxheads.attention import AttentionKernel

    return AttentionKernel(dense_max_keys=10 ** 9) if name == "dense" else AttentionKernel(dense_max_keys=0)


def estimate(cfg, tokens: int, kernel_name: str) -> int:
    """Estimated activations of one device call: the ablations vmapped together (single heads share a first layer
    by N) times `scan.ablation_bytes`."""
    from jaxheads.scan import ablation_bytes

    return min(CHUNK, cfg.num_heads) * ablation_bytes(cfg, 1, tokens, 4, kernel_for(kernel_name))


def measure(shape: str, tokens: int, kernel_name: str) -> dict:
    """One scan (run twice: with and then without compilation) in this process; peak memory above the baseline
    after building the model, from the kernel's RSS high-water mark reset just before the scan."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxheads import ships
    from jaxheads.loading import Model
    from jaxheads.models.config import ModelConfig
    from jaxheads.models.decoder import Decoder

    cfg = ModelConfig(model_type="llama", **SHAPES[shape], max_position_embeddings=max(tokens, 4096))
    module = Decoder(cfg, rngs=nnx.Rngs(0))
    module.attention_kernel = kernel_for(kernel_name)
    model = Model(name=f"random-{shape}", config=cfg, tokenizer=None, module=module)
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, cfg.vocab_size, tokens)]
    jax.block_until_ready(nnx.state(module))
    try:
        with open("/proc/self/clear_refs", "w") as handle:  # count the high-water mark from here on
            handle.write("5")
        baseline = status_bytes("VmRSS")
    except OSError:
        baseline = None
    started = time.perf_counter()
    scores = ships.query_level(model, [prompt], "ua", batch_size=1, chunk_size=CHUNK)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    ships.query_level(model, [prompt], "ua", batch_size=1, chunk_size=CHUNK)
    warm = time.perf_counter() - started
    peak = status_bytes("VmHWM")
    stats = jax.devices()[0].memory_stats() or {}
    return dict(cold=cold, warm=warm, host_peak=None if baseline is None else peak - baseline,
                device_peak=stats.get("peak_bytes_in_use"), mean_score=float(np.mean(scores)),
                scores=np.asarray(scores).ravel().tolist())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--one", nargs=2, metavar=("TOKENS", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.shape, int(args.one[0]), args.one[1])))
        return

    from bench.common import machine
    from jaxheads.models.config import ModelConfig

    cfg = ModelConfig(model_type="llama", **SHAPES[args.shape], max_position_embeddings=4096)
    print(f"machine: {machine()}")
    print(f"model: random {args.shape} Llama (L={cfg.num_layers}, N={cfg.num_heads}, K={cfg.num_kv_heads}, "
          f"d={cfg.head_dim}, D={cfg.hidden_size}, float32); query-level Ships (ua) of one prompt, "
          f"{cfg.num_layers * cfg.num_heads} single-head ablations, chunk_size={CHUNK}")
    print("kernels: dense = float32 logits and probabilities [B, N, T, T] per layer; blocked = online softmax over "
          "256x256 tiles (default kernel above 1024 keys)")
    budget = available_bytes() // 2
    header = f"{'tokens':>6}  {'kernel':<8} {'first call s':>12} {'second call s':>13} {'peak memory':>14} " \
             f"{'estimated activations':>22}  max |score diff|"
    print(header)
    for tokens in [int(n) for n in args.lengths.split(",")]:
        results = {}
        for kernel_name in KERNELS:
            needed = estimate(cfg, tokens, kernel_name)
            label = f"{tokens:>6}  {kernel_name:<8}"
            if needed > budget:
                print(f"{label} {'not run':>12} {'':>13} {'':>14} {needed / 2**30:>18.2f} GiB  "
                      f"(over half the available {2 * budget / 2**30:.1f} GiB)")
                continue
            run = subprocess.run([sys.executable, __file__, f"--shape={args.shape}", "--one", str(tokens), kernel_name],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{label} failed: {run.stderr.strip().splitlines()[-1:]}")
                continue
            result = results[kernel_name] = json.loads(run.stdout.strip().splitlines()[-1])
            peak = result["device_peak"] if result["device_peak"] is not None else result["host_peak"]
            where = "device" if result["device_peak"] is not None else "RSS"
            diff = ""
            if len(results) == 2:
                diff = f"{max(abs(a - b) for a, b in zip(results['dense']['scores'], results['blocked']['scores'])):.1e}"
            print(f"{label} {result['cold']:>12.2f} {result['warm']:>13.2f} {peak / 2**20:>9.0f} MiB {where:<4}"
                  f"{needed / 2**20:>18.1f} MiB  {diff}")


if __name__ == "__main__":
    main()
