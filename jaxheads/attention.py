"""Attention kernels over a compact mask description: dense below a key-length threshold, blocked above it.

The mask is never a `[B, T, S]` array on the model's own paths: an `AttentionMask` holds which key slots hold
real tokens (`key_valid: [B, S]`), which slot each query sits in (`query_index: [T]` or `[B, T]`) and an optional
sliding window (a Python int, a traced int per layer, or None). Query t may attend slot s when the slot is
valid, `s <= query_index[t]` and `query_index[t] - s < window`.

`attention` runs the dense kernel (float32 logits and probabilities `[B, K, G, T, S]`, exact and fast for short
prompts) while the key length is at most `AttentionKernel.dense_max_keys`, and above it a blocked online softmax
(query blocks x key blocks with a running float32 max and sum, as in flash attention) whose memory is
`[B, K, G, block_q, block_k]` per step, so linear in the prompt length; key blocks that no query of a query block
may attend (after its causal end, or before its sliding window) are skipped. Both give the same numbers up to
float32 summation order, both soft-cap logits as `cap * tanh(x / cap)` when asked, and both give rows with no
allowed key (left-padding queries) a zero output and zero sink attention, never NaN.

`jax.nn.dot_product_attention` (cuDNN flash attention on GPUs) is not used: it cannot express left padding
without a materialised `[B, T, S]` mask, soft-capping, or the sink column.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Key lengths above this run the blocked kernel (on more than one query). On a 2-core CPU the blocked kernel was
# already faster at 512 tokens and used half the memory (bench/long_prompt.py; docs/results.md).
DENSE_MAX_KEYS = 512
BLOCK_Q = 256  # queries per block of the blocked kernel
BLOCK_K = 256  # keys per block of the blocked kernel
NO_WINDOW = 2 ** 30  # a window no distance reaches (int32), for layers without one


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    """Which kernel attention runs, held by the model module (so it is static under `jit` and a change recompiles).

    The blocked kernel runs when the key length exceeds `dense_max_keys` and there is more than one query (a
    single query's logits `[B, N, 1, S]` are already linear in S, as in each KV-cached generation step);
    `block_q` x `block_k` is its tile.
    """

    dense_max_keys: int = DENSE_MAX_KEYS
    block_q: int = BLOCK_Q
    block_k: int = BLOCK_K

    def blocked(self, queries: int, keys: int) -> bool:
        """Whether attention of `queries` queries over `keys` key slots runs the blocked kernel."""
        return keys > self.dense_max_keys and queries > 1


class AttentionMask(NamedTuple):
    """Which key slots each query may attend, without a `[B, T, S]` array (a pytree, so it can cross `jit`).

    key_valid: `[B, S]` bool, False for padding and unwritten cache slots.
    query_index: `[T]` or `[B, T]` int, the slot of each query (causal: it attends slots up to its own).
    window: keys at distance `window` or more before the query are masked (None: no window); a Python int or a
        traced int32 scalar (Gemma 2/3 choose it per layer inside the layer scan).
    """

    key_valid: jax.Array
    query_index: jax.Array
    window: jax.Array | int | None = None

    def dense(self) -> jax.Array:
        """The boolean `[B, T, S]` mask this describes."""
        key_index = jnp.arange(self.key_valid.shape[-1])
        query_index = jnp.asarray(self.query_index)[..., :, None]
        allowed = key_index <= query_index
        if self.window is not None:
            allowed &= query_index - key_index < self.window
        if allowed.ndim == 2:
            allowed = allowed[None]
        return allowed & self.key_valid[:, None, :]

    def with_window(self, window: jax.Array | int | None) -> AttentionMask:
        """This mask with another window (None: none)."""
        return self._replace(window=window)


def prompt_mask(attention_mask: jax.Array, window: int | None = None) -> AttentionMask:
    """The mask of a whole (left- or right-padded) prompt `[B, T]` with no cache: query t sits in slot t."""
    attention_mask = jnp.asarray(attention_mask, bool)
    return AttentionMask(attention_mask, jnp.arange(attention_mask.shape[-1], dtype=jnp.int32), window)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """`cap * tanh(x / cap)` (Gemma 2's soft-capping), or x unchanged when `cap` is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | jax.Array, scale: float,
              softcap: float | None = None, sink_index: jax.Array | None = None,
              kernel: AttentionKernel = AttentionKernel(), with_probs: bool = False):
    """Grouped-query attention of `q: [B, T, N, d]` over `k, v: [B, S, K, d]` (query head n reads KV group
    n // G, G = N / K, the order of `transformers`' repeat_kv).

    Logits are `scale * q.k` in float32, soft-capped when `softcap` is set, masked by `mask` (an `AttentionMask`,
    or a dense boolean `[B, T, S]` array, which always runs the dense kernel). With `sink_index: [B]` (each row's
    sink slot) also returns every head's and query's float32 attention onto that slot `[B, N, T]`; with
    `with_probs` (dense kernel whatever the length) the float32 probabilities `[B, N, T, S]`.
    Returns `(out [B, T, N, d] in v's dtype, sink or None, probs or None)`.
    """
    T, S = q.shape[1], k.shape[1]
    if isinstance(mask, AttentionMask) and kernel.blocked(T, S) and not with_probs:
        out, sink = blocked_attention(q, k, v, mask, scale, softcap, sink_index, kernel.block_q, kernel.block_k)
        return out, sink, None
    dense_mask = mask.dense() if isinstance(mask, AttentionMask) else jnp.asarray(mask, bool)
    return dense_attention(q, k, v, dense_mask, scale, softcap, sink_index, with_probs)


def dense_attention(q, k, v, mask, scale, softcap=None, sink_index=None, with_probs=False):
    """`attention` with the whole float32 logits `[B, K, G, T, S]` at once; `mask: [B, T, S]` bool."""
    B, T, N, d = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * scale
    logits = soft_cap(logits, softcap)
    allowed = mask[:, None, None]
    probs = jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(jnp.float32).min), axis=-1)
    probs = jnp.where(jnp.any(allowed, axis=-1, keepdims=True), probs, 0.0)  # rows with no allowed key: zero
    sink = None
    if sink_index is not None:
        sink = jnp.take_along_axis(probs, sink_index[:, None, None, None, None], axis=-1)[..., 0].reshape(B, N, T)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v).reshape(B, T, N, d)
    return out, sink, probs.reshape(B, N, T, -1) if with_probs else None


