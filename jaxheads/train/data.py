"""Training examples as token ids with a response mask, right-padded batches, and a resumable sample order.

An example's prompt is tokenized exactly as generation tokenizes it (`jaxheads.tokens.encode`), and
the answer's tokens follow, so the loss is taken on the tokens the model would generate after that prompt.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import numpy as np

from jaxheads import tokens
from jaxheads.data.formats import format_example
from jaxheads.errors import DataError


@dataclasses.dataclass(frozen=True)
class Example:
    """Token ids of prompt + answer; the first `prompt_length` of them are the prompt."""

    ids: tuple[int, ...]
    prompt_length: int


class Batch(NamedTuple):
    """Right-padded `ids`, attention `mask` and `response` mask (True on answer tokens), each `[B, T]`."""

    ids: np.ndarray
    mask: np.ndarray
    response: np.ndarray


def tokenize_example(tokenizer, query: str, answer: str, prompt_format: str, max_length: int) -> Example:
    """The example (query, answer) in `prompt_format`, with its answer cut to fit `max_length` tokens."""
    prompt_text, full_text = format_example(query, answer, prompt_format, tokenizer)
    prompt = tokens.encode(tokenizer, prompt_text)
    answer_ids = tokens.encode_continuation(tokenizer, full_text[len(prompt_text):])
    if len(prompt) >= max_length:
        raise DataError(f"the prompt for {query[:60]!r} has {len(prompt)} tokens, which leaves no room for the "
                        f"answer within max_length={max_length}; raise max_length or shorten the prompt")
    return Example(tuple(prompt + answer_ids)[:max_length], len(prompt))


def tokenize_examples(tokenizer, pairs: Sequence[tuple[str, str]], prompt_format: str,
                      max_length: int) -> list[Example]:
    """Examples from (query, answer) pairs."""
    if tokenizer is None:
        raise DataError("training needs a tokenizer to turn (prompt, answer) text into tokens; this model has none")
    if not pairs:
        raise DataError("no training examples given")
    return [tokenize_example(tokenizer, query, answer, prompt_format, max_length) for query, answer in pairs]


def pad_right(examples: Sequence[Example], pad: int, max_length: int) -> Batch:
    """A right-padded batch (`tokens.pad_right`: the longest example rounded up to `tokens.TRAIN_PAD_MULTIPLE`, at
    most max_length) with its response mask."""
    ids, mask = tokens.pad_right([example.ids for example in examples], pad, tokens.TRAIN_PAD_MULTIPLE, max_length)
    response = np.zeros(ids.shape, bool)
    for row, example in enumerate(examples):
        response[row, example.prompt_length:len(example.ids)] = True
    return Batch(ids, mask, response)


def sample_indices(position: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Indices of batch number `position` in a stream that walks a fresh permutation of `size` examples per
    epoch (a function of `(seed, epoch)`), so any position can be reproduced without replaying the stream."""
    offsets = np.arange(position * batch_size, (position + 1) * batch_size)
    epochs, within = np.divmod(offsets, size)
    orders = {epoch: np.random.default_rng([seed, epoch]).permutation(size) for epoch in set(epochs.tolist())}
    return np.asarray([orders[epoch][index] for epoch, index in zip(epochs.tolist(), within.tolist())])


@dataclasses.dataclass
class PairSet:
    """The Surgery regularizer's samples: harmful sequences (prompt + harmful answer) and safe ones (prompt + refusal
    or safe answer). Unpaired (the authors' way, the default): each step draws from each side on its own, and the
    sides may hold different prompts and counts. Paired: `harmful[i]` and `safe[i]` share a prompt and are drawn
    together."""

    harmful: list[Example]
    safe: list[Example]
    paired: bool = False

    def __post_init__(self):
        if not self.harmful or not self.safe or (self.paired and len(self.harmful) != len(self.safe)):
            raise DataError(f"Surgery needs non-empty harmful and safe samples{', as many of each' if self.paired else ''}"
                            f"; got {len(self.harmful)} harmful and {len(self.safe)} safe")

    def draw(self, key, size: int) -> tuple[list[int], list[int]]:
        """Indices of `size` harmful and `size` safe samples drawn with the PRNG `key` (with replacement only when
        a side has fewer than `size`)."""
        if self.paired:
            drawn = jax.random.choice(key, len(self.harmful), (size,), replace=size > len(self.harmful))
            return np.asarray(drawn).tolist(), np.asarray(drawn).tolist()
        harmful_key, safe_key = jax.random.split(key)
        harmful = jax.random.choice(harmful_key, len(self.harmful), (size,), replace=size > len(self.harmful))
        safe = jax.random.choice(safe_key, len(self.safe), (size,), replace=size > len(self.safe))
        return np.asarray(harmful).tolist(), np.asarray(safe).tolist()

    def batches(self, harmful_indices: Sequence[int], safe_indices: Sequence[int], pad: int,
                max_length: int) -> tuple[Batch, Batch]:
        """The harmful batch of the samples at `harmful_indices` and the safe batch of those at `safe_indices`."""
        return (pad_right([self.harmful[i] for i in harmful_indices], pad, max_length),
                pad_right([self.safe[i] for i in safe_indices], pad, max_length))
