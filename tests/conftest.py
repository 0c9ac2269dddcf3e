"""Shared fixtures: tiny random `transformers` models saved as local checkpoints (no downloads)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.2)

TINY_CONFIGS = {
    "llama_mha": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=4, tie_word_embeddings=False),
    "llama_gqa_llama3_rope_tied": lambda: transformers.LlamaConfig(
        **TINY, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32}),
    "llama_mqa_bias": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=1, attention_bias=True,
                                                       mlp_bias=True),
    "mistral_sliding": lambda: transformers.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=5,
                                                          tie_word_embeddings=False),
    "qwen2_bias": lambda: transformers.Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3_qk_norm": lambda: transformers.Qwen3Config(**TINY, num_key_value_heads=2, head_dim=24,
                                                      tie_word_embeddings=False),
}


def make_hf_model(name: str, seed: int = 0):
    """A tiny random `transformers` causal LM (eager attention, float32, eval mode)."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[name]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # random biases and norms, so that parity covers them
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "norm" in param_name:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Returns a function name -> (hf_model, directory with config.json + model.safetensors)."""
    made = {}

    def get(name: str):
        if name not in made:
            model = make_hf_model(name)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            made[name] = (model, directory)
        return made[name]

    return get


def hf_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """`transformers` float32 logits for (left-padded) ids, with positions counted from the first real token."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask_t = torch.ones_like(ids_t) if mask is None else torch.tensor(mask, dtype=torch.long)
    positions = torch.clamp(mask_t.cumsum(-1) - 1, min=0)
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits.float().numpy()
