"""Sharded scans and training on 8 simulated CPU devices give the single-device results, for every sharding preset
(tensor parallel with vocabulary-parallel logits and the KV/query-group split, FSDP, both) on data-parallel, mixed
and mostly tensor-parallel meshes, with ablation chunks split over the data axis when the prompts do not fill it;
a checkpoint written on one mesh restores exactly on others."""

import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxheads.errors import JaxheadsError
from jaxheads.models.config import ModelConfig
from jaxheads.scan import (
    FALLBACK_CHUNK,
    MAX_AUTO_CHUNK,
    MEMORY_SHARE,
    ablation_bytes,
    auto_chunk_size,
    check_memory,
)
from jaxheads.sharding import parse_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (data, model, rules): 5 prompts on (8, 1) do not fill the data axis (ablation chunks are split over it); the
# tiny model's 2 KV heads on a model axis of 4 split 2 ways, each group's query heads the other 2.
MESHES = [(8, 1, "tp"), (8, 1, "fsdp"), (4, 2, "tp"), (2, 4, "tp"), (2, 4, "tp_fsdp")]
LEARNING_RATE = 1e-3

# One process with 8 devices runs every layout; the reference is the (1, 1) mesh, i.e. one device. The model is
# loaded onto each mesh in its rules' layout. Results go to an .npz per layout: logits, Ships query-level
# scores, Sahara's heads and step tables, greedy tokens of a generation with per-prompt ablations, and the
# weights and metrics after one Surgery training step in the same rules (compiling a training step takes ~20 s
# here, so each layout trains once). Then the (4, 2) checkpoint is restored on (2, 4) with FSDP and on (8, 1)
# by re-running the finished training.
SCRIPT = """
import dataclasses, sys
import jax, numpy as np
import jaxheads
from jaxheads import interventions, sahara, ships
from jaxheads.sharding import make_mesh
from jaxheads.train import Example, PairSet, TrainConfig, train

directory, out = sys.argv[1], sys.argv[2]
assert jax.device_count() == 8
prompts = [list(np.random.default_rng(s).integers(3, 128, 4 + s)) for s in range(5)]
ids, mask = jaxheads.tokens.pad_left(prompts, 0, 8)

def examples(count, seed, answer):
    rng = np.random.default_rng(seed)
    return [Example(tuple(rng.integers(3, 128, 4 + answer + i % 3).tolist()), 4) for i in range(count)]

task, pairs = examples(8, 0, 6), PairSet(examples(4, 1, 6), examples(4, 2, 3))
config = TrainConfig(steps=1, batch_size=8, learning_rate=LEARNING_RATE, warmup_steps=0, surgery_lambda=10.0,
                     surgery_batch=2)

def run_training(model, name, mesh, rules="tp"):
    result = train(model, task, dataclasses.replace(config, sharding=rules), f"{out}/{name}", pairs, mesh=mesh)
    metrics = {k: v for k, v in result.records[-1].items() if k not in ("seconds", "lr")}
    return {**{"w_" + k: v for k, v in result.weights.items()}, **{"m_" + k: v for k, v in metrics.items()}}

for data, tensor, rules in [(1, 1, "tp")] + MESHES:
    mesh = make_mesh(data, tensor)
    model = jaxheads.load(directory, mesh=mesh, sharding=rules)
    logits = np.asarray(jaxheads.forward(model, ids, mask))
    query = ships.query_level(model, prompts, "ua", batch_size=8, chunk_size=5, mesh=mesh)
    found = sahara.sahara(model, prompts, steps=2, batch_size=8, chunk_size=8, mesh=mesh)
    steps = np.nan_to_num([s.scores for s in found.steps], nan=-1)
    per_prompt = jax.tree.map(lambda a: a[:3], interventions.single_heads(3, 4, "ua", 1e-5))  # filled up to data
    tokens = jaxheads.generate(model, prompts[:3], max_new_tokens=4, interventions=per_prompt, mesh=mesh).tokens
    np.savez(f"{out}/{data}x{tensor}_{rules}.npz", logits=logits, query=query, heads=np.array(found.heads),
             steps=steps, tokens=np.array(tokens), **run_training(model, f"{data}x{tensor}_{rules}", mesh, rules))
for data, tensor, rules in [(2, 4, "tp_fsdp"), (8, 1, "tp")]:
    mesh = make_mesh(data, tensor)
    model = jaxheads.load(directory, mesh=mesh, sharding=rules)
    np.savez(f"{out}/restored_{data}x{tensor}.npz", **run_training(model, "4x2_tp", mesh, rules))
print("done")
""".replace("MESHES", repr(MESHES)).replace("LEARNING_RATE", repr(LEARNING_RATE))


