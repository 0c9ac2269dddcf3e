"""Tokens/s of the jitted forward pass and of KV-cached greedy generation on SmolLM2-135M-Instruct (the
embedded GGUF), next to transformers' PyTorch on the same weights and inputs, in one run.

    python bench/forward.py [--batch 8] [--new_tokens 32]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


import jaxheads
from bench.common import ADVBENCH_HELP, advbench, best_time, machine
from jaxheads.data.formats import format_prompt
from jaxheads.tokens import encode_prompts
from jaxheads.weights.packaged import default_gguf_path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--advbench", required=True, help=ADVBENCH_HELP)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = jaxheads.load(None)
    prompts = [format_prompt(q, "template") for q in advbench(args.advbench, args.batch)]
    ids, mask = encode_prompts(model.tokenizer, prompts)
    path = default_gguf_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    tokens = int(mask.sum())
    print(f"machine: {machine()}; torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"inputs: {args.batch} AdvBench prompts (template format), padded to {ids.shape[1]} tokens, "
          f"{tokens} real tokens")

    jaxheads.forward(model, ids, mask).block_until_ready()
    ours = best_time(lambda: jaxheads.forward(model, ids, mask).block_until_ready())
    ones = jaxheads.identity(model.num_layers, model.num_heads, with_mean=True)
    jaxheads.forward(model, ids, mask, ones).block_until_ready()
    with_ones = best_time(lambda: jaxheads.forward(model, ids, mask, ones).block_until_ready())
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    positions = torch.clamp(mask_t.cumsum(-1) - 1, min=0)
    with torch.no_grad():
        hf_model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions)
        theirs = best_time(lambda: hf_model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions))
    print(f"forward   jaxheads {tokens / ours:9.0f} tok/s | transformers {tokens / theirs:9.0f} tok/s "
          f"| ratio {theirs / ours:.2f}x")
    print(f"forward with all-ones interventions (q_scale, out_scale, mean_mix): {tokens / with_ones:.0f} tok/s, "
          f"{with_ones / ours:.3f}x the time of no interventions")

    generate = lambda: jaxheads.generate(model, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch)
    generate()
    started = time.perf_counter()
    out = generate()
    ours = time.perf_counter() - started
    ours_tokens = sum(len(t) for t in out.tokens)
    with torch.no_grad():
        hf_generate = lambda: hf_model.generate(ids_t, attention_mask=mask_t, max_new_tokens=args.new_tokens,
                                                do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        hf_generate()
        started = time.perf_counter()
        hf_out = hf_generate()
        theirs = time.perf_counter() - started
    theirs_tokens = int((hf_out[:, ids.shape[1]:] != model.tokenizer.pad_token_id).sum())
    print(f"generate  jaxheads {ours_tokens / ours:9.1f} tok/s | transformers {theirs_tokens / theirs:9.1f} tok/s "
          f"| ratio {(ours_tokens / ours) / (theirs_tokens / theirs):.2f}x  ({args.new_tokens} new tokens, greedy)")


if __name__ == "__main__":
    main()
