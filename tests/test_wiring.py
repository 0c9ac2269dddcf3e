"""The interventions and Sahara's resume, pinned to independent computations: `q_scale` scales each head's query
by its own factor (against the head's query weights scaled in the checkpoint instead), and a resumed search runs
only the scans of its unfinished steps (counted)."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import padded_inputs
from flax import nnx

import jaxheads
from jaxheads import interventions as iv
from jaxheads import sahara
from jaxheads.models.layers import scale_queries


def test_scale_queries_multiplies_each_heads_query_by_its_own_scale():
    q = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
    scale = jnp.array([0.5, 0.0, 2.0])
    heads = iv.Interventions(scale, jnp.ones(3))
    np.testing.assert_array_equal(scale_queries(q, heads), q * scale[None, None, :, None])
    per_example = iv.Interventions(jnp.array([[1.0, 3.0, 1.0], [0.25, 1.0, 1.0]]), jnp.ones((2, 3)))
    expected = np.asarray(q).copy()
    expected[0, :, 1] *= 3.0
    expected[1, :, 0] *= 0.25
    np.testing.assert_array_equal(scale_queries(q, per_example), expected)
    assert scale_queries(q, None) is q


def test_query_scale_equals_the_heads_query_weights_scaled(tiny_checkpoint):
    """Without a query norm, q_scale = s at (l, n) is the same model as head n's q_proj columns of layer l times
    s (no bias in this checkpoint): ablation by `forward` against an edited checkpoint, unablated."""
    _, directory = tiny_checkpoint("llama_mha")
    model = jaxheads.load(directory)
    ids, mask = padded_inputs(10)
    graphdef, state = nnx.split(model.module)
    edited = jax.tree.map(lambda x: x, state)
    for (layer, head), s in {(1, 2): 0.3, (2, 0): 0.0}.items():
        edited["q"][...] = edited["q"][...].at[layer, :, head, :].multiply(s)
    reference = nnx.merge(graphdef, edited)(jnp.asarray(ids), jnp.asarray(mask))
    q_scale = jnp.ones((model.num_layers, model.num_heads)).at[1, 2].set(0.3).at[2, 0].set(0.0)
    ours = jaxheads.forward(model, ids, mask, iv.Interventions(q_scale, jnp.ones_like(q_scale)))
    np.testing.assert_allclose(np.asarray(ours)[mask], np.asarray(reference)[mask], atol=2e-5, rtol=0)
    assert np.abs(np.asarray(ours) - np.asarray(jaxheads.forward(model, ids, mask)))[mask].max() > 1e-2


def test_a_resumed_sahara_runs_only_the_scans_of_its_unfinished_steps(tiny_checkpoint, monkeypatch):
    model = jaxheads.load(tiny_checkpoint("llama_gqa_llama3_rope_tied")[1])
    prompts = [list(np.random.default_rng(s).integers(3, 128, 6 + s)) for s in range(3)]
    scans = []
    scan = sahara.scan_ablations
    monkeypatch.setattr(sahara, "scan_ablations", lambda *a, **k: scans.append(a[2]) or scan(*a, **k))
    saved = []
    first = sahara.sahara(model, prompts, steps=1, batch_size=3, on_step=saved.append)
    assert len(scans) == 1 and len(saved) == 1
    resumed = sahara.sahara(model, prompts, steps=3, batch_size=3, done_steps=saved)
    assert len(scans) == 3  # steps 2 and 3 only
    # the scans of steps 2 and 3 ablate the logged first head with each of the other 11, then the first two heads
    # with each of the other 10
    assert [int(ablations.q_scale.shape[0]) for ablations in scans[1:]] == [11, 10]
    assert all(np.all(np.asarray(ablations.q_scale)[:, first.heads[0][0], first.heads[0][1]] < 1)
               for ablations in scans[1:])
    assert resumed.heads[0] == first.heads[0] and resumed.steps[0] is saved[0]
    done = sahara.sahara(model, prompts, steps=3, batch_size=3, done_steps=resumed.steps)
    assert len(scans) == 3 and done.heads == resumed.heads  # nothing left to compute


def test_response_cross_entropy_is_the_mean_over_response_tokens_by_hand():
    """Uniform logits over V = 16: every token costs log 16, and the mean over response tokens is log 16 however
    many there are (one token included: the count, not a floor of the count, divides)."""
    from jaxheads.train.data import Example, pad_right
    from jaxheads.train.trainer import response_cross_entropy

    for examples in ([Example((5, 6, 7, 8), 3)], [Example((5, 6, 7, 8, 9), 2), Example((5, 6, 9), 2)]):
        batch = pad_right(examples, pad=0, max_length=16)
        logits = np.zeros((*batch.ids.shape, 16), np.float32)
        np.testing.assert_allclose(response_cross_entropy(logits, batch.ids, batch.response), np.log(16), rtol=1e-6)
    batch = pad_right([Example((5, 6, 7), 1)], pad=0, max_length=16)
    logits = np.zeros((*batch.ids.shape, 16), np.float32)
    logits[0, 0, 6] = np.log(15.0)  # p(6) = 15 / 30 = 1/2 at the first answer token, uniform 1/16 at the second
    np.testing.assert_allclose(response_cross_entropy(logits, batch.ids, batch.response),
                               (np.log(2) + np.log(16)) / 2, rtol=1e-6)


def test_sink_attention_of_a_two_token_sequence_under_uniform_attention_is_one_half(tiny_checkpoint):
    """Zero queries make every head's attention uniform over the prefix: the one query after the sink of a
    two-token sequence puts exactly 1/2 on it, and over T tokens the mean of 1/(i+1), i = 1..T-1."""
    from jaxheads.sink import sink_attention

    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    graphdef, state = nnx.split(jaxheads.load(directory).module)
    state["q"][...] = jnp.zeros_like(state["q"][...])
    module = nnx.merge(graphdef, state)
    ids = np.array([[0, 5, 9, 0, 0], [7, 3, 4, 8, 2]])
    mask = np.array([[False, True, True, False, False], [True, True, True, True, True]])
    alpha = np.asarray(sink_attention(module, ids, mask))
    np.testing.assert_allclose(alpha[0], 0.5, atol=1e-6)
    np.testing.assert_allclose(alpha[1], np.mean(1 / np.arange(2, 6)), atol=1e-6)
