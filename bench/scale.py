"""One Sahara step at Llama-2-7B shape (32 layers x 32 heads, d_model 4096) on a randomly initialised model,
so no download is needed: seconds per step over P prompts of ~T tokens, heads·prompts/s, achieved TFLOP/s next
to the device's measured matmul peak, and peak memory (the device's, where it reports it, and the host's).

    python bench/scale.py --shape=7b --prompts=100 --tokens=20            # on a GPU
    python bench/scale.py --shape=small --prompts=16 --tokens=20          # a scaled-down shape for a CPU
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import layer_flops, machine, matmul_peak_gflops
from jaxheads.loading import Model
from jaxheads.models.config import ModelConfig
from jaxheads.models.decoder import Decoder
from jaxheads.plan import describe, plan
from jaxheads.sahara import sahara

SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
               num_kv_heads=32, head_dim=128),
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8,
                  num_kv_heads=8, head_dim=64),
}


def step_flops(cfg: ModelConfig, start_layers: np.ndarray, batch: int, tokens: int) -> float:
    """FLOPs of one Sahara step: every candidate runs layers from its first ablated layer, plus the base pass."""
    per_layer = batch * layer_flops(cfg, tokens, tokens)
    lm_head = 2 * batch * cfg.hidden_size * cfg.vocab_size
    ablations = sum((cfg.num_layers - int(start)) * per_layer + lm_head for start in start_layers)
    return ablations + cfg.num_layers * per_layer + lm_head


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--batch", type=int, default=0, help="prompts per batch (0 = all in one)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype]
    cfg = ModelConfig(model_type="llama", **SHAPES[args.shape], max_position_embeddings=4096)
    print(f"machine: {machine()}")
    peak = matmul_peak_gflops(dtype, size=8192 if jax.devices()[0].platform == "gpu" else 2048)
    print(f"{args.dtype} matmul peak: {peak / 1000:.3g} TFLOP/s")
    started = time.perf_counter()
    module = Decoder(cfg, dtype=dtype, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(module))
    print(f"random {args.shape} model ({sum(x.size for x in jax.tree.leaves(nnx.state(module))) / 1e9:.2f} B "
          f"params, {args.dtype}) in {time.perf_counter() - started:.1f} s")
    model = Model(name=f"random-{args.shape}", config=cfg, tokenizer=None, module=module)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, cfg.vocab_size, int(n))) for n in rng.integers(args.tokens - 4, args.tokens + 5,
                                                                                  args.prompts)]
    batch = args.batch or args.prompts
    heads = cfg.num_layers * cfg.num_heads
    started = time.perf_counter()
    first = sahara(model, prompts, steps=1, batch_size=batch, chunk_size=args.chunk)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    result = sahara(model, prompts, steps=2, done_steps=first.steps, batch_size=batch, chunk_size=args.chunk)
    warm = time.perf_counter() - started
    padded = -(-max(len(p) for p in prompts) // 8) * 8
    layer_of = np.repeat(np.arange(cfg.num_layers), cfg.num_heads)
    chosen_layer = result.heads[0][0]
    warm_starts = np.minimum(np.delete(layer_of, result.heads[0][0] * cfg.num_heads + result.heads[0][1]),
                             chosen_layer)
    flops = step_flops(cfg, warm_starts, args.prompts, padded)
    print(f"Sahara step 1 (with compilation): {cold:.1f} s; step 2 ({heads - 1} candidates x "
          f"{args.prompts} prompts of ~{args.tokens} tokens, padded to {padded}): {warm:.1f} s")
    print(f"  {(heads - 1) * args.prompts / warm:.0f} heads·prompts/s; {flops / 1e12:.1f} TFLOP -> "
          f"{flops / warm / 1e12:.3g} TFLOP/s = {100 * flops / warm / (peak * 1e9):.0f}% of the "
          f"measured matmul peak")
    print(f"  chosen heads {result.heads}")
    memory = plan(cfg, prompts=args.prompts, tokens=padded, dtype=args.dtype, batch_size=batch,
                  chunk_size=args.chunk, dataset_level=True)
    stats = jax.devices()[0].memory_stats() or {}
    device_peak = (f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in stats
                   else "not reported by this device")
    print(f"  peak memory: device {device_peak}; host max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print("  the planner's estimate (jaxheads plan) for this step:")
    for line in describe(memory):
        print(f"  {line}")


if __name__ == "__main__":
    main()
