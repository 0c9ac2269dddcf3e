"""jaxheads: find and control the attention heads that carry safety behaviour in LLMs, in JAX/Flax.

Public API: `load`, `forward`, `generate`, and the intervention helpers in `jaxheads.interventions`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxheads.errors import DataError, JaxheadsError, LoadError
from jaxheads.generate import (PAD_MULTIPLE, Generation, Sampling, encode_prompts, generate_ids, pad_id, pad_left,
                               strip_after_eos)
from jaxheads.interventions import Interventions, ablate, identity, single_heads
from jaxheads.loading import Model, load
from jaxheads.patterns import attention_patterns
from jaxheads.sharding import DATA, place_rows, split_on_mesh, to_host

__all__ = [
    "DataError", "Generation", "Interventions", "JaxheadsError", "LoadError", "Model", "Sampling",
    "ablate", "attention_patterns", "encode_prompts", "forward", "generate", "identity", "load", "single_heads",
]


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, state, input_ids, attention_mask, heads):
    return nnx.merge(graphdef, state)(input_ids, attention_mask, heads)


def forward(model: Model, input_ids, attention_mask=None, interventions: Interventions | None = None) -> jax.Array:
    """float32 logits `[B, T, V]` for left-padded `input_ids: [B, T]`.

    `interventions`: arrays `[L, N]` (shared by the batch) or `[B, L, N]` (one per example); to run a batch of
    interventions on the same inputs, `jax.vmap` this function over them.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise JaxheadsError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    graphdef, state = nnx.split(model.module)
    return _forward(graphdef, state, input_ids, mask, interventions)


def eos_ids(model: Model) -> tuple[int, ...]:
    """Token ids that end a generation: the config's EOS ids and the tokenizer's EOS token."""
    ids = set(model.config.eos_token_ids)
    tokenizer_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tokenizer_eos is not None:
        ids.add(int(tokenizer_eos))
    return tuple(sorted(ids))


def generate(model: Model, prompts: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, interventions: Interventions | None = None,
             batch_size: int = 16, progress: bool = False, mesh: Mesh | None = None, guard=None,
             prompt_format: str | None = None) -> Generation:
    """Generates continuations of prompts with a KV cache, `batch_size` prompts at a time.

    `prompts`: texts (already formatted; tokenized here) or lists of token ids. Greedy when `temperature == 0`. `interventions`: `[L, N]` for every prompt or `[len(prompts), L, N]`.
    On a `mesh`, batch rows (rounded up to a multiple of its `data` axis) are split over `data` and the weights
    over `model` by the model's tensor-parallel specs; without one, generation runs where the weights are.

    `prompt_format` (template, chat or direct): the prompts are user requests, formatted here. `guard` (a
    `jaxheads.guard.Guard`, e.g. `load_guard()`): the prompts are user requests, which the guard classifies
    first; Unsafe ones get the guard's refusal without running the model, Conditionally Safe ones get the
    guard's safety note after the request, then each request the model runs on is formatted with
    `prompt_format` (default direct: as it is); the result also holds each prompt's tier and whether it was
    flagged (Focused Attention) or withheld (Unsafe). When the guard has a response judge (`guard.judge`; the
    shipped one by default for the default model), each generated answer it labels harmful_compliance is replaced
    by the guard's refusal and marked `screened`.
    """
    if max_new_tokens < 1:
        raise JaxheadsError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                   batch_size=batch_size, progress=progress)
    if guard is not None:
        from jaxheads.guard import guarded_generation

        return guarded_generation(generate, model, prompts, guard, prompt_format, interventions, mesh, **options)
    if prompt_format is not None:
        from jaxheads.data.formats import format_prompt

        prompts = [format_prompt(prompt, prompt_format, model.tokenizer) for prompt in prompts]
    prompts = list(prompts)
    per_prompt = interventions is not None and jnp.ndim(interventions.q_scale) == 3
    if per_prompt and interventions.q_scale.shape[0] != len(prompts):
        raise JaxheadsError(f"{interventions.q_scale.shape[0]} interventions for {len(prompts)} prompts")
    sampling = Sampling(float(temperature), int(top_k), float(top_p))
    graphdef, state = nnx.split(model.module) if mesh is None else split_on_mesh(model.module, mesh)
    row_multiple = 1 if mesh is None else mesh.shape[DATA]
    batch_size = -(-batch_size // row_multiple) * row_multiple
    stop_ids, pad = eos_ids(model), pad_id(model.tokenizer)
    texts, tokens = [], []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    for start in starts:
        chunk = prompts[start:start + batch_size]
        filler = batch_size - len(chunk) if len(prompts) > batch_size else -len(chunk) % row_multiple
        chunk = chunk + chunk[:1] * filler
        if isinstance(chunk[0], str):
            ids, mask = encode_prompts(model.tokenizer, chunk)
        else:
            ids, mask = pad_left(chunk, pad, PAD_MULTIPLE)
        heads = interventions
        if per_prompt:
            rows = np.r_[np.arange(start, start + len(chunk) - filler), np.full(filler, start)]
            heads = jax.tree.map(lambda a: jnp.asarray(a)[rows], interventions)
        rng = jax.random.fold_in(jax.random.key(seed), start)
        if mesh is not None:
            ids, mask = place_rows((ids, mask), mesh)
            if per_prompt:
                heads = place_rows(heads, mesh)
        out = to_host(generate_ids(graphdef, state, ids, mask, heads, rng, max_new_tokens=max_new_tokens,
                                   sampling=sampling, eos_ids=stop_ids, pad=pad))
        for row in out[:len(chunk) - filler]:
            kept = strip_after_eos(row, stop_ids)
            tokens.append(kept)
            texts.append(model.tokenizer.decode(kept, skip_special_tokens=True) if model.tokenizer else "")
    return Generation(texts=texts, tokens=tokens)
