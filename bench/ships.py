"""Full query-level Ships scan of a packaged model (SmolLM2-135M-Instruct, 270 heads, by default; or Gemma-3-270M,
72 heads) on the first AdvBench prompts, template format: seconds per prompt, heads·prompts/s, achieved GFLOP/s
next to the measured float32 matmul peak, and the speed-up over one-head-at-a-time loops (jaxheads.forward per
head, and transformers with a hook scaling one head's query per forward, the way the PyTorch reference runs)
measured in the same run.

    python bench/ships.py --advbench=PATH [--model smollm2|gemma3-270m] [--prompts 16] [--batch 16] [--chunk 9]
    python bench/ships.py --advbench=PATH --bf16 --ranking_only  # only the float32 and bfloat16 scans' rank agreement
    python bench/ships.py --advbench=PATH --whole_process_only   # only the whole-process comparison below

The whole-process comparison runs `jaxheads ships` as a user does, in a new process (load, compile, scan, write),
once with empty caches (the GGUF is converted, every program compiled) and once with the caches it left, next to
the reference loop in its own process: importing torch and transformers, loading the GGUF, then one forward per
head per prompt (timed on `--loop_prompts` prompts and counted for all `--prompts`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

import jaxheads
from bench.common import ADVBENCH_HELP, advbench, best_time, layer_flops, machine, matmul_peak_gflops
from jaxheads import interventions as iv
from jaxheads import scan, ships
from jaxheads.data.formats import format_prompt
from jaxheads.weights.packaged import DEFAULT_MODEL, PACKAGED_MODELS


def scan_flops(cfg, batches) -> float:
    """FLOPs the prefix-reusing scan must do: one full pass per batch, then for every head of layer l the
    layers l..L-1, plus the LM head at the last position for every ablation."""
    L, N = cfg.num_layers, cfg.num_heads
    total = 0.0
    for batch in batches:
        B, T = batch.ids.shape
        per_layer = B * layer_flops(cfg, T, T)
        total += L * per_layer + 2 * B * cfg.hidden_size * cfg.vocab_size
        total += sum(N * (L - l) * per_layer for l in range(L)) + L * N * 2 * B * cfg.hidden_size * cfg.vocab_size
    return total


def load_reference(gguf_path: pathlib.Path):
    """transformers' own GGUF loading of the model, float32, eval mode."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                             dtype=torch.float32).eval()


def torch_reference_seconds_per_prompt(hf, prompt: str, tokenizer, epsilon: float) -> float:
    """One prompt through transformers, one forward per head with a hook scaling that head's query (the q_proj
    output, or with QK-norm the q_norm output, which is `[B, N, T, d]` in Gemma 3)."""
    import torch

    cfg = hf.config
    N, d = cfg.num_attention_heads, cfg.head_dim
    qk_norm = hasattr(hf.model.layers[0].self_attn, "q_norm")
    head_axis = 1 if cfg.model_type == "gemma3_text" else -2  # Gemma 3's q_norm sees [B, N, T, d], others [.., N, d]
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    started = time.perf_counter()
    with torch.no_grad():
        base = torch.log_softmax(hf(ids).logits[0, -1], -1)
        for layer in hf.model.layers:
            for head in range(N):
                def scale(_, __, out, head=head):
                    out = out.clone()
                    heads = out if qk_norm else out.unflatten(-1, (N, d))  # a view of out
                    heads.select(head_axis, head).mul_(epsilon)
                    return out
                module = layer.self_attn.q_norm if qk_norm else layer.self_attn.q_proj
                handle = module.register_forward_hook(scale)
                ablated = torch.log_softmax(hf(ids).logits[0, -1], -1)
                handle.remove()
                float(torch.sum(base.exp() * (base - ablated)))
    return time.perf_counter() - started


