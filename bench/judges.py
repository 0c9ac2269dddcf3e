"""Throughput of a model-judge pass (jaxheads.judges, docs/judges.md) on random checkpoints built here with
transformers: Llama Guard's reading (one forward pass per pair, the last position) or beaver-dam's (a 14-label
score head), pairs and tokens per second of the judge's batched forward passes.

    python bench/judges.py [--kind llamaguard|beaverdam] [--size tiny|smollm2] [--pairs 64] [--words 100]

`tiny` is 3 layers of width 64; `smollm2` the SmolLM2-135M shape (30 layers, width 576, 9 heads, 3 KV heads).
The timed pass follows one warm-up pass (compilation) on the same shapes.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402

SIZES = {"tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2),
         "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3)}
TEMPLATE = ("{{ bos_token }}rate the last turn\n{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n"
            "{% endfor %}verdict safe or unsafe\n\n")


def build(folder: pathlib.Path, kind: str, size: str, words: list[str]):
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(words)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                                     bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    extra = dict(num_labels=14, problem_type="multi_label_classification") if kind == "beaverdam" else {}
    config = transformers.LlamaConfig(**SIZES[size], vocab_size=len(vocab), max_position_embeddings=2048,
                                      bos_token_id=2, eos_token_id=3, pad_token_id=1, **extra)
    cls = transformers.LlamaForSequenceClassification if kind == "beaverdam" else transformers.LlamaForCausalLM
    model = cls(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="llamaguard", choices=("llamaguard", "beaverdam"))
    parser.add_argument("--size", default="tiny", choices=tuple(SIZES))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--words", type=int, default=100, help="words per response")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    import numpy as np

    from jaxheads import judges

    lexicon = [f"w{i}" for i in range(200)] + "rate the last turn user assistant verdict safe or unsafe".split()
    lexicon += "BEGINNING OF CONVERSATION USER ASSISTANT :".split()
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(lexicon[:200], 12)) for _ in range(args.pairs)]
    responses = [" ".join(rng.choice(lexicon[:200], args.words)) for _ in range(args.pairs)]
    with tempfile.TemporaryDirectory() as folder:
        hf = build(pathlib.Path(folder), args.kind, args.size, lexicon)
        judge = judges.load(args.kind, folder, batch_size=args.batch)
        judge(prompts, responses)  # compiles
        started = time.perf_counter()
        judge(prompts, responses)
        seconds = time.perf_counter() - started
        rows = judge.encode(prompts, responses)
        tokens = sum(len(row) for row in rows)
        del hf
    print(machine())
    print(f"{args.kind} judge, {args.size} random checkpoint, {args.pairs} pairs of {tokens / len(rows):.0f} tokens "
          f"(batches of {args.batch}): {args.pairs / seconds:.1f} pairs/s ({tokens / seconds:.0f} tokens/s, "
          f"{seconds:.2f} s)")


if __name__ == "__main__":
    main()
