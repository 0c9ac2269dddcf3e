"""Sink attention and divergence against `transformers` eager attention; the Surgery regularizer's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.test_util import check_grads

import jaxheads
from jaxheads import sink


def _batch(batch, length, seed, left_pad=(0, 4, 1)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 128, (batch, length))
    mask = np.ones((batch, length), bool)
    for row, pad in enumerate(left_pad[:batch]):
        mask[row, :pad] = False
    return ids, mask


def _hf_alpha(hf_model, ids, mask):
    """alpha [B, L, N] from the full eager attention maps of `transformers`."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask_t = torch.tensor(mask, dtype=torch.long)
    positions = torch.clamp(mask_t.cumsum(-1) - 1, min=0)
    with torch.no_grad():
        maps = hf_model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions,
                        output_attentions=True).attentions
    maps = np.stack([m.float().numpy() for m in maps], axis=1)  # [B, L, N, T, T]
    alpha = np.zeros(maps.shape[:3])
    for b in range(ids.shape[0]):
        first = int(np.argmax(mask[b]))
        queries = [i for i in range(ids.shape[1]) if mask[b, i] and i != first]
        alpha[b] = maps[b][:, :, queries, first].mean(axis=-1)
    return alpha


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope_tied", "qwen2_bias"])
def test_sink_attention_matches_transformers_eager(tiny_checkpoint, name):
    hf_model, directory = tiny_checkpoint(name)
    model = jaxheads.load(directory)
    ids, mask = _batch(3, 12, seed=1)
    ours = np.asarray(jax.jit(sink.sink_attention)(model.module, ids, mask))
    assert ours.shape == (3, model.num_layers, model.num_heads) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _hf_alpha(hf_model, ids, mask), atol=1e-5, rtol=0)


def test_sink_divergence_matches_transformers_eager(tiny_checkpoint):
    hf_model, directory = tiny_checkpoint("llama_mha")
    model = jaxheads.load(directory)
    harmful_ids, harmful_mask = _batch(3, 12, seed=2)
    safe_ids, safe_mask = _batch(2, 9, seed=3, left_pad=(2, 0))
    ours = np.asarray(sink.sink_divergence(model.module, harmful_ids, harmful_mask, safe_ids, safe_mask))
    ref = (_hf_alpha(hf_model, harmful_ids, harmful_mask).mean(0)
           - _hf_alpha(hf_model, safe_ids, safe_mask).mean(0))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_right_padding_gives_the_same_alpha(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_mha")
    module = jaxheads.load(directory).module
    ids, mask = _batch(3, 12, seed=4)
    right_ids = np.stack([np.roll(row, -int((~m).sum())) for row, m in zip(ids, mask)])
    right_mask = np.stack([np.roll(m, -int((~m).sum())) for m in mask])
    np.testing.assert_allclose(sink.sink_attention(module, right_ids, right_mask),
                               sink.sink_attention(module, ids, mask), atol=1e-6)


def _penalty_of_state(graphdef, harmful, safe):
    def penalty(state):
        module = nnx.merge(graphdef, state)
        return sink.surgery_penalty(sink.sink_divergence(module, *harmful, *safe))
    return penalty


def test_penalty_gradient_passes_check_grads(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    graphdef, state = nnx.split(jaxheads.load(directory).module)
    penalty = _penalty_of_state(graphdef, _batch(2, 10, seed=5), _batch(2, 10, seed=6, left_pad=(3, 0)))
    assert float(penalty(state)) > 0
    check_grads(penalty, (state,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


def test_penalty_gradient_is_zero_when_no_divergence_is_positive(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    graphdef, state = nnx.split(jaxheads.load(directory).module)
    same = _batch(2, 10, seed=7)
    # with zero queries attention is uniform over the prefix: alpha is 0.5 for two tokens, about 0.08 for 40
    long_side, short_side = _batch(2, 40, seed=8, left_pad=(0, 0)), _batch(2, 2, seed=9, left_pad=(0, 0))
    uniform = jax.tree.map(lambda x: x, state)
    uniform["q"][...] = jnp.zeros_like(state["q"][...])
    assert np.all(np.asarray(sink.sink_divergence(nnx.merge(graphdef, uniform), *long_side, *short_side)) < 0)
    for harmful, safe, params in [(same, same, state), (long_side, short_side, uniform)]:
        grads = jax.grad(_penalty_of_state(graphdef, harmful, safe))(params)
        assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_positive_heads_counts_strictly_positive_divergences():
    assert int(sink.positive_heads(jnp.array([[0.1, 0.0], [-0.2, 0.3]]))) == 2
