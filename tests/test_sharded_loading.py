"""Loading straight onto a mesh (`jaxheads.load(..., mesh=, sharding=)`): every parameter is created in its sharded
layout from the slices of the checkpoint its devices hold, on 8 simulated CPU devices (subprocesses with
JAX_NUM_CPU_DEVICES=8) and on a mesh spanning two processes; and the errors and the notice of bad placements.
The peak memory a load takes is a measurement, not a pass/fail property here: `python bench/sharded_load.py`."""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file
from test_multihost import run_two_processes

import jaxheads
from bench.sharded_load import CONFIG, hf_shapes, write_random_checkpoint
from jaxheads.errors import JaxheadsError, LoadError
from jaxheads.models.config import config_from_hf
from jaxheads.models.params import hf_shape, to_param
from jaxheads.placement import replicated_notice
from jaxheads.sharding import make_mesh
from jaxheads.weights.build import hf_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Opt level 0 compiles in half the time (as tests/test_sharding.py); both sides of every comparison use it.
ENV = {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
IDS = np.random.default_rng(0).integers(3, CONFIG["vocab_size"], (2, 12))

# One process per mesh: its import baseline (peak RSS, `bench.sharded_load.peak_rss`: VmHWM, as ru_maxrss would
# carry this pytest process's peak into the child) is taken before the load and its peak right after, so nothing
# else in it counts. Then: each parameter's layout and shard sizes, model_on_mesh and the training
# layout leaving it in place, float32 logits of the loaded weights, and the same for a plain (unsharded) load,
# whose weights must be bitwise those of the sharded load. With a GGUF path, a tiny GGUF (2 KV heads) also loads
# onto a (2, 4) mesh, with cache=False and through the cache.
SCRIPT = """
import json, sys, warnings
import jax, jax.numpy as jnp, numpy as np
import jaxheads
from bench.sharded_load import peak_rss, placed_bytes
from jaxheads.weights.build import module_from_arrays
from jaxheads.placement import model_on_mesh
from jaxheads.sharding import make_mesh, to_host
from jaxheads.train.trainer import TrainConfig, training_shardings

directory, data, tensor, rules, out, gguf_path = sys.argv[1:7]
data, tensor, fsdp = int(data), int(tensor), rules != "tp"
ids = np.asarray(json.loads(sys.argv[7]))
mesh = make_mesh(data, tensor)
baseline = peak_rss()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = jaxheads.load(directory, dtype="bfloat16", mesh=mesh, sharding=rules)
    jax.block_until_ready(model.params)
peak = peak_rss()
params = {name: getattr(model.module, name)[...] for name in model.module.shapes(model.config)}
report = {"baseline": baseline, "peak": peak, "placed": placed_bytes(model), "warnings": [str(w.message) for w in caught],
          "params": {name: {"spec": [axis for axis in array.sharding.spec], "nbytes": array.nbytes,
                            "dtype": str(array.dtype), "shards": [s.data.nbytes for s in array.addressable_shards]}
                     for name, array in params.items()}}
again = model_on_mesh(model, mesh)
report["moved_by_model_on_mesh"] = [name for name in params if getattr(again.module, name)[...] is not params[name]]
layout = training_shardings(params, model.config, TrainConfig(sharding=rules), mesh)
report["not_training_layout"] = [name for name in params
                                 if not layout[name].is_equivalent_to(params[name].sharding, params[name].ndim)]

def float32(model):  # the same weights in float32, in the same layout
    weights = {name: jnp.asarray(getattr(model.module, name)[...], jnp.float32) for name in params}
    module = module_from_arrays(model.config, weights)
    module.layout = model.layout
    return jaxheads.Model(model.name, model.config, None, module)

def logits(model):
    return np.asarray(jaxheads.forward(model, ids))

sharded = float32(model)
if fsdp:  # generation in the FSDP layout (weights gathered layer by layer) equals generation on one device
    tokens = jaxheads.generate(sharded, ids.tolist(), max_new_tokens=3, mesh=mesh).tokens
reference = jaxheads.load(directory, dtype="bfloat16")
report["unequal_weights"] = [name for name in params if not np.array_equal(
    to_host(params[name]).view(np.uint16), np.asarray(getattr(reference.module, name)[...]).view(np.uint16))]
reference32 = float32(reference)
if fsdp:
    report["same_tokens"] = tokens == jaxheads.generate(reference32, ids.tolist(), max_new_tokens=3).tokens
np.savez(out + ".npz", sharded=logits(sharded), reference=logits(reference32))

if gguf_path != "-":
    small = make_mesh(2, 4)
    loads = {}
    for cache in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = jaxheads.load(gguf_path, cache=cache, mesh=small)
        loads[cache] = (loaded, [str(w.message) for w in caught])
    plain = jaxheads.load(gguf_path, cache=False)
    report["gguf"] = {
        "warnings": {str(cache): caught for cache, (_, caught) in loads.items()},
        "specs": {name: [axis for axis in getattr(loads[False][0].module, name)[...].sharding.spec]
                  for name in ("q", "k", "v", "k_bias", "gate")},
        "unequal": [name for name in plain.module.shapes(plain.config) if any(not np.array_equal(
            to_host(getattr(loaded.module, name)[...]), np.asarray(getattr(plain.module, name)[...]))
            for loaded, _ in loads.values())],
    }
with open(out + ".json", "w") as handle:
    json.dump(report, handle)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random bfloat16 Llama checkpoint of 256 MiB in 4 files (`bench.sharded_load.CONFIG`): heads 16, KV heads
    8 and MLP width 4096 split over a model axis of 8 or 4."""
    directory = tmp_path_factory.mktemp("random-bf16")
    return directory, write_random_checkpoint(directory)


@pytest.fixture(scope="module")
def tiny_gguf_path(tmp_path_factory):
    from test_gguf import tiny_gguf  # a tiny Qwen2 (4 heads, 2 KV heads, biases) written as llama.cpp does

    return tiny_gguf(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def runs(checkpoint, tiny_gguf_path, tmp_path_factory):
    """(data, model, rules) -> (report, logits) of one run of SCRIPT."""
    directory, _ = checkpoint
    out = tmp_path_factory.mktemp("runs")
    results = {}
    for data, tensor, rules in LAYOUTS:
        name = out / f"{data}x{tensor}_{rules}"
        gguf = str(tiny_gguf_path) if rules == "tp" else "-"
        command = [sys.executable, "-c", SCRIPT, str(directory), str(data), str(tensor), rules, str(name),
                   gguf, json.dumps(IDS.tolist())]
        result = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-5000:]
        results[data, tensor, rules] = (json.loads(name.with_suffix(".json").read_text()),
                                        dict(np.load(name.with_suffix(".npz"))))
    return results


# (data, model, rules): tensor parallel on (1, 8); both tensor parallel and FSDP on (2, 4).
LAYOUTS = [(1, 8, "tp"), (2, 4, "tp_fsdp")]
# The parameters tensor parallelism splits over `model`: query heads, KV heads, MLP width, and the vocabulary of
# the (untied) embedding and LM head. FSDP splits every parameter's hidden axis (D = 1024) over `data` too.
MODEL_SPLIT = {"q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head"}


def expected_divisor(spec: list, data: int, tensor: int) -> int:
    """How many ways a parameter of this spec is split: the product of the mesh axes it names."""
    return (data if "data" in spec else 1) * (tensor if "model" in spec else 1)


@pytest.mark.parametrize("data,tensor,rules", LAYOUTS)
def test_each_device_holds_only_its_share(runs, checkpoint, data, tensor, rules):
    report, _ = runs[data, tensor, rules]
    params = report["params"]
    for name, info in params.items():
        assert info["dtype"] == "bfloat16", name
        assert len(info["shards"]) == 8, name
        assert ("model" in info["spec"]) == (name in MODEL_SPLIT), (name, info["spec"])  # every split divides here
        assert ("data" in info["spec"]) == (rules == "tp_fsdp"), (name, info["spec"])
        divisor = expected_divisor(info["spec"], data, tensor)
        assert all(size * divisor == info["nbytes"] for size in info["shards"]), (name, info)
    for name in MODEL_SPLIT:  # 1/8 of their bytes per device on (1, 8), 1/(2·4) with FSDP on (2, 4)
        assert expected_divisor(params[name]["spec"], data, tensor) == 8, (name, params[name]["spec"])
    assert report["placed"] == sum(sum(info["shards"]) for info in params.values())
    assert report["moved_by_model_on_mesh"] == [] and report["not_training_layout"] == []
    assert report["warnings"] == []  # heads, KV heads and MLP width all divide


@pytest.mark.parametrize("data,tensor,rules", LAYOUTS)
def test_sharded_load_equals_the_unsharded_load(runs, data, tensor, rules):
    report, logits = runs[data, tensor, rules]
    assert report["unequal_weights"] == []  # every parameter bitwise the plain load's
    # Identical bfloat16 weights, computed in float32: the sharded logits differ from the one-device ones only by
    # the order in which tensor-parallel contractions (o_proj over heads, down_proj over the MLP width, and with
    # FSDP the hidden axis) add their per-device partial sums, float32 rounding of a few 1e-7 relative per layer
    # on logits of size ~1, hence 1e-5 (bfloat16 activations would round those differences to ~1e-2).
    np.testing.assert_allclose(logits["sharded"], logits["reference"], rtol=0, atol=1e-5)
    assert np.abs(logits["reference"]).max() > 0.1  # logits that are not all ~0
    if rules != "tp":
        assert report["same_tokens"]


def test_tiny_gguf_with_fewer_kv_heads_than_the_model_axis_splits_them_and_the_query_groups(runs):
    """cache=False streams the GGUF one dequantized tensor at a time; cache=True reads the converted folder.
    2 KV heads on a model axis of 4: the KV heads (and their biases) split over 2 of it, each KV group's query heads
    over the other 2, with no notice; both give the plain load's weights."""
    report = runs[1, 8, "tp"][0]["gguf"]
    assert report["warnings"] == {"False": [], "True": []}
    assert report["specs"]["k"] == report["specs"]["v"] == [None, None, "model"]
    assert report["specs"]["k_bias"] == [None, "model"]
    # the MLP width splits over the whole model axis of 4: its KV part and its query-group part
    assert report["specs"]["q"] == report["specs"]["gate"] == [None, None, ["model", "model_q"]]
    assert report["unequal"] == []


TWO_PROCESSES = """
import json, sys
import jax
jax.distributed.initialize()
import jax.numpy as jnp, numpy as np
import jaxheads
from jaxheads.weights.build import module_from_arrays
from jaxheads.sharding import make_mesh, to_host
from jaxheads.weights.safetensors import SafetensorsSource

directory, out, ids = sys.argv[1], sys.argv[2], np.asarray(json.loads(sys.argv[3]))
reads, read = [], SafetensorsSource.read

def recording_read(tensor, name, index):
    reads.append([name, [list(axis.indices(10**9)[:2]) for axis in index]])
    return read(tensor, name, index)

SafetensorsSource.read = staticmethod(recording_read)
mesh = make_mesh(1, 4)
model = jaxheads.load(directory, dtype="bfloat16", mesh=mesh)
weights = {name: jnp.asarray(getattr(model.module, name)[...], jnp.float32) for name in model.module.shapes(model.config)}
module = module_from_arrays(model.config, weights)
logits = to_host(jaxheads.forward(jaxheads.Model(model.name, model.config, None, module), ids))
if jax.process_index() == 0:
    np.save(out, logits)
print("READS " + json.dumps(reads))
"""


def test_two_processes_each_read_only_their_slices(runs, checkpoint, tmp_path):
    """A (1, 4) mesh over 2 processes of 2 devices: each process reads only the slices its devices hold (half of
    every tensor-parallel tensor, the vocabulary-parallel embedding and LM head included; all of every replicated
    one), and the logits are the single-process load's."""
    directory, _ = checkpoint
    outputs = run_two_processes(["-c", TWO_PROCESSES, str(directory), str(tmp_path / "logits.npy"),
                                 json.dumps(IDS.tolist())])
    reads = [json.loads(output.split("READS ")[-1].splitlines()[0]) for output in outputs]
    shapes = hf_shapes(CONFIG)
    split = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"}
    blocks = {}
    for process, process_reads in enumerate(reads):
        for name, index in process_reads:
            blocks.setdefault(name, ([], []))[process].append(tuple(tuple(axis) for axis in index))
    assert blocks.keys() == shapes.keys()
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        read_sizes = [sum(int(np.prod([stop - start for start, stop in block])) for block in own)
                      for own in blocks[name]]
        if name.split(".")[-2] in split:
            assert read_sizes == [size // 2, size // 2], (name, blocks[name])  # half each
            assert not set(blocks[name][0]) & set(blocks[name][1]), name  # different halves
        else:
            assert read_sizes == [size, size], name  # replicated: read whole, once per process
    single = runs[1, 8, "tp"][1]["reference"]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), single, rtol=0, atol=1e-5)  # as above


