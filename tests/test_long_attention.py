"""Attention whose memory is linear in the prompt length: the blocked online-softmax kernel against the dense
kernel and `transformers` eager attention on tiny random models of every family (short prompts with the blocked
kernel forced by a small threshold and small tiles, and 4096-token prompts at the default settings), in
generation, sink attention and a 4096-token Ships scan, whose peak memory is measured in a subprocess."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, hf_logits, make_hf_model
from flax import nnx
from test_gemma import GEMMA_CONFIGS

import jaxheads
from jaxheads import interventions as iv
from jaxheads import scan, sink
from jaxheads.attention import AttentionKernel

FORCED = AttentionKernel(dense_max_keys=0, block_q=8, block_k=4)  # every multi-query attention blocked, 8x4 tiles
DENSE = AttentionKernel(dense_max_keys=10 ** 9)  # every attention dense
LONG = 4096
# KL of float32 log-probabilities: the task's bound for the scan against the transformers reference
SHIPS_ATOL = 1e-4


def with_kernel(model, kernel):
    """A copy of `model` whose module runs attention with `kernel`."""
    module = nnx.clone(model.module)
    module.attention_kernel = kernel
    return dataclasses.replace(model, module=module)


def _random_gemma(name):
    """A tiny random `transformers` Gemma (eager, float32) with random norm weights, as tests/test_gemma.py."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(GEMMA_CONFIGS[name](), attn_implementation="eager").eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(0.3 * torch.randn_like(param))
    return model


