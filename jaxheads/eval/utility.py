"""Utility of a model with heads ablated: the perplexity of given (prompt, answer) text on its answer tokens, and
the accuracy of its greedy answers to the built-in arithmetic word problems."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxheads.data.formats import format_prompt
from jaxheads.errors import DataError
from jaxheads.generation import generate
from jaxheads.interventions import Interventions
from jaxheads.placement import split_on_mesh
from jaxheads.sharding import place_rows, to_host
from jaxheads.tokens import pad_id
from jaxheads.train.data import Example, pad_right
from jaxheads.train.trainer import response_cross_entropy


@dataclasses.dataclass(frozen=True)
class Perplexity:
    """exp(`cross_entropy`), the mean next-token cross-entropy (nats) over `tokens` answer tokens of `examples`."""

    perplexity: float
    cross_entropy: float
    tokens: int
    examples: int


@functools.partial(jax.jit, static_argnames="graphdef")
def _answer_loss(graphdef, state, ids, mask, response, heads):
    """Sum of the answer tokens' cross-entropies in a right-padded batch, and their count."""
    logits = nnx.merge(graphdef, state)(ids, mask, heads)
    count = jnp.sum(response[:, 1:].astype(jnp.float32))
    return response_cross_entropy(logits, ids, response) * count, count


def answer_perplexity(model, examples: Sequence[Example], interventions: Interventions | None = None,
                      batch_size: int = 16, mesh: Mesh | None = None) -> Perplexity:
    """The perplexity of `examples` (prompt + answer token ids, e.g. from `train.tokenize_examples`) under `model`
    with `interventions` (`[L, N]`, shared by every example): exp of the mean cross-entropy of each answer token
    given everything before it, over all answer tokens of all examples (prompt tokens are context only). Runs
    `batch_size` right-padded examples per forward pass, on `mesh` when one is given."""
    if not examples:
        raise DataError("the perplexity of no examples is undefined; give at least one (prompt, answer) example")
    graphdef, state = nnx.split(model.module) if mesh is None else split_on_mesh(model.module, mesh)
    pad, context = pad_id(model.tokenizer), model.config.max_position_embeddings
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = pad_right(examples[start:start + batch_size], pad, context)
        arrays = (jnp.asarray(batch.ids), jnp.asarray(batch.mask), jnp.asarray(batch.response))
        if mesh is not None:
            arrays = place_rows(arrays, mesh)
        loss, tokens = _answer_loss(graphdef, state, *arrays, interventions)
        total += float(to_host(loss))
        count += float(to_host(tokens))
    if count == 0:
        raise DataError("the examples have no answer tokens, so their perplexity is undefined")
    cross_entropy = total / count
    return Perplexity(math.exp(cross_entropy), cross_entropy, int(count), len(examples))


def arithmetic_responses(model, problems, prompt_format: str, interventions: Interventions | None = None,
                         max_new_tokens: int = 64, batch_size: int = 16, mesh: Mesh | None = None) -> list[str]:
    """Greedy responses to the arithmetic word `problems` (`train.datasets.Problem`) in `prompt_format`; score them
    with `train.datasets.arithmetic_accuracy`."""
    prompts = [format_prompt(problem.question, prompt_format, model.tokenizer) for problem in problems]
    return generate(model, prompts, max_new_tokens=max_new_tokens, interventions=interventions,
                    batch_size=batch_size, mesh=mesh).texts
