"""Text to token ids, and token ids to padded batches: how every part of jaxheads tokenizes (generation, the
scans, the guard and judge, training data, utility).

- `encode`: the ids of one text, with the tokenizer's special tokens (e.g. BOS) unless the text already starts
  with the BOS string, as chat-template output does; `encode_continuation`: the ids of a text that follows
  others (an answer after its prompt, a refusal), with no special tokens.
- `pad_left` (prompts: the last position is every row's last token) and `pad_right` (training and perplexity
  batches), both to a length rounded up to a multiple; `pad_id`.
- `batch_rows`: how many rows a batch of a longer list gets, so that the batches of one run share a shape and
  split evenly over a mesh's data axis (a short batch is filled with copies of its first row).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxheads.errors import JaxheadsError

# Lengths are rounded up to a multiple of these, so that batches of nearby lengths share a compiled program.
PROMPT_PAD_MULTIPLE = 8  # prompts of generation, the scans and attention patterns (left-padded)
TRAIN_PAD_MULTIPLE = 32  # training and perplexity batches (right-padded)
CLASSIFIER_PAD_MULTIPLE = 32  # the guard's and the response judge's inputs (left-padded)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return -(-value // multiple) * multiple


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, with the tokenizer's special tokens unless it already starts with its BOS string."""
    if tokenizer is None:
        raise JaxheadsError("this model has no tokenizer; pass token ids instead of texts")
    bos = getattr(tokenizer, "bos_token", None)
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])


def encode_continuation(tokenizer, text: str) -> list[int]:
    """Token ids of a text that follows others (an answer after its prompt): no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of one prompt text (`encode`); an empty prompt is an error."""
    if tokenizer is None:
        raise JaxheadsError("this model has no tokenizer; pass token ids instead of texts")
    if not isinstance(text, str) or not text.strip():
        raise JaxheadsError(f"empty prompt: {text!r}")
    return encode(tokenizer, text)


def encode_prompts(tokenizer, prompts: Sequence[str],
                   pad_to_multiple: int = PROMPT_PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded token ids and attention mask `[B, T]` of prompt texts (`encode_prompt` each)."""
    if tokenizer is None:
        raise JaxheadsError("this model has no tokenizer; pass token ids instead of texts")
    if not prompts:
        raise JaxheadsError("no prompts given")
    return pad_left([encode_prompt(tokenizer, text) for text in prompts], pad_id(tokenizer), pad_to_multiple)


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token, else 0."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def pad_left(rows: Sequence[Sequence[int]], pad: int, pad_to_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Stacks token id lists into left-padded `ids, mask` arrays `[B, T]`, T the longest row rounded up."""
    width = round_up(max(len(row) for row in rows), pad_to_multiple)
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = True
    return ids, mask


def pad_right(rows: Sequence[Sequence[int]], pad: int, pad_to_multiple: int = TRAIN_PAD_MULTIPLE,
              max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacks token id lists into right-padded `ids, mask` arrays `[B, T]`: T is the longest row rounded up to
    `pad_to_multiple`, but no more than `max_length` (or the longest row, if that is longer)."""
    longest = max(len(row) for row in rows)
    width = round_up(longest, pad_to_multiple)
    if max_length is not None:
        width = min(width, max(max_length, longest))
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = True
    return ids, mask


def batch_size_for(batch_size: int, row_multiple: int) -> int:
    """`batch_size` rounded up to a multiple of `row_multiple` (the rows a mesh's data axis splits evenly)."""
    return round_up(batch_size, row_multiple)


def batch_rows(members: int, total: int, batch_size: int, row_multiple: int = 1) -> int:
    """The rows of a batch holding `members` of `total` items, `batch_size` at a time: every batch of a list longer
    than one batch gets `batch_size` rows (so the batches share one shape), a list that fits one batch gets its
    own length rounded up to `row_multiple`. The rows beyond `members` are filler (copies of the first row)."""
    return batch_size if total > batch_size else round_up(members, row_multiple)


def fill(rows: list, width: int) -> list:
    """`rows` filled up to `width` entries with copies of its first entry."""
    return rows + rows[:1] * (width - len(rows))