@pytest.fixture(scope="module")
def sharded_runs(tiny_checkpoint, tmp_path_factory):
    """name -> the arrays one run of SCRIPT saved (one subprocess for every mesh)."""
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    out = tmp_path_factory.mktemp("sharded")
    # LLVM optimisation level 0 halves the compile time here; both sides of each comparison run in this process
    # with the same flags, and the sharding (GSPMD partitioning) is done before LLVM.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(directory), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    return {path.stem: dict(np.load(path)) for path in out.glob("*.npz")}


@pytest.mark.parametrize("layout", MESHES)
def test_sharded_scans_and_training_step_equal_one_device(sharded_runs, layout):
    """Logits, Ships, Sahara, generation and a Surgery step in every layout."""
    one, sharded = sharded_runs["1x1_tp"], sharded_runs["{}x{}_{}".format(*layout)]
    # float32 logits: the same products summed in another order across shards (vocabulary-parallel logits are
    # whole rows per shard; the hidden and MLP contractions are split).
    np.testing.assert_allclose(sharded["logits"], one["logits"], rtol=1e-5, atol=1e-5)
    # KL values of single-head ablations reach ~1e-6 nats; their float32 rounding differs with the order in
    # which a sharded contraction adds partial sums, so the tiniest scores get an absolute tolerance.
    np.testing.assert_allclose(sharded["query"], one["query"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sharded["heads"], one["heads"])
    # Principal angles come from arccos of cosines near 1, which magnifies float32 rounding (degrees).
    np.testing.assert_allclose(sharded["steps"], one["steps"], atol=1e-3)
    np.testing.assert_array_equal(sharded["tokens"], one["tokens"])  # greedy generation with per-prompt heads
    _assert_training_equal(sharded, one)


@pytest.mark.parametrize("target", ["restored_2x4", "restored_8x1"])
def test_checkpoint_from_one_mesh_restores_exactly_on_another(sharded_runs, target):
    saved, restored = sharded_runs["4x2_tp"], sharded_runs[target]
    for name in (key for key in saved if key.startswith("w_")):
        np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)


def _assert_training_equal(sharded, one):
    for name in (key for key in one if key.startswith("m_")):
        np.testing.assert_allclose(sharded[name], one[name], rtol=1e-5, err_msg=name)
    # Adam's first update is lr · g / (|g| + eps) = ±lr for every gradient entry well above eps = 1e-8; an entry
    # near eps (rounding noise of a sum that cancels) moves by up to 2 lr when a sharded sum rounds differently
    # (seen: 1 of the ~101k weights, by 8% of lr). So all but 0.1% of the weights must match to 1e-5, and every
    # weight to within 2 lr.
    names = [key for key in one if key.startswith("w_")]
    close = np.concatenate([np.isclose(sharded[n], one[n], rtol=1e-5, atol=1e-6).ravel() for n in names])
    assert close.mean() > 0.999, f"{int((~close).sum())} of {close.size} weights differ"
    for name in names:
        np.testing.assert_allclose(sharded[name], one[name], atol=2 * LEARNING_RATE, err_msg=name)


def specs_of(cfg, data, model, rules):
    from jaxheads.models import params as param_table
    from jaxheads.sharding import MODEL_Q, kv_split, parse_rules, resolve_spec

    sizes = {"data": data, "model": kv_split(model, cfg.num_kv_heads)}
    if model // sizes["model"] > 1:
        sizes[MODEL_Q] = model // sizes["model"]
    return {name: resolve_spec(param_table.logical_axes(cfg)[name], shape, dict(parse_rules(rules)), sizes)
            for name, shape in param_table.shapes(cfg).items()}