def _pad_to(x: jax.Array, length: int, axis: int, value) -> jax.Array:
    """x padded with `value` at the end of `axis` up to `length`."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def blocked_attention(q, k, v, mask: AttentionMask, scale, softcap=None, sink_index=None, block_q=BLOCK_Q,
                      block_k=BLOCK_K):
    """`attention` as an online softmax over `block_q` x `block_k` tiles: for each query block, a scan over key
    blocks carries the running float32 max m, sum l and weighted value sum; key blocks no query of the block may
    attend are skipped (`lax.cond` on the block's slot range and window). The running max is a constant to the
    gradient (the result does not depend on it). Returns `(out [B, T, N, d], sink [B, N, T] or None)`; a query's
    sink attention is `exp(logit[sink] - m) / l` from its final m and l."""
    B, T, N, d = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    bq, bk = min(block_q, T), min(block_k, S)
    nq, nk = -(-T // bq), -(-S // bk)
    q = _pad_to(q, nq * bq, 1, 0).reshape(B, nq * bq, K, G, d)
    k, v = _pad_to(k, nk * bk, 1, 0), _pad_to(v, nk * bk, 1, 0)
    key_valid = _pad_to(jnp.asarray(mask.key_valid, bool), nk * bk, 1, False)
    query_index = jnp.asarray(mask.query_index, jnp.int32)
    query_index = _pad_to(query_index[None] if query_index.ndim == 1 else query_index, nq * bq, 1, -1)  # [1|B, Tp]
    window = jnp.asarray(NO_WINDOW if mask.window is None else mask.window, jnp.int32)
    f32 = jnp.float32

    def logits_of(q_block, keys):  # [B, bq, K, G, d] x [B, s, K, d] -> [B, K, G, bq, s], as the dense kernel
        return soft_cap(jnp.einsum("bqkgd,bskd->bkgqs", q_block, keys).astype(f32) * scale, softcap)

    def allowed_of(slots, slot_valid, index):  # slots [1|B, 1, s], slot_valid [B, s], index [1|B, bq]
        index = index[:, :, None]
        return slot_valid[:, None, :] & (slots <= index) & (index - slots < window)  # [B, bq, s]

    def query_block(i):
        q_block = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
        index = jax.lax.dynamic_slice_in_dim(query_index, i * bq, bq, axis=1)
        last = jnp.max(index)
        first = jnp.min(jnp.where(index >= 0, index, NO_WINDOW))

        def key_block(carry, j):
            start = j * bk

            def update(carry):
                m, l, acc = carry
                keys = jax.lax.dynamic_slice_in_dim(k, start, bk, axis=1)
                values = jax.lax.dynamic_slice_in_dim(v, start, bk, axis=1)
                valid = jax.lax.dynamic_slice_in_dim(key_valid, start, bk, axis=1)
                allowed = allowed_of((start + jnp.arange(bk))[None, None], valid, index)
                logits = jnp.where(allowed[:, None, None], logits_of(q_block, keys), -jnp.inf)
                m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
                shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # -inf while nothing is allowed yet
                p = jnp.exp(logits - shift[..., None])
                correction = jnp.exp(m - shift)
                l = correction * l + jnp.sum(p, axis=-1)
                acc = correction[..., None] * acc + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), values,
                                                               preferred_element_type=f32)
                return m_new, l, acc

            needed = (start <= last) & (start + bk - 1 > first - window)
            return jax.lax.cond(needed, update, lambda c: c, carry), None

        init = (jnp.full((B, K, G, bq), -jnp.inf, f32), jnp.zeros((B, K, G, bq), f32),
                jnp.zeros((B, K, G, bq, d), f32))
        (m, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
        total = jnp.where(l > 0, l, 1.0)
        out = (acc / total[..., None]).astype(v.dtype)
        if sink_index is None:
            return out, None
        sink_keys = jnp.take_along_axis(k, sink_index[:, None, None, None], axis=1)  # [B, 1, K, d]
        sink_valid = jnp.take_along_axis(key_valid, sink_index[:, None], axis=1)  # [B, 1]
        allowed = allowed_of(sink_index[:, None, None], sink_valid, index)[..., 0]  # [B, bq]
        shift = jnp.where(jnp.isfinite(m), m, 0.0)
        sink = jnp.exp(logits_of(q_block, sink_keys)[..., 0] - shift) / total
        return out, jnp.where(allowed[:, None, None], sink, 0.0)

    out, sink = jax.lax.map(query_block, jnp.arange(nq))  # [nq, B, K, G, bq, d], [nq, B, K, G, bq]
    out = jnp.moveaxis(out, 0, 3).reshape(B, N, nq * bq, d)[:, :, :T].transpose(0, 2, 1, 3)
    if sink is not None:
        sink = jnp.moveaxis(sink, 0, 3).reshape(B, N, nq * bq)[:, :, :T]
    return out, sink


def attention_bytes(num_heads: int, head_dim: int, rows: int, queries: int, keys: int, itemsize: int,
                    kernel: AttentionKernel = AttentionKernel()) -> int:
    """Estimated peak bytes of one layer's attention kernel on `rows` sequences (beyond q, k, v and the output).

    Dense: its float32 logits and probabilities `[rows, N, T, S]`. Blocked: one tile's float32 logits,
    probabilities and exponent temporaries `[rows, N, block_q, block_k]`, the float32 running statistics and value
    sums of one query block `[rows, N, block_q, d + 2]`, and the copies of q, k and v padded to whole blocks
    (at most N + 2N head vectors per position, in the model dtype): no T x S term."""
    if not kernel.blocked(queries, keys):
        return 2 * rows * num_heads * queries * keys * 4
    bq, bk = min(kernel.block_q, queries), min(kernel.block_k, keys)
    padded_q, padded_k = -(-queries // bq) * bq, -(-keys // bk) * bk
    tiles = 3 * rows * num_heads * bq * bk * 4
    statistics = rows * num_heads * bq * (head_dim + 2) * 4
    padded = rows * num_heads * head_dim * (padded_q + 2 * padded_k) * itemsize
    return tiles + statistics + padded