FAMILIES = ["llama_gqa_llama3_rope_tied", "llama_mqa_bias", "mistral_sliding", "qwen2_bias", "qwen3_qk_norm",
            "gemma", "gemma2_softcap_sliding", "gemma3_qk_norm_local_global"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """name -> (transformers model, jaxheads model loaded from its saved checkpoint)."""
    made = {}

    def get(name):
        if name not in made:
            hf_model = _random_gemma(name) if name in GEMMA_CONFIGS else make_hf_model(name)
            directory = tmp_path_factory.mktemp(name)
            hf_model.save_pretrained(directory)
            made[name] = hf_model, jaxheads.load(directory)
        return made[name]

    return get


def _inputs(batch, length, pads, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 128, (batch, length))
    mask = np.ones((batch, length), bool)
    for row, pad in enumerate(pads):
        mask[row, :pad] = False
    return ids, mask


def test_kernel_choice_follows_key_length():
    kernel = AttentionKernel()
    assert not kernel.blocked(512, 512) and kernel.blocked(513, 513) and kernel.blocked(2, 4096)
    assert not kernel.blocked(1, 4096)  # one query (a generation step): its logits are already linear in S
    assert FORCED.blocked(2, 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_blocked_equals_dense_and_transformers(family, name):
    """37 tokens (not a multiple of the 8x4 tiles), left padding of 0, 5 and 1 slots, with and without a ua
    ablation: the forced blocked kernel equals the dense one everywhere, padding rows included (both zero), and
    transformers on the real positions."""
    hf_model, model = family(name)
    ids, mask = _inputs(3, 37, (0, 5, 1))
    blocked, dense = with_kernel(model, FORCED), with_kernel(model, DENSE)
    heads = iv.ablate([(1, 2)], model.num_layers, model.num_heads, "ua", 0.0)
    for interventions in (None, heads):
        ours = np.asarray(jaxheads.forward(blocked, ids, mask, interventions))
        assert np.isfinite(ours).all()
        # the kernels differ only in float32 rounding (running vs global max, tile-wise sums), which three layers
        # carry into logits of size <10: ~16 ulp (ε = 1.2e-7) of the largest logit
        np.testing.assert_allclose(ours, np.asarray(jaxheads.forward(dense, ids, mask, interventions)), atol=2e-5,
                                   rtol=0)
    np.testing.assert_allclose(np.asarray(jaxheads.forward(blocked, ids, mask))[mask], hf_logits(hf_model, ids, mask)[mask],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mistral_sliding", "gemma2_softcap_sliding", "gemma3_qk_norm_local_global"])
def test_4096_tokens_default_kernel_equals_dense_and_transformers(family, name):
    """A 4096-token prompt (37 left-padding slots) at the default settings runs the blocked kernel (256x256 tiles,
    key blocks outside the causal range or the sliding window skipped) and equals the dense kernel and
    transformers' eager attention. Sums now run over up to 4096 keys (a ~10x larger reordering error than over
    37, √(4096/37)), so the bound is ~40 ulp of logits of size ~8.

    Gemma 3 is compared with the dense kernel only: its RoPE inverse frequencies (θ = 100 and 50000) differ from
    transformers' by 1-2 float32 ulp (numpy's and torch's pow round differently), which at position 4000 turns
    into RoPE angles 1e-4 apart and logits ~1.5e-4 apart on both kernels alike."""
    hf_model, model = family(name)
    assert model.module.attention_kernel.blocked(LONG, LONG)
    ids, mask = _inputs(1, LONG, (37,), seed=1)
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, np.asarray(jaxheads.forward(with_kernel(model, DENSE), ids, mask)), atol=5e-5,
                               rtol=0)
    if name != "gemma3_qk_norm_local_global":
        np.testing.assert_allclose(ours[mask], hf_logits(hf_model, ids, mask)[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope_tied", "mistral_sliding", "gemma3_qk_norm_local_global"])
def test_generation_with_blocked_prefill_gives_the_same_tokens(family, name):
    """Left-padded batch with interventions: the KV-cached generation whose prefill runs the forced blocked kernel
    (over the prompt and the empty cache slots) gives the dense kernel's tokens."""
    _, model = family(name)
    prompts = [[5, 17, 33, 9, 60, 61, 7, 8, 9, 10, 11, 12, 13], [12, 99, 4], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
    heads = iv.ablate([(0, 1), (2, 3)], model.num_layers, model.num_heads, "ua")
    blocked = jaxheads.generate(with_kernel(model, FORCED), prompts, max_new_tokens=12, interventions=heads)
    dense = jaxheads.generate(with_kernel(model, DENSE), prompts, max_new_tokens=12, interventions=heads)
    assert blocked.tokens == dense.tokens and all(len(row) > 0 for row in blocked.tokens)


def test_long_prompt_generation_matches_transformers(family):
    """A 1500-token prompt at the default settings (blocked prefill, sliding window) greedily continues as
    transformers' `generate` does."""
    hf_model, model = family("mistral_sliding")
    prompt = list(np.random.default_rng(3).integers(3, 128, 1500))
    ours = jaxheads.generate(model, [prompt], max_new_tokens=8).tokens[0]
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    eos = hf_model.config.eos_token_id
    assert ours == (ref[:ref.index(eos)] if eos in ref else ref)


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope_tied", "gemma2_softcap_sliding", "gemma3_qk_norm_local_global"])
def test_sink_attention_blocked_equals_dense(family, name):
    """The blocked kernel's sink column, exp(logit[sink] - m) / l from its final running max and sum, equals the
    dense probabilities' column (zero where the sink has left a local window), left and right padding."""
    _, model = family(name)
    ids, mask = _inputs(3, 37, (0, 5, 1), seed=2)
    right_mask = np.stack([np.roll(m, -int((~m).sum())) for m in mask])
    for rows in (mask, right_mask):
        blocked = np.asarray(sink.sink_attention(with_kernel(model, FORCED).module, ids, rows))
        dense = np.asarray(sink.sink_attention(with_kernel(model, DENSE).module, ids, rows))
        assert blocked.shape == (3, model.num_layers, model.num_heads) and np.isfinite(blocked).all()
        np.testing.assert_allclose(blocked, dense, atol=1e-6, rtol=0)


def test_sink_column_at_4096_tokens_equals_dense(family):
    """Sink attention of a 4096-token prompt through soft-capped local and global layers (default kernel)."""
    _, model = family("gemma2_softcap_sliding")
    ids, mask = _inputs(1, LONG, (37,), seed=4)
    ours = np.asarray(jax.jit(sink.sink_attention)(model.module, ids, mask))
    dense = np.asarray(jax.jit(sink.sink_attention)(with_kernel(model, DENSE).module, ids, mask))
    assert ours.min() > 0  # global layers attend the sink from every query
    np.testing.assert_allclose(ours, dense, atol=1e-6, rtol=0)


def test_ablation_bytes_has_no_quadratic_term_on_the_blocked_kernel():
    from jaxheads.models.config import ModelConfig

    cfg = ModelConfig(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=8192)
    blocked = [scan.ablation_bytes(cfg, 4, tokens, 2) for tokens in (2048, 4096, 8192)]
    assert blocked[1] < 2 * blocked[0] and blocked[2] < 2 * blocked[1]  # at most linear growth
    dense = [scan.ablation_bytes(cfg, 4, tokens, 2, DENSE) for tokens in (2048, 4096)]
    assert dense[1] > 3.5 * dense[0]  # the dense kernel's T² logits dominate
    assert blocked[1] < dense[1] / 5
    # below the threshold the estimate is the dense one, as before
    assert scan.ablation_bytes(cfg, 4, 512, 2) == scan.ablation_bytes(cfg, 4, 512, 2, DENSE)


SCAN_SCRIPT = """
import json, resource, sys, time
import numpy as np
import jaxheads
from jaxheads import ships, scan
from jaxheads.attention import AttentionKernel


def status(field):  # bytes, from /proc/self/status
    return int(next(line for line in open('/proc/self/status') if line.startswith(field + ':')).split()[1]) * 1024


model = jaxheads.load(sys.argv[1])
prompt = [int(t) for t in np.random.default_rng(5).integers(3, 128, {length})]
# A child's ru_maxrss starts at its parent's RSS when it was forked (the pre-exec image); clearing the high-water
# mark makes ru_maxrss (the kernel's hiwater RSS, VmHWM) count from here on.
open('/proc/self/clear_refs', 'w').write('5')
baseline = status('VmRSS')
started = time.perf_counter()
scores = ships.query_level(model, [prompt], "ua", batch_size=1, chunk_size=16)
seconds = time.perf_counter() - started
peak, maxrss = status('VmHWM'), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
np.save(sys.argv[2], scores)
cfg = model.config
vmapped = min(16, cfg.num_heads)  # ablations sharing a first layer run together (single heads: N per layer)
print(json.dumps(dict(baseline=baseline, peak=peak, maxrss=maxrss, seconds=seconds,
                      blocked=model.module.attention_kernel.blocked({length}, {length}),
                      estimate_blocked=vmapped * scan.ablation_bytes(cfg, 1, {length}, 4),
                      estimate_dense=vmapped * scan.ablation_bytes(cfg, 1, {length}, 4,
                                                                   AttentionKernel(dense_max_keys=10 ** 9)))))
"""


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory):
    """A tiny GQA Llama (2 layers, 4 heads, 2 KV heads, context 4096) and its query-level Ships scan of one
    4096-token prompt, run in a subprocess that reports its peak RSS above the baseline after import and load."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**TINY, "num_hidden_layers": 2, "max_position_embeddings": LONG},
                                      num_key_value_heads=2, tie_word_embeddings=False)
    # sdpa: the same float32 attention as eager, without its [T, T] probabilities, so the 8 references run fast
    hf_model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    directory = tmp_path_factory.mktemp("long_llama")
    hf_model.save_pretrained(directory)
    scores_path = directory / "scores.npy"
    result = subprocess.run([sys.executable, "-c", SCAN_SCRIPT.format(length=LONG), str(directory), str(scores_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return hf_model, np.load(scores_path), report


def test_4096_token_ships_scan_matches_transformers_hooks(long_scan):
    """Query-level Ships (ua) of a 4096-token prompt equals transformers with a hook scaling one head's slice of
    q_proj's output by ε, one forward per head (as tests/test_ships.py's reference)."""
    hf_model, scores, _ = long_scan
    L, N, d = hf_model.config.num_hidden_layers, hf_model.config.num_attention_heads, hf_model.config.head_dim
    prompt = np.random.default_rng(5).integers(3, 128, LONG)[None]
    base = torch.log_softmax(torch.tensor(hf_logits(hf_model, prompt)[0, -1], dtype=torch.float64), -1)
    expected = np.zeros((1, L, N))
    for layer in range(L):
        for head in range(N):
            def scale_head(_, args, out, head=head):
                out = out.clone()
                out.view(*out.shape[:-1], N, d)[..., head, :] *= iv.DEFAULT_EPSILON
                return out
            handle = hf_model.model.layers[layer].self_attn.q_proj.register_forward_hook(scale_head)
            try:
                logits = hf_logits(hf_model, prompt)[0, -1]
            finally:
                handle.remove()
            ablated = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
            expected[0, layer, head] = float(torch.sum(base.exp() * (base - ablated)))
    assert scores.shape == (1, L, N) and scores.min() > 0
    np.testing.assert_allclose(scores, expected, atol=SHIPS_ATOL, rtol=0)


def test_4096_token_ships_scan_runs_the_blocked_kernel(long_scan):
    """The 4096-token scan takes the blocked kernel, whose estimated activations are a small part of the dense
    kernel's. Its peak memory is a measurement of this machine's allocator, not a pass/fail property: it is
    reported by `python bench/long_prompt.py` (printed here for the log only)."""
    _, _, report = long_scan
    above = report["peak"] - report["baseline"]
    print(f"\n4096-token query-level Ships scan (chunk_size=16, {jax.devices()[0].platform}): peak RSS "
          f"{above / 2**20:.0f} MiB above the {report['baseline'] / 2**20:.0f} MiB baseline after import and load "
          f"(ru_maxrss {report['maxrss'] / 2**20:.0f} MiB), {report['seconds']:.1f} s; estimated activations of one "
          f"chunk (4 ablations vmapped): blocked {report['estimate_blocked'] / 2**20:.1f} MiB, dense (not run) "
          f"{report['estimate_dense'] / 2**30:.2f} GiB")
    assert report["blocked"]
    assert report["estimate_blocked"] < report["estimate_dense"] / 5