def reference_process(args) -> None:
    """The reference loop as its own process would run it: prints one JSON line with the seconds to load and the
    seconds per prompt (over the first `--loop_prompts` prompts)."""
    started = time.perf_counter()
    import torch  # noqa: F401  (its import is part of the reference's whole process)
    import transformers


    gguf_path = PACKAGED_MODELS[args.model][0]()
    hf = load_reference(gguf_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    load = time.perf_counter() - started
    prompts = [format_prompt(q, "template") for q in advbench(args.advbench, args.loop_prompts)]
    loop = sum(torch_reference_seconds_per_prompt(hf, prompt, tokenizer, 1e-5) for prompt in prompts) / len(prompts)
    print(json.dumps({"start_and_load": load, "per_prompt": loop}))


def whole_process(args) -> None:
    """`jaxheads ships` in a new process with empty caches and again with the caches it left, next to the
    reference loop's whole process."""
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_ships_"))
    env = {**os.environ, "JAXHEADS_CACHE_DIR": str(scratch / "cache")}
    command = [shutil.which("jaxheads") or "jaxheads", "ships", f"--model={args.model}",
               f"--dataset={args.advbench}", f"--limit={args.prompts}", f"--batch_size={args.batch}",
               f"--chunk_size={args.chunk}"]
    seconds = {}
    for label in ("empty caches", "filled caches"):
        started = time.perf_counter()
        subprocess.run([*command, f"--out={scratch / label.replace(' ', '_')}"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds[label] = time.perf_counter() - started
        print(f"jaxheads ships whole process, {label}: {seconds[label]:.1f} s", flush=True)
    started = time.perf_counter()
    reference = subprocess.run([sys.executable, __file__, "--reference_process", f"--advbench={args.advbench}",
                                f"--model={args.model}", f"--loop_prompts={args.loop_prompts}"],
                               check=True, capture_output=True, text=True)
    measured = json.loads(reference.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - started
    total = wall + (args.prompts - args.loop_prompts) * measured["per_prompt"]
    print(f"reference whole process (start, load {measured['start_and_load']:.1f} s, then "
          f"{measured['per_prompt']:.1f} s per prompt; {args.loop_prompts} of {args.prompts} prompts run, the rest "
          f"counted at that rate): {total:.1f} s")
    for label, value in seconds.items():
        print(f"whole process speed-up, jaxheads with {label}: {total / value:.1f}x")
    shutil.rmtree(scratch, ignore_errors=True)


def timing_and_loops(args, model, prompts, batches, cold: float, peak: float) -> None:
    """Prints the warm scan time, achieved GFLOP/s against `peak`, and the speed-up over one-head-at-a-time loops."""
    cfg = model.config
    heads = cfg.num_layers * cfg.num_heads
    warm = best_time(lambda: ships.query_level(model, prompts, "ua", batch_size=args.batch,
                                               chunk_size=args.chunk), repeats=1)
    flops = scan_flops(cfg, batches)
    floor = flops / (peak * 1e9)
    padded = sum(b.ids.size for b in batches)
    print(f"scan: {args.prompts} prompts x {heads} heads, batch {args.batch}, chunk {args.chunk}, "
          f"{padded} padded tokens")
    print(f"  first run (with compilation) {cold:.1f} s; warm {warm:.2f} s = {warm / args.prompts:.3f} s/prompt, "
          f"{heads * args.prompts / warm:.0f} heads·prompts/s")
    print(f"  {flops / 1e9:.0f} GFLOP -> {flops / warm / 1e9:.1f} GFLOP/s achieved = {100 * floor / warm:.0f}% of "
          f"peak; FLOP floor {floor:.2f} s, warm time is {warm / floor:.2f}x the floor")

    loop_prompts = prompts[:args.loop_prompts]
    loop_batches = scan.make_batches(model, loop_prompts, 1)
    L, N = cfg.num_layers, cfg.num_heads

    def one_by_one():
        for batch in loop_batches:
            base = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask)[:, -1])
            for layer in range(L):
                for head in range(N):
                    logp = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask,
                                                               iv.ablate([(layer, head)], L, N))[:, -1])
                    float(np.sum(np.exp(base) * (base - logp)))

    one_by_one()
    loop = best_time(one_by_one, repeats=1) / len(loop_prompts)
    print(f"jaxheads.forward one head at a time: {loop:.2f} s/prompt -> scan speed-up {loop / (warm / args.prompts):.1f}x")
    if not args.skip_torch:

        gguf_path = PACKAGED_MODELS[args.model][0]()
        reference = torch_reference_seconds_per_prompt(load_reference(gguf_path), loop_prompts[0], model.tokenizer,
                                                       1e-5)
        print(f"transformers one head at a time (query hook, reference-style loop): {reference:.2f} s/prompt -> "
              f"scan speed-up {reference / (warm / args.prompts):.1f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--advbench", required=True, help=ADVBENCH_HELP)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(PACKAGED_MODELS),
                        help="packaged GGUF model to scan")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=9)
    parser.add_argument("--loop_prompts", type=int, default=1, help="prompts timed in the one-by-one loops")
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also scan in bfloat16; report Spearman vs float32")
    parser.add_argument("--ranking_only", action="store_true",
                        help="skip the warm repeat and the one-head-at-a-time loops (for the --bf16 ranking check)")
    parser.add_argument("--whole_process_only", action="store_true",
                        help="only `jaxheads ships` as whole processes next to the reference loop's whole process")
    parser.add_argument("--reference_process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_process:
        return reference_process(args)
    print(f"machine: {machine()}")
    if args.whole_process_only:
        return whole_process(args)
    started = time.perf_counter()
    model = jaxheads.load(args.model)
    print(f"model: {model.name}; jaxheads.load {time.perf_counter() - started:.1f} s")
    cfg = model.config
    heads = cfg.num_layers * cfg.num_heads
    prompts = [format_prompt(q, "template") for q in advbench(args.advbench, args.prompts)]
    batches = scan.make_batches(model, prompts, args.batch)
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak (2048² jnp matmul): {peak:.1f} GFLOP/s")
    started = time.perf_counter()
    scores = ships.query_level(model, prompts, "ua", batch_size=args.batch, chunk_size=args.chunk)
    cold = time.perf_counter() - started
    print(f"float32 scan of {args.prompts} prompts x {heads} heads (with compilation): {cold:.1f} s")
    if not args.ranking_only:
        timing_and_loops(args, model, prompts, batches, cold, peak)
        whole_process(args)
    top = np.unravel_index(np.argmax(scores.mean(0)), scores.shape[1:])
    print(f"top mean Ships head: {tuple(int(i) for i in top)}")
    if args.bf16:
        half = jaxheads.load(args.model, dtype="bfloat16")
        started = time.perf_counter()
        half_scores = ships.query_level(half, prompts, "ua", batch_size=args.batch, chunk_size=args.chunk)
        seconds = time.perf_counter() - started
        rho = spearman(scores.mean(0).ravel(), half_scores.mean(0).ravel())
        per_prompt = np.mean([spearman(full, bf) for full, bf in zip(scores.reshape(len(prompts), -1),
                                                                       half_scores.reshape(len(prompts), -1))])
        top_half = np.unravel_index(np.argmax(half_scores.mean(0)), scores.shape[1:])
        top10 = len(set(np.argsort(-scores.mean(0).ravel())[:10]) & set(np.argsort(-half_scores.mean(0).ravel())[:10]))
        print(f"bfloat16 scan (with compilation) {seconds:.1f} s; Spearman of mean scores over {heads} heads vs "
              f"float32: {rho:.4f} (per prompt, averaged: {per_prompt:.4f}); top head "
              f"{tuple(int(i) for i in top_half)}; top-10 heads shared: {top10}/10")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (no ties expected in float scores)."""
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


if __name__ == "__main__":
    main()
