"""Parity of the Flax port with `transformers` (PyTorch) on tiny random configs, interventions, and generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, hf_logits, padded_inputs

import jaxheads
from jaxheads import interventions as iv


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_float32_logits_match_transformers(tiny_checkpoint, name):
    hf_model, directory = tiny_checkpoint(name)
    model = jaxheads.load(directory)
    ids, mask = padded_inputs(14)
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    ref = hf_logits(hf_model, ids, mask)
    assert ours.shape == ref.shape == (3, 14, 128)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


def test_bfloat16_weights_close_to_float32(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    ids, mask = padded_inputs(14)
    full = np.asarray(jaxheads.forward(jaxheads.load(directory), ids, mask))
    half_model = jaxheads.load(directory, dtype="bfloat16")
    assert half_model.module.q[...].dtype == jnp.bfloat16
    half = np.asarray(jaxheads.forward(half_model, ids, mask))
    assert half.dtype == np.float32
    assert np.abs(half[mask] - full[mask]).max() < 0.03 * np.abs(full[mask]).max()
    assert (half[mask].argmax(-1) == full[mask].argmax(-1)).mean() > 0.9


def _head_rewrite(head, head_dim, new_value):
    """A function that replaces one head's slice of a `[..., N*d]` tensor by `new_value(x: [..., N, d])`."""
    def rewrite(x):
        x = x.clone()
        shaped = x.view(*x.shape[:-1], -1, head_dim)
        shaped[..., head, :] = new_value(shaped)
        return x
    return rewrite


def _run_hooked(hf_model, ids, mask, layer, hook_target, rewrite, pre):
    module = getattr(hf_model.model.layers[layer].self_attn, hook_target)
    if pre:
        handle = module.register_forward_pre_hook(lambda _, args: (rewrite(args[0]),))
    else:
        handle = module.register_forward_hook(lambda _, args, out: rewrite(out))
    try:
        return hf_logits(hf_model, ids, mask)
    finally:
        handle.remove()


HEAD_REWRITES = {
    "sc": lambda head: lambda x: torch.zeros_like(x[..., head, :]),
    "ua": lambda head: lambda x: torch.zeros_like(x[..., head, :]),
    "mean": lambda head: lambda x: x.mean(dim=-2),
}


@pytest.mark.parametrize("kind", ["sc", "mean", "ua"])
def test_intervention_matches_transformers_hook(tiny_checkpoint, kind):
    """sc (ε=0) zeroes a head's o_proj input; mean replaces it by the heads' mean; ua scales its query."""
    hf_model, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    model = jaxheads.load(directory)
    cfg = model.config
    layer, head = 1, 3
    ids, mask = padded_inputs(14)
    rewrite = _head_rewrite(head, cfg.head_dim, HEAD_REWRITES[kind](head))
    target, pre = ("q_proj", False) if kind == "ua" else ("o_proj", True)
    ref = _run_hooked(hf_model, ids, mask, layer, target, rewrite, pre)
    heads = iv.ablate([(layer, head)], cfg.num_layers, cfg.num_heads, kind, epsilon=0.0)
    ours = np.asarray(jaxheads.forward(model, ids, mask, heads))
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)
    base = np.asarray(jaxheads.forward(model, ids, mask))
    assert np.abs(ours - base)[mask].max() > 1e-3  # the ablation really changed something


def test_query_scale_acts_after_qk_norm(tiny_checkpoint):
    """Qwen3 normalises queries per head: q_scale must act on q_norm's output (a scale before it would be
    normalised away), so ua equals a hook on q_norm, not on q_proj."""
    hf_model, directory = tiny_checkpoint("qwen3_qk_norm")
    model = jaxheads.load(directory)
    cfg = model.config
    ids, mask = padded_inputs(14)
    layer, head = 1, 2
    heads = iv.ablate([(layer, head)], cfg.num_layers, cfg.num_heads, "ua", epsilon=0.0)
    ours = np.asarray(jaxheads.forward(model, ids, mask, heads))

    def zero_head(_, args, out):  # q_norm sees [B, T, N, d]
        out = out.clone()
        out[..., head, :] = 0
        return out

    handle = hf_model.model.layers[layer].self_attn.q_norm.register_forward_hook(zero_head)
    try:
        ref = hf_logits(hf_model, ids, mask)
    finally:
        handle.remove()
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)
    assert np.abs(ours - np.asarray(jaxheads.forward(model, ids, mask)))[mask].max() > 1e-3


