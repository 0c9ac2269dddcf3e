"""Ships and Sahara: the batched prefix-reusing scan against one-head-at-a-time loops and against an
independent `transformers` implementation with hooks; a planted head is found."""

import jax
import numpy as np
import pytest
import torch
from conftest import hf_logits

import jaxheads
from jaxheads import interventions as iv
from jaxheads import sahara, scan, ships
from jaxheads.errors import DataError, JaxheadsError

PROMPTS = [list(np.random.default_rng(0).integers(3, 128, n)) for n in (5, 9, 12, 7, 3)]


@pytest.fixture(scope="module")
def gqa(tiny_checkpoint):
    hf_model, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    return hf_model, jaxheads.load(directory)


def _loop_scores(model, batches, kind, epsilon):
    """One forward pass per head through `jaxheads.forward`, on the same batches the scan uses."""
    L, N = model.num_layers, model.num_heads
    scores = np.zeros((len(PROMPTS), L, N))
    for batch in batches:
        base = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask)[:, -1])
        for layer in range(L):
            for head in range(N):
                heads = iv.ablate([(layer, head)], L, N, kind, epsilon)
                logp = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask, heads)[:, -1])
                kl = np.asarray(np.sum(np.exp(base) * (base - logp), axis=-1))
                real = batch.indices >= 0
                scores[batch.indices[real], layer, head] = kl[real]
    return scores


@pytest.mark.parametrize("kind", ["ua", "sc", "mean"])
def test_scan_equals_one_head_at_a_time_loop(gqa, kind):
    _, model = gqa
    scores = ships.query_level(model, PROMPTS, kind, batch_size=2, chunk_size=3)
    expected = _loop_scores(model, scan.make_batches(model, PROMPTS, 2), kind, iv.DEFAULT_EPSILON)
    assert scores.shape == (5, model.num_layers, model.num_heads)
    assert scores.min() > 0
    # Both sides run in float32 but reduce in another order (the scan reuses the unablated prefix), so each
    # log-probability may differ by a few ulps of the largest logit; a KL, a p-weighted difference of two of them,
    # by about twice that. 8 ulps on each side gives about 1e-5 here (seen: up to 2.5e-6), under 1% of the smallest
    # score (1.6e-3), while a wrong head or batch row changes a score by about its own size.
    scale = max(float(np.abs(jaxheads.forward(model, batch.ids, batch.mask)).max())
                for batch in scan.make_batches(model, PROMPTS, 2))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=16 * np.finfo(np.float32).eps * scale)


def _hf_ships(hf_model, prompts, kind, epsilon):
    """Independent reference: `transformers` with a hook that scales one head's slice of q_proj's output (ua)
    or of o_proj's input (sc, mean), KL of the last-position distributions, one prompt and head at a time."""
    cfg = hf_model.config
    L, N, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    scores = np.zeros((len(prompts), L, N))
    for p, prompt in enumerate(prompts):
        ids = np.array([prompt])
        base = torch.log_softmax(torch.tensor(hf_logits(hf_model, ids)[0, -1], dtype=torch.float64), -1)
        for layer in range(L):
            attention = hf_model.model.layers[layer].self_attn
            for head in range(N):
                def rewrite(x):
                    x = x.clone()
                    shaped = x.view(*x.shape[:-1], N, d)
                    if kind == "mean":
                        shaped[..., head, :] = shaped.mean(dim=-2)
                    else:
                        shaped[..., head, :] *= epsilon
                    return x
                if kind == "ua":
                    handle = attention.q_proj.register_forward_hook(lambda _, a, out: rewrite(out))
                else:
                    handle = attention.o_proj.register_forward_pre_hook(lambda _, args: (rewrite(args[0]),))
                try:
                    logits = hf_logits(hf_model, ids)[0, -1]
                finally:
                    handle.remove()
                ablated = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
                scores[p, layer, head] = float(torch.sum(base.exp() * (base - ablated)))
    return scores


@pytest.mark.parametrize("kind", ["ua", "sc", "mean"])
def test_scan_matches_transformers_hooks(gqa, kind):
    hf_model, model = gqa
    scores = ships.query_level(model, PROMPTS, kind, batch_size=4, chunk_size=16)
    np.testing.assert_allclose(scores, _hf_ships(hf_model, PROMPTS, kind, iv.DEFAULT_EPSILON), atol=1e-4, rtol=0)


