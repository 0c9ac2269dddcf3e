"""Batched, KV-cached generation (greedy or sampled) with interventions applied at every step: `generate` runs
prompts (texts or token ids) `batch_size` at a time, on a mesh or where the weights are; `generate_ids` is the
jitted decoding loop of one batch."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from jaxheads import tokens
from jaxheads.attention import AttentionMask
from jaxheads.data.formats import format_prompt
from jaxheads.errors import JaxheadsError
from jaxheads.interventions import Interventions
from jaxheads.loading import Model
from jaxheads.models.decoder import positions_from_mask
from jaxheads.models.layers import KVCache
from jaxheads.placement import split_on_mesh
from jaxheads.sharding import DATA, constrain, place_rows, to_host


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
    cache_axes = ("layers", "batch", "length", "act_kv_heads", None)
    cache = KVCache(*(constrain(model.layout, jnp.zeros(cache_shape, dtype), cache_axes) for _ in range(2)))
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


def eos_ids(model: Model) -> tuple[int, ...]:
    """Token ids that end a generation: the config's EOS ids and the tokenizer's EOS token."""
    ids = set(model.config.eos_token_ids)
    tokenizer_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tokenizer_eos is not None:
        ids.add(int(tokenizer_eos))
    return tuple(sorted(ids))


def check_per_prompt(interventions: Interventions | None, num_prompts: int) -> bool:
    """Whether `interventions` hold one `[L, N]` entry per prompt (`[P, L, N]`); a count other than the prompts'
    is an error."""
    per_prompt = interventions is not None and jnp.ndim(interventions.q_scale) == 3
    if per_prompt and interventions.q_scale.shape[0] != num_prompts:
        raise JaxheadsError(f"{interventions.q_scale.shape[0]} interventions for {num_prompts} prompts")
    return per_prompt


def generate(model: Model, prompts: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             interventions: Interventions | None = None, batch_size: int = 16, progress: bool = False,
             mesh: Mesh | None = None, prompt_format: str | None = None) -> Generation:
    """Generates continuations of prompts with a KV cache, `batch_size` prompts at a time.

    `prompts`: texts (already formatted, unless `prompt_format` is given: template, chat or direct, which formats
    them here as user requests; tokenized here) or lists of token ids. Greedy when `temperature == 0`.
    `interventions`: `[L, N]` for every prompt or `[len(prompts), L, N]`.
    On a `mesh`, batch rows (rounded up to a multiple of its `data` axis) are split over `data` and the weights
    over `model` by the model's layout (its own when it was loaded onto that mesh, else tensor parallel), the KV
    cache split over KV heads and the logits over the vocabulary; without one, generation runs where the weights
    are.
    Guarded generation (a guard in front, a response judge screening the answers) is `jaxheads.guard.Guard.generate`.
    """
    if max_new_tokens < 1:
        raise JaxheadsError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if prompt_format is not None:
        prompts = [format_prompt(prompt, prompt_format, model.tokenizer) for prompt in prompts]
    prompts = list(prompts)
    per_prompt = check_per_prompt(interventions, len(prompts))
    sampling = Sampling(float(temperature), int(top_k), float(top_p))
    graphdef, state = nnx.split(model.module) if mesh is None else split_on_mesh(model.module, mesh)
    row_multiple = 1 if mesh is None else mesh.shape[DATA]
    batch_size = tokens.batch_size_for(batch_size, row_multiple)
    stop_ids, pad = eos_ids(model), tokens.pad_id(model.tokenizer)
    texts, generated = [], []
    starts = range(0, len(prompts), batch_size)
    if progress:
        starts = tqdm(starts, desc="generate", unit="batch")
    for start in starts:
        members = prompts[start:start + batch_size]
        chunk = tokens.fill(members, tokens.batch_rows(len(members), len(prompts), batch_size, row_multiple))
        filler = len(chunk) - len(members)
        if isinstance(chunk[0], str):
            ids, mask = tokens.encode_prompts(model.tokenizer, chunk)
        else:
            ids, mask = tokens.pad_left(chunk, pad, tokens.PROMPT_PAD_MULTIPLE)
        heads = interventions
        if per_prompt:
            rows = np.r_[np.arange(start, start + len(members)), np.full(filler, start)]
            heads = jax.tree.map(lambda a: jnp.asarray(a)[rows], interventions)
        rng = jax.random.fold_in(jax.random.key(seed), start)
        if mesh is not None:
            ids, mask = place_rows((ids, mask), mesh)
            if per_prompt:
                heads = place_rows(heads, mesh)
        out = to_host(generate_ids(graphdef, state, ids, mask, heads, rng, max_new_tokens=max_new_tokens,
                                   sampling=sampling, eos_ids=stop_ids, pad=pad))
        for row in out[:len(members)]:
            kept = strip_after_eos(row, stop_ids)
            generated.append(kept)
            texts.append(model.tokenizer.decode(kept, skip_special_tokens=True) if model.tokenizer else "")
    return Generation(texts=texts, tokens=generated)