def test_zero_query_scale_gives_uniform_attention(tiny_checkpoint):
    """q_scale = 0: the head's attention weights (read from transformers' eager attention with the same
    intervention, which the previous test shows jaxheads matches) are exactly 1/(i+1) over the causal prefix."""
    hf_model, _ = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    layer, head, d = 2, 1, hf_model.config.head_dim
    ids = np.random.default_rng(1).integers(3, 128, (1, 9))
    rewrite = _head_rewrite(head, d, HEAD_REWRITES["ua"](head))
    handle = hf_model.model.layers[layer].self_attn.q_proj.register_forward_hook(lambda _, a, out: rewrite(out))
    try:
        with torch.no_grad():
            attn = hf_model(torch.tensor(ids), output_attentions=True).attentions[layer][0, head].numpy()
    finally:
        handle.remove()
    expected = np.tril(np.ones((9, 9))) / np.arange(1, 10)[:, None]
    np.testing.assert_allclose(attn, expected, atol=1e-7)


def test_zero_query_scale_is_uniform_in_jaxheads(tiny_checkpoint):
    """Directly in jaxheads: with q_scale = 0 at (l, n), the head's output at position i is the mean of its KV
    group's values over positions 0..i, so the attention sublayer's output differs from zeroing the head
    (out_scale = 0) by exactly that prefix mean through the head's slice of o_proj."""
    from jaxheads.models.decoder import attention_mask_for_prompt, decoder_layer, positions_from_mask
    from jaxheads.models.layers import rms_norm, rope_tables

    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    model = jaxheads.load(directory)
    cfg, module = model.config, model.module
    layer, head = 1, 2
    ids = jnp.asarray(padded_inputs(14)[0][:1])
    mask = jnp.ones(ids.shape, bool)
    positions, attn_mask = positions_from_mask(mask), attention_mask_for_prompt(cfg, mask)
    inputs = module.run_layers(module.embed_tokens(ids), positions, attn_mask, collect_inputs=True).inputs
    h = inputs[layer]
    p = {name: value[layer] for name, value in module.layer_params().items()}
    p["down"] = jnp.zeros_like(p["down"])  # no MLP: decoder_layer returns h + attention output
    cos, sin = rope_tables(cfg, positions, h.dtype)

    def attention_output(kind):
        heads = jax.tree.map(lambda a: a[layer], iv.ablate([(layer, head)], cfg.num_layers, cfg.num_heads, kind, 0.0))
        return decoder_layer(cfg, p, h, cos, sin, attn_mask, heads)[0] - h

    x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
    values = jnp.einsum("btD,Dkd->btkd", x, p["v"])[:, :, head // cfg.group_size]
    prefix_mean = jnp.cumsum(values, axis=1) / jnp.arange(1, ids.shape[1] + 1)[None, :, None]
    expected = jnp.einsum("btd,dD->btD", prefix_mean, p["o"][head])
    np.testing.assert_allclose(np.asarray(attention_output("ua") - attention_output("sc")), np.asarray(expected),
                               atol=1e-5)


def test_vmapped_interventions_equal_one_by_one(tiny_checkpoint):
    _, directory = tiny_checkpoint("qwen2_bias")
    model = jaxheads.load(directory)
    cfg = model.config
    ids, mask = padded_inputs(14)
    batch = jax.tree.map(lambda a: a[::3], iv.single_heads(cfg.num_layers, cfg.num_heads, "ua", 1e-5))
    batched = jax.vmap(lambda heads: jaxheads.forward(model, ids, mask, heads))(batch)
    for i in range(batch.q_scale.shape[0]):
        one = jaxheads.forward(model, ids, mask, jax.tree.map(lambda a: a[i], batch))
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one), atol=1e-5, rtol=1e-5)


