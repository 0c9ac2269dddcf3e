"""Throughput of the input guard (`jaxheads guard classify`): prompts per second classifying the built-in held-out
guard prompts (168) on one device, and on 8 simulated CPU devices split as data (8, 1), (4, 2) and model (1, 8).
Side by side in one process, each after one untimed pass that compiles its shapes; the labels must be the same on
every layout.

    python bench/guard.py [--guard builtin] [--batch_size 32] [--repeats 2]

On simulated CPU devices the 8 "devices" share this machine's cores, so a mesh shows that classification splits
(and gives the same labels), not a speed-up; on real devices the data axis divides the time.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", default="builtin", help="builtin or a `jaxheads guard train` folder")
    parser.add_argument("--dataset", default="builtin:guard:heldout")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per layout (the fastest is kept)")
    args = parser.parse_args()

    import jax

    from bench.common import machine
    from jaxheads.data.loaders import load_prompts
    from jaxheads.guard import load_guard
    from jaxheads.sharding import make_mesh

    prompts = load_prompts(args.dataset)
    start = time.perf_counter()
    guard = load_guard(args.guard)
    print(f"machine: {machine()}; {jax.device_count()} devices; jax {jax.__version__}")
    print(f"guard {args.guard} on {guard.classifier.model.name}, loaded in {time.perf_counter() - start:.1f} s; "
          f"{len(prompts)} prompts of {args.dataset}, batches of {args.batch_size}")
    layouts = [("1 device", None)] + [(f"mesh {d}x{m}", (d, m)) for d, m in ((8, 1), (4, 2), (1, 8))
                                       if d * m <= jax.device_count()]
    reference = first_tiers = None
    print(f"{'layout':<12} {'prompts/s':>10} {'vs 1 device':>12} {'same tiers':>11}")
    for name, shape in layouts:
        mesh = None if shape is None else make_mesh(*shape)
        tiers, _ = guard.classify(prompts, args.batch_size, mesh)  # compiles this layout's shapes
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            tiers, _ = guard.classify(prompts, args.batch_size, mesh)
            best = min(best, time.perf_counter() - start)
        rate = len(prompts) / best
        if reference is None:
            reference, first_tiers = rate, tiers
        same = tiers == first_tiers
        print(f"{name:<12} {rate:>10.1f} {rate / reference:>12.2f} {str(same):>11}")


if __name__ == "__main__":
    main()
