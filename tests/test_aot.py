"""Ahead-of-time compiles for a TPU topology on this (CPU) host: every program a command runs compiles for a small
v5e slice, its arguments are the layout's share of the weights, FSDP gathers each layer's weights inside the layer
loop, the ablated pass does no more matmul work than the algorithm needs, and a program too large for the chip is
reported with XLA's own numbers. Needs libtpu (the test extra installs `jax[tpu]`)."""

import json
import math
import os
import subprocess
import sys

import pytest

from jaxheads import aot, hlo, tpu
from jaxheads.configs import plan as plan_config
from jaxheads.jobs import plan as plan_job
from jaxheads.models import params as param_table
from jaxheads.models.config import config_from_hf
from jaxheads.placement import model_layout

TINY = dict(model_type="llama", vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=512,
            rms_norm_eps=1e-5, tie_word_embeddings=False)
CFG = config_from_hf(TINY)
ROWS, TOKENS = 8, 128

# How many ways each parameter is split per preset on a v5e:2x2 slice (4 chips), worked out by hand from the rules:
# tp on 1 x 4: vocabulary, query heads and MLP width over 4, the 2 KV heads over 2 of the 4; norms whole.
# fsdp on 4 x 1: every parameter's hidden axis over 4. tp_fsdp on 2 x 2: the model splits of tp (KV heads divide 2)
# and the hidden axis over 2, so norms are split 2 ways and everything else 4.
SPLITS = {
    ("tp", 1, 4): {"embed": 4, "lm_head": 4, "q": 4, "k": 2, "v": 2, "o": 4, "gate": 4, "up": 4, "down": 4},
    ("fsdp", 4, 1): {name: 4 for name in param_table.shapes(CFG)},
    ("tp_fsdp", 2, 2): {**{name: 4 for name in param_table.shapes(CFG)},
                        "final_norm": 2, "attn_norm": 2, "mlp_norm": 2},
}


@pytest.fixture(scope="module")
def slice4():
    return tpu.topology("v5e:2x2")


def workload(topo, data, model, rules, **options):
    return aot.Workload(CFG, model_layout(CFG, tpu.mesh(topo, data, model), rules), rows=ROWS, tokens=TOKENS,
                        prompts=8, new_tokens=8, train_rows=4, surgery_pairs=2, lora_rank=4, **options)


def test_the_topology_is_a_v5e_slice_with_xlas_usable_hbm(slice4):
    assert slice4.chips == 4 and {device.platform for device in slice4.devices} == {"tpu"}
    assert "v5 lite" in slice4.devices[0].device_kind.lower()
    assert tpu.usable_hbm(slice4.devices[0]) == int(15.75 * 2 ** 30)  # read from XLA's own out-of-memory message
    with pytest.raises(ValueError, match="GENERATION:SHAPE"):
        tpu.topology("v5litepod-16")
    with pytest.raises(ValueError, match="has 4 chips"):
        tpu.mesh(slice4, 2, 4)


@pytest.mark.parametrize("program", aot.PROGRAMS)
def test_every_program_compiles_for_the_slice(slice4, program):
    result = aot.compile_program(program, workload(slice4, 2, 2, "tp_fsdp"), 4)
    assert result.fits and 0 < result.peak_bytes <= result.hbm_bytes
    assert result.argument_bytes > 0 and result.flops > 0


