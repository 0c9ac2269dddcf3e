"""Shared fixtures: tiny random `transformers` models saved as local checkpoints (no downloads)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

@pytest.fixture(autouse=True, scope="session")
def jaxheads_cache_dir(tmp_path_factory):
    """GGUF conversions and compiled programs of the test session go to a temporary folder (inherited by the
    subprocesses the tests start), not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXHEADS_CACHE_DIR", str(tmp_path_factory.mktemp("jaxheads-cache")))
        yield


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.2)

def padded_inputs(length: int, batch: int = 3, vocab: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids `[batch, length]` and an attention mask with rows 1 and 2 left-padded (5 and 1 slots)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (batch, length))
    mask = np.ones((batch, length), bool)
    mask[1, :5] = False
    mask[2, :1] = False
    return ids, mask


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


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def word_tokenizer(texts):
    """A word-level `transformers` tokenizer over the words of `texts` (built offline, with a chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    words = sorted({w for text in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(text) for w in [w[0]]})
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                                     eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_word_llama(directory, texts, seed=0, **overrides):
    """A tiny random Llama checkpoint (TINY, with `overrides`) and a word-level tokenizer over `texts`, saved in
    `directory` as a Hugging Face folder."""
    tokenizer = word_tokenizer(texts)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**TINY, "vocab_size": len(tokenizer), **overrides}, num_key_value_heads=2,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_with_tokenizer(tmp_path_factory):
    """A tiny random Llama checkpoint directory with a word-level tokenizer covering the built-in prompts."""
    from jaxheads.data.formats import TEMPLATE
    from jaxheads.data.loaders import load_builtin_records, load_refusals

    texts = [r["prompt"] for name in ("harmful", "harmless") for r in load_builtin_records(name)]
    return save_word_llama(tmp_path_factory.mktemp("tiny_with_tokenizer"),
                           texts + load_refusals() + [TEMPLATE.format(query="")])