def test_dataset_level_equals_loop_and_svd(gqa):
    """Dataset-level Ships: principal angle between the top left singular vectors of the final-norm
    last-position representations, recomputed here with forward passes and numpy's SVD."""
    _, model = gqa
    L, N = model.num_layers, model.num_heads
    scores = ships.dataset_level(model, PROMPTS, "ua", rank=1, batch_size=2)
    module = model.module

    def representations(heads):
        rows = []
        for prompt in PROMPTS:
            ids = np.array([prompt])
            h = module.run_layers(module.embed_tokens(ids), np.arange(len(prompt))[None],
                                  np.tril(np.ones((1, len(prompt), len(prompt)), bool)), heads).h
            rows.append(np.asarray(module.final_hidden(h[0, -1])))
        return np.array(rows, np.float64)

    u_base = np.linalg.svd(representations(None))[0][:, 0]
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        u_abl = np.linalg.svd(representations(iv.ablate([(layer, head)], L, N, "ua")))[0][:, 0]
        expected = np.degrees(np.arccos(min(1.0, abs(u_base @ u_abl))))
        assert scores[layer, head] == pytest.approx(expected, abs=1e-3)


def _planted_model(tiny_checkpoint, layer=1, head=2):
    """A tiny model in which head (layer, head) is made responsible for the next-token distribution: its
    attention is sharpened and its output weight enlarged while every other head's output is shrunk."""
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    module = model.module
    shrink = np.full(module.o[...].shape[:2], 0.01, np.float32)
    shrink[layer, head] = 20.0
    module.o[...] = module.o[...] * shrink[:, :, None, None]
    module.q[...] = module.q[...].at[layer, :, head].multiply(8.0)
    return model


def test_planted_head_is_top_ships_head_and_first_sahara_pick(tiny_checkpoint):
    model = _planted_model(tiny_checkpoint)
    prompts = [list(np.random.default_rng(s).integers(3, 128, 10)) for s in range(6)]
    mean_scores = ships.query_level(model, prompts, "ua", batch_size=3).mean(axis=0)
    assert np.unravel_index(np.argmax(mean_scores), mean_scores.shape) == (1, 2)
    result = sahara.sahara(model, prompts, steps=2, rank=1, batch_size=3)
    assert result.heads[0] == (1, 2)
    assert len(result.steps) == 2 and result.heads[1] != (1, 2)
    assert np.isnan(result.steps[1].scores[1, 2])  # the chosen head is not a candidate again
    assert result.seconds > 0


def test_sahara_resumes_from_saved_steps(gqa):
    _, model = gqa
    full = sahara.sahara(model, PROMPTS, steps=2, batch_size=2)
    saved = []
    first = sahara.sahara(model, PROMPTS, steps=1, batch_size=2, on_step=saved.append)
    resumed = sahara.sahara(model, PROMPTS, steps=2, batch_size=2, done_steps=saved)
    assert first.heads == full.heads[:1]
    assert resumed.heads == full.heads
    np.testing.assert_allclose(resumed.steps[1].scores, full.steps[1].scores)


def test_sahara_step_scores_group_ablations(gqa):
    """Step 2's table scores G ∪ {h}: it equals the dataset-level score of those joint ablations."""
    _, model = gqa
    L, N = model.num_layers, model.num_heads
    result = sahara.sahara(model, PROMPTS, steps=2, batch_size=2)
    chosen = result.heads[0]
    for head in [(0, 1), (2, 3)]:
        if head == chosen:
            continue
        joint = iv.ablate([chosen, head], L, N, "ua")
        expected = ships.dataset_level_scores(model, PROMPTS, jax.tree.map(lambda a: a[None], joint), batch_size=2)
        assert result.steps[1].scores[head] == pytest.approx(float(expected[0]), abs=1e-3)


def test_bad_inputs_give_clear_errors(gqa):
    _, model = gqa
    with pytest.raises(DataError, match="no prompts"):
        ships.query_level(model, [])
    with pytest.raises(JaxheadsError, match=r"head \(3, 0\) is out of range"):
        iv.ablate([(3, 0)], model.num_layers, model.num_heads)
    with pytest.raises(JaxheadsError, match="unknown ablation kind 'zero'"):
        iv.ablate([(0, 0)], model.num_layers, model.num_heads, "zero")
    with pytest.raises(DataError, match="longer than the model's context"):
        scan.make_batches(model, [list(range(3, 3 + model.config.max_position_embeddings + 1))])