def test_rules_split_heads_kv_groups_mlp_width_vocabulary_and_the_hidden_axis():
    cfg = ModelConfig(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3,
                      num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64)
    tp = specs_of(cfg, 1, 2, "tp")
    assert tp["q"] == P(None, None, "model") and tp["o"] == P(None, "model")
    assert tp["k"] == tp["v"] == P(None, None, "model")  # 2 KV heads split 2 ways
    assert tp["gate"] == P(None, None, "model") and tp["down"] == P(None, "model")
    assert tp["embed"] == tp["lm_head"] == P("model") and tp["attn_norm"] == P()  # vocabulary-parallel
    # A model axis of 4 over 2 KV heads: KV heads over 2 of it, each group's query heads over the other 2.
    groups = specs_of(cfg, 1, 4, "tp")
    assert groups["k"] == P(None, None, "model") and groups["q"] == P(None, None, ("model", "model_q"))
    both = specs_of(cfg, 2, 2, "tp_fsdp")
    assert both["q"] == P(None, "data", "model") and both["embed"] == P("model", "data")
    assert both["attn_norm"] == P(None, "data") and both["down"] == P(None, "model", "data")
    fsdp = specs_of(cfg, 2, 1, "fsdp")
    assert fsdp["q"] == P(None, "data") and fsdp["embed"] == P(None, "data") and fsdp["lm_head"] == P(None, "data")
    # an axis the mesh axis does not divide stays whole: 3 layers of norms are not split, D = 64 over 3 is not
    assert specs_of(cfg, 3, 1, "fsdp")["q"] == P()
    with pytest.raises(JaxheadsError, match="--sharding wants a preset"):
        specs_of(cfg, 1, 1, "zero3")


def test_mesh_flag_is_checked():
    with pytest.raises(JaxheadsError, match="data,model"):
        parse_mesh("4x2")
    with pytest.raises(JaxheadsError, match="devices"):
        parse_mesh("1,3")


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_chunk_size_follows_free_device_memory():
    cfg = ModelConfig(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096)
    per_ablation = ablation_bytes(cfg, rows=16, tokens=32, itemsize=2)
    # per token D + 3F in bfloat16, one float32 copy of the dense kernel's logits, the last position's vocabulary
    assert per_ablation == 16 * 32 * (4096 + 3 * 11008) * 2 + 16 * 32 * 32 * 32 * 4 + 3 * 16 * 32000 * 4
    split = dict(heads=4, mlp=4, vocab=4, saved_embed=4)  # e.g. tensor parallel over 4
    assert ablation_bytes(cfg, 16, 32, 2, splits=split) == (16 * 32 * (4096 + 3 * 11008 // 4) * 2
                                                            + 16 * 8 * 32 * 32 * 4 + 3 * 16 * 8000 * 4)
    inputs = 32 * 16 * 32 * 4096 * 2  # the saved layer inputs of the batch
    free = int((inputs + 20 * per_ablation) / MEMORY_SHARE) + 1
    device = FakeDevice({"bytes_limit": 80 * 2**30, "bytes_in_use": 80 * 2**30 - free})
    assert auto_chunk_size(cfg, 16, 32, 2, device) == 20  # MEMORY_SHARE of the free memory, beside the inputs
    assert auto_chunk_size(cfg, 16, 32, 2, device, splits=split) > 20 * 3  # a quarter of the activations per device
    assert auto_chunk_size(cfg, 16, 32, 2, FakeDevice({"bytes_limit": 10**15, "bytes_in_use": 0})) == MAX_AUTO_CHUNK
    assert auto_chunk_size(cfg, 16, 32, 2, FakeDevice({"bytes_limit": 100, "bytes_in_use": 99})) == 1
    assert auto_chunk_size(cfg, 16, 32, 2, FakeDevice(None)) == FALLBACK_CHUNK  # CPU: no statistics


def test_a_scan_that_does_not_fit_says_by_how_much_and_what_would():
    cfg = ModelConfig(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096)
    per_ablation = ablation_bytes(cfg, rows=16, tokens=32, itemsize=2)
    inputs = 32 * 16 * 32 * 4096 * 2
    device = FakeDevice({"bytes_limit": 80 * 2**30, "bytes_in_use": 80 * 2**30 - (inputs + 10 * per_ablation)})
    check_memory(cfg, 16, 32, 2, 10, device)  # exactly fits
    with pytest.raises(JaxheadsError, match=r"GiB short; --chunk_size=10 fits"):
        check_memory(cfg, 16, 32, 2, 11, device)
    tight = FakeDevice({"bytes_limit": 80 * 2**30, "bytes_in_use": 80 * 2**30 - inputs})
    with pytest.raises(JaxheadsError, match="not even one ablation fits"):
        check_memory(cfg, 16, 32, 2, 1, tight)
    check_memory(cfg, 16, 32, 2, 10**6, FakeDevice(None))  # CPU: no statistics, nothing to check


def test_rules_text_reads_back_as_the_same_rules():
    from jaxheads.sharding import parse_rules, rules_text

    for text in ("tp", "fsdp", "tp_fsdp", "tp+vocab=none", "fsdp+heads=model", "tp+embed=data+mlp=data"):
        assert dict(parse_rules(rules_text(parse_rules(text)))) == dict(parse_rules(text)), text
    assert rules_text(parse_rules("tp+embed=data")) == "tp_fsdp"  # the preset those rules are