def test_identity_interventions_change_nothing(tiny_checkpoint):
    _, directory = tiny_checkpoint("mistral_sliding")
    model = jaxheads.load(directory)
    ids, mask = padded_inputs(14)
    plain = jaxheads.forward(model, ids, mask)
    ones = jaxheads.forward(model, ids, mask, iv.identity(model.num_layers, model.num_heads, with_mean=True))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(ones))


def test_run_layers_from_any_layer_matches_full_pass(tiny_checkpoint):
    """The prefix-reuse path: layers l..L-1 from the collected input of layer l give the full pass's output."""
    _, directory = tiny_checkpoint("llama_mha")
    model = jaxheads.load(directory)
    module, cfg = model.module, model.config
    ids, mask = (jnp.asarray(a) for a in padded_inputs(14))
    from jaxheads.models.decoder import attention_mask_for_prompt, positions_from_mask

    positions, attn_mask = positions_from_mask(mask), attention_mask_for_prompt(cfg, mask)
    outputs = module.run_layers(module.embed_tokens(ids), positions, attn_mask, collect_inputs=True)
    full, inputs = outputs.h, outputs.inputs
    for layer in range(cfg.num_layers):
        rest = module.run_layers(inputs[layer], positions, attn_mask, start=jnp.int32(layer)).h
        np.testing.assert_allclose(np.asarray(rest), np.asarray(full), atol=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope_tied", "mistral_sliding", "qwen2_bias", "qwen3_qk_norm"])
def test_greedy_generation_matches_transformers(tiny_checkpoint, name):
    hf_model, directory = tiny_checkpoint(name)
    model = jaxheads.load(directory)
    prompts = [[5, 17, 33, 9, 60, 61, 7], [12, 99, 4], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
    ours = jaxheads.generate(model, prompts, max_new_tokens=16)
    for prompt, tokens in zip(prompts, ours.tokens):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=16, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        eos = hf_model.config.eos_token_id
        ref = ref[:ref.index(eos)] if eos in ref else ref
        assert tokens == ref


def test_generation_batch_matches_single_prompt_runs(tiny_checkpoint):
    """Left padding in a batch changes nothing: each prompt's greedy tokens equal its run alone."""
    _, directory = tiny_checkpoint("llama_mha")
    model = jaxheads.load(directory)
    prompts = [[5, 17, 33, 9, 60, 61, 7, 8, 9, 10], [12, 99, 4]]
    together = jaxheads.generate(model, prompts, max_new_tokens=12).tokens
    alone = [jaxheads.generate(model, [p], max_new_tokens=12).tokens[0] for p in prompts]
    assert together == alone


def test_generation_with_interventions_matches_forward_argmax(tiny_checkpoint):
    """The KV-cached loop applies interventions at every step: its tokens equal re-running the full ablated
    forward pass and taking the argmax each time."""
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    model = jaxheads.load(directory)
    cfg = model.config
    heads = iv.ablate([(0, 1), (2, 3)], cfg.num_layers, cfg.num_heads, "ua")
    prompt = [5, 17, 33, 9, 60]
    tokens = jaxheads.generate(model, [prompt], max_new_tokens=8, interventions=heads).tokens[0]
    sequence = list(prompt)
    for _ in range(len(tokens)):
        logits = jaxheads.forward(model, np.array([sequence]), interventions=heads)
        sequence.append(int(np.argmax(np.asarray(logits)[0, -1])))
    assert tokens == sequence[len(prompt):]
    plain = jaxheads.generate(model, [prompt], max_new_tokens=8).tokens[0]
    assert plain != tokens


def test_sampling_respects_top_k_and_is_reproducible(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_mha")
    model = jaxheads.load(directory)
    prompt = [5, 17, 33]
    first = jaxheads.generate(model, [prompt] * 4, max_new_tokens=6, temperature=1.0, top_k=1, seed=3).tokens
    greedy = jaxheads.generate(model, [prompt], max_new_tokens=6).tokens[0]
    assert all(row == greedy for row in first)  # top_k = 1 is greedy whatever the temperature
    a = jaxheads.generate(model, [prompt] * 4, max_new_tokens=6, temperature=1.5, seed=7).tokens
    b = jaxheads.generate(model, [prompt] * 4, max_new_tokens=6, temperature=1.5, seed=7).tokens
    assert a == b
    assert len({tuple(row) for row in a}) > 1  # different rows draw different tokens