@pytest.mark.parametrize("layout,shape", [("none", (6, 8)), ("transpose", (8, 12)), ("in_heads", (8, 4, 6)),
                                          ("out_heads", (4, 6, 8)), ("heads", (4, 6))])
def test_a_block_of_a_parameter_is_read_from_the_block_of_the_hf_tensor_holding_it(layout, shape):
    cfg = config_from_hf({**CONFIG, "hidden_size": 8, "head_dim": 6, "num_attention_heads": 4,
                          "num_key_value_heads": 4, "intermediate_size": 12})
    rng = np.random.default_rng(0)
    hf = rng.standard_normal(hf_shape(layout, shape)).astype(np.float32)
    whole = to_param(layout, hf, cfg)
    assert whole.shape == shape
    for _ in range(20):  # random blocks, the head dimension cut too (FSDP may split any axis)
        bounds = []
        for size in shape:
            start = int(rng.integers(0, size))
            bounds.append((start, int(rng.integers(start + 1, size + 1))))
        index, arrange = hf_block(layout, tuple(bounds), cfg)
        np.testing.assert_array_equal(arrange(hf[index]), whole[tuple(slice(*axis) for axis in bounds)])


def test_notice_names_the_replicated_parameters_and_sizes():
    cfg = config_from_hf({**CONFIG, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 90,
                          "head_dim": 64})
    # 2 KV heads on a model axis of 4 split 2 ways (each group's query heads the other 2), but 6 query heads and
    # an MLP width of 90 do not divide by 4; with FSDP over 3, neither does the hidden size of 1024.
    assert replicated_notice(cfg, 1, 4) == (
        "q, o: 6 query heads do not divide over a model axis of 4; replicated; "
        "gate, up, down: an MLP width of 90 does not divide over a model axis of 4; replicated")
    assert replicated_notice(cfg, 1, 2) is None and replicated_notice(cfg, 1, 1) is None
    assert replicated_notice(cfg, 3, 1, "fsdp").startswith("embed, final_norm, lm_head, attn_norm, q, k, v, o, "
                                                           "mlp_norm, gate, up, down: 1024 hidden size do not divide "
                                                           "over a data axis of 3")


