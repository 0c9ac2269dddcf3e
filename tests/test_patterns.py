"""Attention patterns and per-head outputs against `transformers`' eager attention maps (`output_attentions=True`)
and o_proj inputs on tiny random models of every family, with left padding, with and without a query-scaling
(ua) intervention applied on the transformers side by a hook, as tests/test_ships.py's reference does."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import make_hf_model, padded_inputs
from flax import nnx
from test_gemma import GEMMA_CONFIGS

import jaxheads
from jaxheads import interventions as iv
from jaxheads.attention import AttentionKernel
from jaxheads.errors import JaxheadsError
from jaxheads.patterns import attention_patterns, head_outputs

FAMILIES = ["llama_gqa_llama3_rope_tied", "mistral_sliding", "qwen2_bias", "qwen3_qk_norm", "gemma",
            "gemma2_softcap_sliding", "gemma3_qk_norm_local_global"]
QK_NORM = {"qwen3_qk_norm", "gemma3_qk_norm_local_global"}
LAYER, HEAD, SCALE = 1, 2, 0.3  # the ua intervention: head (1, 2)'s query times 0.3
LENGTH = 14


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """name -> (transformers model, jaxheads model loaded from its saved checkpoint)."""
    made = {}

    def get(name):
        if name not in made:
            if name in GEMMA_CONFIGS:
                torch.manual_seed(0)
                hf_model = transformers.AutoModelForCausalLM.from_config(GEMMA_CONFIGS[name](),
                                                                         attn_implementation="eager").eval()
                with torch.no_grad():
                    for param_name, param in hf_model.named_parameters():
                        if "norm" in param_name:
                            param.add_(0.3 * torch.randn_like(param))
            else:
                hf_model = make_hf_model(name)
            directory = tmp_path_factory.mktemp(name)
            hf_model.save_pretrained(directory)
            made[name] = hf_model, jaxheads.load(directory)
        return made[name]

    return get


def _hf_reference(hf_model, name, ids, mask, intervene, num_heads, head_dim):
    """transformers' eager attention maps `[B, L, N, T, T]` and o_proj inputs `[B, L, T, N, d]`, with head (1, 2)'s
    query scaled on q_proj's output (q_norm's for QK-norm models: a scale before the norm would be normalised
    away) when `intervene`."""
    N, d = num_heads, head_dim
    handles, captured = [], {}

    def scale_query(_, args, out):
        out = out.clone()
        if out.shape[-1] == N * d:  # q_proj: [B, T, N*d]
            out.view(*out.shape[:-1], N, d)[..., HEAD, :] *= SCALE
        else:  # q_norm: [B, T, N, d] (Qwen3) or [B, N, T, d] (Gemma 3); T != N tells them apart
            axis = 1 if out.shape[1] == N else 2
            out.select(axis, HEAD).mul_(SCALE)
        return out

    attention = hf_model.model.layers[LAYER].self_attn
    if intervene:
        handles.append((attention.q_norm if name in QK_NORM else attention.q_proj).register_forward_hook(scale_query))
    for layer, block in enumerate(hf_model.model.layers):
        def keep(_, args, layer=layer):
            captured[layer] = args[0].detach().clone()
        handles.append(block.self_attn.o_proj.register_forward_pre_hook(keep))
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.long)
    try:
        with torch.no_grad():
            maps = hf_model(input_ids=ids_t, attention_mask=mask_t, position_ids=torch.clamp(mask_t.cumsum(-1) - 1, min=0),
                            output_attentions=True).attentions
    finally:
        for handle in handles:
            handle.remove()
    outputs = np.stack([captured[layer].numpy() for layer in range(len(maps))], axis=1)
    return np.stack([m.numpy() for m in maps], axis=1), outputs.reshape(*outputs.shape[:3], N, d)


@pytest.mark.parametrize("name", FAMILIES)
def test_patterns_and_head_outputs_match_transformers(family, name):
    hf_model, model = family(name)
    cfg = model.config
    ids, mask = padded_inputs(LENGTH)  # rows 1 and 2 left-padded by 5 and 1
    assert LENGTH != cfg.num_heads
    heads = iv.ablate([(LAYER, HEAD)], cfg.num_layers, cfg.num_heads, "ua", epsilon=SCALE)
    plain_maps = None
    for interventions, layers in ((None, None), (heads, (2, LAYER))):
        maps, outputs = _hf_reference(hf_model, name, ids, mask, interventions is not None, cfg.num_heads,
                                      cfg.head_dim)
        chosen = list(range(cfg.num_layers)) if layers is None else list(layers)
        ours = np.asarray(jaxheads.attention_patterns(model, ids, mask, layers, interventions))
        assert ours.shape == (3, len(chosen), cfg.num_heads, LENGTH, LENGTH) and ours.dtype == np.float32
        for b in range(3):
            real = mask[b]
            np.testing.assert_allclose(ours[b][:, :, real], maps[b, chosen][:, :, real], atol=1e-5, rtol=0)
            assert np.all(ours[b][:, :, ~real] == 0)  # padding queries attend nothing
        np.testing.assert_allclose(ours.sum(-1).transpose(0, 3, 1, 2)[mask], 1.0, atol=1e-6)  # real queries' rows
        mine = np.asarray(head_outputs(model, ids, mask, layers, interventions))
        assert mine.shape == (3, len(chosen), LENGTH, cfg.num_heads, cfg.head_dim)
        # weighted sums of values up to ~5 after up to three layers computed in another float32 order: errors of
        # ~1e-5 of the values' scale, also where the sum cancels to a small result
        expected = outputs[:, chosen].transpose(0, 2, 1, 3, 4)[mask]
        np.testing.assert_allclose(mine.transpose(0, 2, 1, 3, 4)[mask], expected, atol=1e-5 * np.abs(expected).max(),
                                   rtol=0)
        if interventions is None:
            plain_maps = ours
        else:  # the scaled head's pattern really changed (softer: its logits shrank by 0.3)
            assert np.abs(ours[:, 1, HEAD] - plain_maps[:, LAYER, HEAD])[mask].max() > 1e-2


def test_per_example_interventions_and_blocked_head_outputs(family):
    """`[B, L, N]` interventions act on their own rows; head outputs through the blocked kernel (forced) equal the
    dense kernel's."""
    _, model = family("gemma2_softcap_sliding")
    cfg = model.config
    ids, mask = padded_inputs(LENGTH)
    one = iv.ablate([(LAYER, HEAD)], cfg.num_layers, cfg.num_heads, "ua", epsilon=SCALE)
    per_row = jax.tree.map(lambda a: np.stack([np.asarray(a), np.ones_like(a), np.asarray(a)]), one)
    mixed = np.asarray(attention_patterns(model, ids, mask, interventions=per_row))
    np.testing.assert_array_equal(mixed[[0, 2]], np.asarray(attention_patterns(model, ids, mask, interventions=one))[[0, 2]])
    np.testing.assert_array_equal(mixed[1], np.asarray(attention_patterns(model, ids, mask))[1])
    module = nnx.clone(model.module)
    module.attention_kernel = AttentionKernel(dense_max_keys=0, block_q=4, block_k=4)
    blocked = dataclasses.replace(model, module=module)
    dense = np.asarray(head_outputs(model, ids, mask, interventions=one))
    # the kernels differ in float32 summation order only: ~1e-5 of the values' scale, as against transformers
    np.testing.assert_allclose(np.asarray(head_outputs(blocked, ids, mask, interventions=one)), dense,
                               atol=1e-5 * np.abs(dense).max(), rtol=0)


def test_bad_layers_are_named(family):
    _, model = family("llama_gqa_llama3_rope_tied")
    ids, mask = padded_inputs(LENGTH)
    with pytest.raises(JaxheadsError, match=r"layers in 0\.\.2, got \[3\]"):
        attention_patterns(model, ids, mask, layers=[3])
    with pytest.raises(JaxheadsError, match="input_ids must be"):
        head_outputs(model, ids[0], mask[0])