@pytest.mark.parametrize("rules,data,model", list(SPLITS))
def test_argument_bytes_are_the_layouts_share_of_the_weights(slice4, rules, data, model):
    result = aot.compile_program("base", workload(slice4, data, model, rules), None)
    shares = SPLITS[rules, data, model]
    weights = sum(math.prod(shape) * 2 // shares.get(name, 1) for name, shape in param_table.shapes(CFG).items())
    whole = sum(math.prod(shape) * 2 for shape in param_table.shapes(CFG).values())
    inputs = ROWS * TOKENS * (4 + 1) // data  # int32 ids and bool mask, rows over data
    assert weights < whole / 2  # a real layout, not replicated weights
    # XLA:TPU pads each small array to its tile: at most a few hundred bytes for the two inputs here
    assert weights + inputs <= result.argument_bytes <= weights + inputs + 1024


def _per_layer(text: str, kind: str) -> list[int]:
    """The bytes of each `kind` collective in the layer loop of an ablated pass (the loop whose trip count is the
    traced start layer: counting it once and twice separates its ops from the rest)."""
    once = hlo.collective_stats(text, unknown_trips=1)["ops"]
    twice = hlo.collective_stats(text, unknown_trips=2)["ops"]
    looped = {op["name"] for op, again in zip(once, twice) if again["times"] == 2 * op["times"]}
    return [op["bytes"] for op in once if op["kind"] == kind and op["name"] in looped]


def test_fsdp_gathers_each_layers_weights_inside_the_layer_loop(slice4):
    layer_shapes = {name: shape[1:] for name, shape in param_table.shapes(CFG).items()
                    if name not in param_table.GLOBAL_PARAMS}
    result = aot.compile_program("ships", workload(slice4, 4, 1, "fsdp"), 4, keep_text=True)
    gathered = _per_layer(result.hlo_text, "all-gather")
    assert sum(gathered) == sum(math.prod(shape) * 2 for shape in layer_shapes.values())  # one layer, bf16, whole
    # with tp_fsdp each weight is gathered over data to its model shard (beside tensor parallelism's own
    # activation collectives)
    result = aot.compile_program("ships", workload(slice4, 2, 2, "tp_fsdp"), 4, keep_text=True)
    gathered = _per_layer(result.hlo_text, "all-gather")
    for name, shape in layer_shapes.items():
        whole = math.prod(shape) * 2
        shard = whole if name.endswith("norm") else whole // 2  # the model shard: norms are not split over model
        assert shard in gathered, name
        gathered.remove(shard)


@pytest.mark.parametrize("rules,data,model", list(SPLITS))
def test_ablated_pass_flops_are_within_115_percent_of_the_algorithms_floor(slice4, rules, data, model):
    chunk = 4
    result = aot.compile_program("ships", workload(slice4, data, model, rules), chunk)
    per_layer_floor = chunk * (aot.ablated_flops_floor(CFG, ROWS, TOKENS, 2) - aot.ablated_flops_floor(CFG, ROWS, TOKENS, 1)) / 4
    head_floor = chunk * (2 * aot.ablated_flops_floor(CFG, ROWS, TOKENS, 1) - aot.ablated_flops_floor(CFG, ROWS, TOKENS, 2)) / 4
    assert per_layer_floor <= result.flops_per_layer <= 1.15 * per_layer_floor
    assert head_floor <= result.flops - result.flops_per_layer <= 1.15 * head_floor  # the LM head at one position


def test_two_slices_compile_data_parallel_over_the_slices():
    topo = tpu.topology("v5e:2x2", slices=2)
    mesh = tpu.mesh(topo, 4, 2)
    assert topo.chips == 8 and {d.slice_index for d in mesh.devices[:2].flat} == {0}  # rows 0-1: slice 0
    assert {d.slice_index for d in mesh.devices[2:].flat} == {1}
    work = aot.Workload(CFG, model_layout(CFG, mesh, "tp"), rows=ROWS, tokens=TOKENS, prompts=8)
    assert aot.compile_program("ships", work, 4).fits


def test_plan_reports_xlas_numbers_and_by_how_much_a_model_does_not_fit(tmp_path, capsys):
    big = {**TINY, "vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
           "num_attention_heads": 64, "num_key_value_heads": 8}  # Llama-3-70B's shape
    for name, hf in (("tiny", TINY), ("big", big)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(hf))
    config = plan_config.get_config()
    config.update(model=str(tmp_path / "tiny"), topology="v5e:2x2", mesh="2,2", prompts=8, tokens=128,
                  programs="ships,generate", out=str(tmp_path / "out"))
    result = plan_job.run(config)
    written = json.loads((tmp_path / "out" / "plan.json").read_text())
    ships = written["programs"]["ships"]
    assert set(ships) >= {"xla_peak_bytes", "xla_argument_bytes", "xla_temp_bytes", "estimate_bytes", "hbm_bytes",
                          "fits", "chunk", "flops", "seconds_at_peak"}
    assert ships["fits"] and ships["chunk"] >= 16
    # the whole query-level scan: each of the L x N heads from its own layer on, and one base pass (8 prompts: one
    # batch), on 4 chips
    floor = sum(CFG.num_heads * aot.ablated_flops_floor(CFG, 8, 128, CFG.num_layers - layer)
                for layer in range(CFG.num_layers)) + aot.ablated_flops_floor(CFG, 8, 128, CFG.num_layers)
    assert floor / 4 <= written["commands"]["ships"]["flops"] <= 1.15 * floor / 4
    assert result["programs"]["generate"]["fits"]
    config.update(model=str(tmp_path / "big"), mesh="1,4", sharding="tp", programs="ships", out="")
    capsys.readouterr()
    result = plan_job.run(config)
    ships = result["programs"]["ships"]
    assert not ships["fits"] and ships["chunk"] == 0 and ships["xla_peak_bytes"] > 2 * ships["hbm_bytes"]
    assert "does NOT fit" in capsys.readouterr().out


def test_libtpu_is_quiet_on_a_host_without_a_tpu():
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("TPU_", "JAX_PLATFORMS", "ALLOW_MULTIPLE_LIBTPU"))}
    code = ("import jaxheads, jax; jax.devices(); from jaxheads import tpu; tpu.topology('v5e:2x2'); "
            "print(jax.default_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "cpu"
    assert result.stderr == ""
