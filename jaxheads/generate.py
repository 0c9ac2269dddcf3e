"""Batched, KV-cached generation (greedy or sampled) with interventions applied at every step."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxheads.attention import AttentionMask
from jaxheads.errors import JaxheadsError
from jaxheads.interventions import Interventions
from jaxheads.models.llama import KVCache, positions_from_mask

PAD_MULTIPLE = 8  # prompt lengths are padded up to a multiple of this, to limit recompilation


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decoding settings: temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


@dataclasses.dataclass
class Generation:
    """Generated continuations: `texts[i]` decodes `tokens[i]` (EOS and padding removed). With a guard, each
    prompt's `tiers[i]` (docs/guard.md), whether it is `flagged` (Focused Attention: answered, for review) and
    whether it was `withheld` (Unsafe: `texts[i]` is the guard's refusal and the model did not run on it); with a
    guard that has a response judge, whether the answer was `screened` (labelled harmful_compliance by the judge:
    `texts[i]` is the guard's refusal instead of the answer), the judge's label and probabilities (JUDGE_LABELS
    order) for each answer the model gave (None where it did not run), and the withheld answer itself
    (`screened_answers[i]`, for audit; it is never in `texts`)."""

    texts: list[str]
    tokens: list[list[int]]
    tiers: list[str] | None = None
    flagged: list[bool] | None = None
    withheld: list[bool] | None = None
    screened: list[bool] | None = None
    screen_labels: list[str | None] | None = None
    screen_probs: list[list[float] | None] | None = None
    screened_answers: list[str | None] | None = None


def encode_prompts(tokenizer, prompts: Sequence[str], pad_to_multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded token ids and attention mask `[B, T]` for prompt texts.

    Special tokens (e.g. BOS) are added unless a text already starts with the tokenizer's BOS string,
    as chat-template output does.
    """
    if tokenizer is None:
        raise JaxheadsError("this model has no tokenizer; pass token ids instead of texts")
    if not prompts:
        raise JaxheadsError("no prompts given")
    rows = []
    bos = getattr(tokenizer, "bos_token", None)
    for text in prompts:
        if not isinstance(text, str) or not text.strip():
            raise JaxheadsError(f"empty prompt: {text!r}")
        add_special = not (bos and text.startswith(bos))
        rows.append(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    return pad_left(rows, pad_id(tokenizer), pad_to_multiple)


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token, else 0."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def pad_left(rows: Sequence[Sequence[int]], pad: int, pad_to_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Stacks token id lists into left-padded `ids, mask` arrays `[B, T]`."""
    width = max(len(row) for row in rows)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = True
    return ids, mask


def sample_next(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """Next tokens `[B]` from float32 logits `[B, V]`: argmax, or a temperature/top-k/top-p draw."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        keep = cumulative - jax.nn.softmax(sorted_logits, axis=-1) < sampling.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampling", "eos_ids", "pad"))
def generate_ids(graphdef, state, input_ids, prompt_mask, heads: Interventions | None, rng, *, max_new_tokens: int,
                 sampling: Sampling, eos_ids: tuple[int, ...], pad: int) -> jax.Array:
    """New tokens `[B, max_new_tokens]` after left-padded prompts `[B, T]`; after EOS every token is `pad`."""
    model = nnx.merge(graphdef, state)
    cfg = model.config
    B, T = input_ids.shape
    S = T + max_new_tokens
    dtype = model.embed.dtype
    cache_shape = (cfg.num_layers, B, S, cfg.num_kv_heads, cfg.head_dim)
    cache = KVCache(jnp.zeros(cache_shape, dtype), jnp.zeros(cache_shape, dtype))
    key_valid = jnp.concatenate([prompt_mask, jnp.zeros((B, max_new_tokens), bool)], axis=1)
    positions = positions_from_mask(prompt_mask)
    mask = AttentionMask(key_valid, jnp.arange(T, dtype=jnp.int32), cfg.sliding_window)  # prompt t in slot t
    h, cache = model.run_layers(model.embed_tokens(input_ids), positions, mask, heads, cache=cache)[:2]
    logits = model.logits(model.final_hidden(h[:, -1]))
    rng, step_rng = jax.random.split(rng)
    token = sample_next(logits, step_rng, sampling)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    done = jnp.isin(token, eos)
    out = jnp.full((B, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)
    next_position = positions[:, -1] + 1

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, token, cache, key_valid, done, out, rng = carry
        slot = T + step - 1
        key_valid = key_valid.at[:, slot].set(True)
        step_mask = AttentionMask(key_valid, slot[None], cfg.sliding_window)
        position = (next_position + step - 1)[:, None]
        h, cache = model.run_layers(model.embed_tokens(token[:, None]), position, step_mask, heads, cache=cache,
                                    cache_index=slot)[:2]
        logits = model.logits(model.final_hidden(h[:, -1]))
        rng, step_rng = jax.random.split(rng)
        new_token = jnp.where(done, pad, sample_next(logits, step_rng, sampling))
        out = out.at[:, step].set(new_token)
        return step + 1, new_token, cache, key_valid, done | jnp.isin(new_token, eos), out, rng

    carry = (jnp.int32(1), token, cache, key_valid, done, out, rng)
    return jax.lax.while_loop(cond, body, carry)[5]


def strip_after_eos(tokens: np.ndarray, eos_ids: Sequence[int]) -> list[int]:
    """The tokens of one row up to (not including) its first EOS."""
    row = tokens.tolist()
    for i, token in enumerate(row):
        if token in eos_ids:
            return row[:i]
    return row