def small_checkpoint(directory, config):
    """A random bfloat16 checkpoint of `config` in two files with an index."""
    write_random_checkpoint(directory, config, layers_per_file=1)
    return directory


SMALL = {**CONFIG, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}


def test_a_one_device_mesh_load_equals_the_plain_load(tmp_path):
    directory = small_checkpoint(tmp_path, SMALL)
    for dtype in ("float32", "bfloat16"):
        plain = jaxheads.load(directory, dtype=dtype)
        placed = jaxheads.load(directory, dtype=dtype, mesh=make_mesh(1, 1), fsdp=True)
        for name in plain.module.shapes(plain.config):
            ours, theirs = getattr(placed.module, name)[...], getattr(plain.module, name)[...]
            assert ours.dtype == theirs.dtype and ours.sharding.spec == P()
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        np.testing.assert_array_equal(np.asarray(jaxheads.forward(placed, IDS % 64)),
                                      np.asarray(jaxheads.forward(plain, IDS % 64)))


def test_float16_and_float32_checkpoints_convert_per_slice(tmp_path):
    """A float16 tensor goes to bfloat16 through float32 (exact), as before; float32 rounds once."""
    directory = small_checkpoint(tmp_path, SMALL)
    from safetensors.numpy import load_file

    for path in directory.glob("*.safetensors"):
        tensors = load_file(path)
        save_file({name: value.astype(np.float16 if "layers.0" in name else np.float32)
                   for name, value in tensors.items()}, path)
    model = jaxheads.load(directory, dtype="bfloat16", mesh=make_mesh(1, 1))
    reference = jaxheads.weights.build.module_from_tensors(
        model.config, [(name, value) for path in sorted(directory.glob("*.safetensors"))
                       for name, value in load_file(path).items()], dtype=jaxheads.loading.DTYPES["bfloat16"])
    for name in model.module.shapes(model.config):
        np.testing.assert_array_equal(np.asarray(getattr(model.module, name)[...]).view(np.uint16),
                                      np.asarray(getattr(reference, name)[...]).view(np.uint16))
        assert getattr(model.module, name)[...].dtype == ml_dtypes.bfloat16


