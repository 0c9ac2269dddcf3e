"""`jaxheads plan`: the memory of a scan per device from a config.json alone, checked against sizes computed here
from the architecture, and its advice when a plan does not fit."""

import json
import math

import pytest

from bench.scaling import CONFIGS
from jaxheads.configs import plan as plan_config
from jaxheads.errors import JaxheadsError
from jaxheads.jobs import plan as plan_job
from jaxheads.loading import read_model_config
from jaxheads.plan import GIB, plan, recommend_rules, weights_per_device
from jaxheads.scan import ablation_bytes


@pytest.fixture
def config_files(tmp_path):
    paths = {}
    for name, hf in CONFIGS.items():
        path = tmp_path / name / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(hf))
        paths[name] = path
    return paths


def parameter_count(hf: dict, model_axis: int = 1) -> float:
    """Parameters one device holds with the tensor-parallel rules: norms whole; embedding and LM head split over
    the vocabulary, attention heads and MLP width split (each where the model axis divides them)."""
    V, D, F, L = hf["vocab_size"], hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    N, K = hf["num_attention_heads"], hf["num_key_value_heads"]
    d = D // N
    kv_split = math.gcd(model_axis, K)  # 8 KV heads on a model axis of 16: over 8 of it (query groups the rest)
    per_layer = 2 * N * d * D / model_axis + 2 * K * d * D / kv_split + 3 * D * F / model_axis + 2 * D
    vocab_split = model_axis if V % model_axis == 0 else 1
    return 2 * V * D / vocab_split + D + L * per_layer


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("model_axis", [1, 8, 16])
def test_weights_per_device_follow_the_tensor_parallel_split(config_files, name, model_axis):
    cfg = read_model_config(str(config_files[name]))
    assert weights_per_device(cfg, 2, model_axis) == pytest.approx(2 * parameter_count(CONFIGS[name], model_axis))
    if model_axis == 1:  # the published sizes: 6.74 B, 8.03 B, 70.6 B and 405.9 B parameters
        published = {"Llama-2-7B": 6.74, "Llama-3-8B": 8.03, "Llama-3-70B": 70.55, "Llama-3.1-405B": 405.85}
        assert parameter_count(CONFIGS[name]) / 1e9 == pytest.approx(published[name], abs=0.01)


def test_plan_adds_its_parts_and_the_largest_chunk_is_the_largest_that_fits(config_files):
    cfg = read_model_config(str(config_files["Llama-2-7B"]))
    memory = plan(cfg, data=4, model=2, prompts=100, tokens=256, batch_size=16, chunk_size=8,
                  device_bytes=40 * GIB)
    rows = 4  # 16 prompts per batch over 4 data shards
    # tensor parallel over 2: the saved inputs' hidden axis, the heads, MLP width and vocabulary split in two
    splits = dict(heads=2, mlp=2, vocab=2, saved_embed=2)
    assert memory.rows == rows and memory.layer_inputs == 32 * rows * 256 * 4096 * 2 // 2
    one = ablation_bytes(cfg, rows, 256, 2, splits=splits)
    assert memory.chunk == 8 * one
    assert memory.representations == (32 * 32 + 1) * 100 * 4096 * 4 // 2  # the hidden axis split over model
    assert memory.gathered == 0  # no FSDP
    assert memory.total == memory.weights + memory.layer_inputs + memory.chunk + memory.representations
    fixed = memory.weights + memory.layer_inputs + memory.representations
    largest = memory.largest_chunk
    assert fixed + largest * one <= 40 * GIB
    assert largest == 256 or fixed + (largest + 1) * one > 40 * GIB


def test_fsdp_rules_split_the_weights_over_data_and_gather_one_layer(config_files):
    cfg = read_model_config(str(config_files["Llama-3-70B"]))
    tp = plan(cfg, data=8, model=8, prompts=100, tokens=1024, rules="tp")
    both = plan(cfg, data=8, model=8, prompts=100, tokens=1024, rules="tp_fsdp")
    assert both.weights == pytest.approx(tp.weights / 8, rel=1e-3)  # every parameter's hidden axis over data too
    # one layer's weights over the model axis, bfloat16, gathered inside the layer loop
    hf = CONFIGS["Llama-3-70B"]
    D, F, N, K = hf["hidden_size"], hf["intermediate_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    layer = (2 * N * (D // N) * D + 2 * K * (D // N) * D + 3 * D * F) / 8 + 2 * D
    assert both.gathered == pytest.approx(2 * layer, rel=1e-6) and tp.gathered == 0


def test_the_recommended_rules_use_every_mesh_axis(config_files):
    cfg = read_model_config(str(config_files["Llama-3-70B"]))
    hbm = int(15.75 * GIB)
    # 70B on a v5e-64 slice: tensor parallel alone leaves no room, with FSDP it fits
    assert plan(cfg, 8, 8, prompts=100, tokens=1024, device_bytes=hbm, rules="tp").largest_chunk == 0
    assert recommend_rules(cfg, 8, 8, hbm, prompts=100, tokens=1024) == "tp_fsdp"
    # fsdp alone would leave a model axis of 8 computing the same thing 8 times
    assert recommend_rules(cfg, 32, 8, hbm, prompts=100, tokens=64) != "fsdp"
    assert recommend_rules(cfg, 1, 8, 80 * GIB, prompts=100, tokens=64) == "tp"  # no data axis to split over


def test_plan_command_reads_a_config_and_advises_when_it_does_not_fit(config_files, tmp_path, capsys):
    config = plan_config.get_config()
    config.update(model=str(config_files["Llama-3-70B"]), mesh="8,1", prompts=16, tokens=512, device_memory=80.0,
                  out=str(tmp_path / "plan"), sharding="tp")
    result = plan_job.run(config)
    printed = capsys.readouterr().out
    assert result["fits"] is False and result["largest_chunk"] == 0 and "does NOT fit" in printed
    assert any(line.startswith("--mesh=") for line in result["advice"])  # a wider model axis fits
    written = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert written["num_layers"] == 80 and written["total"] == result["total"] and "provenance" in written
    d, m = (int(x) for x in result["advice"][0].split()[0].removeprefix("--mesh=").split(","))
    assert d * m == 8 and plan(read_model_config(str(config_files["Llama-3-70B"])), d, m, prompts=16, tokens=512,
                               chunk_size=1, device_bytes=80 * GIB).fits
    # without --sharding the plan recommends the rules that fit: on 8 x 1, the weights split over data (FSDP)
    config.update(sharding="", out="")
    recommended = plan_job.run(config)
    assert recommended["rules"] in ("fsdp", "tp_fsdp") and recommended["fits"] is True


def test_plan_reads_the_default_models_gguf_and_checks_its_flags():
    config = plan_config.get_config()
    config.update(mesh="1,1", prompts=8, tokens=64, dtype="float32")
    result = plan_job.run(config)
    assert (result["num_layers"], result["num_heads"]) == (30, 9)
    # SmolLM2-135M: 134.5 M parameters (tied embeddings), float32
    assert result["weights"] == pytest.approx(4 * 134.5e6, rel=0.01)
    for bad, message in [("mesh", "3"), ("tokens", 0), ("scan", "both"), ("device_memory", -1.0)]:
        config = plan_config.get_config()
        config[bad] = message
        with pytest.raises(JaxheadsError):
            plan_job.run(config)