def test_a_missing_shard_file_is_named(tmp_path):
    directory = small_checkpoint(tmp_path, SMALL)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(LoadError, match="lists shards that are missing: model-00002-of-00002.safetensors"):
        jaxheads.load(directory, mesh=make_mesh(1, 1))


def test_fsdp_needs_a_mesh_and_a_mesh_needs_data_and_model_axes(tmp_path):
    import jax

    directory = small_checkpoint(tmp_path, SMALL)
    with pytest.raises(LoadError, match="fsdp=True.* pass the mesh too"):
        jaxheads.load(directory, fsdp=True)
    with pytest.raises(LoadError, match="fsdp=True is the tp_fsdp rules"):
        jaxheads.load(directory, mesh=make_mesh(1, 1), fsdp=True, sharding="fsdp")
    with pytest.raises(LoadError, match=r"mesh with axes \('data', 'model'\)"):
        jaxheads.load(directory, mesh=jax.make_mesh((1,), ("x",)))


def test_job_loads_onto_its_mesh(monkeypatch):
    import ml_collections

    from jaxheads.jobs import common

    calls = []
    monkeypatch.setattr(common, "load", lambda spec, **kwargs: calls.append((spec, kwargs)))
    common.load_model(ml_collections.ConfigDict({"model": "m", "dtype": "bfloat16", "mesh": "", "fsdp": True}))
    common.load_model(ml_collections.ConfigDict({"model": "", "dtype": "float32", "mesh": "1,1", "sharding": "fsdp"}))
    common.load_model(ml_collections.ConfigDict({"model": "m", "dtype": "float32"}))  # a job without --mesh
    (spec, first), (default, second), (_, third) = calls
    assert spec == "m" and first["dtype"] == "bfloat16" and first["sharding"] == "tp_fsdp"  # --fsdp
    assert first["mesh"].shape == {"data": 1, "model": 1}  # every device (one here) data-parallel
    assert default is None and second["mesh"].shape == {"data": 1, "model": 1} and second["sharding"] == "fsdp"
    assert third == {"dtype": "float32", "mesh": None, "sharding": None, "verify_weights": False}
    with pytest.raises(JaxheadsError, match="--fsdp is --sharding=tp_fsdp"):
        common.load_model(ml_collections.ConfigDict({"model": "m", "dtype": "float32", "mesh": "", "fsdp": True,
                                                     "sharding": "fsdp"}))
    with pytest.raises(JaxheadsError, match="a 4 x 4 mesh needs 16 devices; 1 are visible|model axis"):
        common.load_model(ml_collections.ConfigDict({"model": "m", "dtype": "float32", "mesh": "4,4"}))
