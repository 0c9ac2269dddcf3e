"""Export of jaxheads parameters as a Hugging Face checkpoint directory (`config.json` + `model.safetensors`
+ the tokenizer) that both `jaxheads.load` and `transformers.AutoModelForCausalLM.from_pretrained` read."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from safetensors.numpy import save_file

from jaxheads.errors import JaxheadsError
from jaxheads.models import gemma, llama
from jaxheads.models import params as param_table
from jaxheads.models.config import GEMMA_FAMILY, ModelConfig
from jaxheads.sharding import is_writer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3_text": "Gemma3ForCausalLM"}


def hf_config(cfg: ModelConfig) -> dict:
    """The `config.json` fields of `cfg` in the form `transformers` 5 writes them."""
    if cfg.model_type not in ARCHITECTURES:
        raise JaxheadsError(f"export supports {', '.join(ARCHITECTURES)}, not {cfg.model_type!r}")
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_positions)
    eos = list(cfg.eos_token_ids)
    config = {
        "architectures": [ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id,
        "dtype": "float32",
    }
    config.update(gemma.hf_fields(cfg, rope) if cfg.model_type in GEMMA_FAMILY else llama.hf_fields(cfg))
    return config


def hf_tensors(cfg: ModelConfig, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 tensors (torch layout) from jaxheads parameters `{name: [L, ...] or [...]}`."""
    shapes = param_table.shapes(cfg)
    tensors = {}
    for hf_name, (param, layout) in param_table.checkpoint_names(cfg).items():
        value = np.asarray(arrays[param], np.float32)
        if value.shape != shapes[param]:
            raise JaxheadsError(f"parameter {param!r} has shape {value.shape}, the config needs {shapes[param]}")
        if "{i}" not in hf_name:
            tensors[hf_name] = np.ascontiguousarray(param_table.from_param(layout, value, cfg))
            continue
        for layer in range(cfg.num_layers):
            tensors[hf_name.format(i=layer)] = np.ascontiguousarray(param_table.from_param(layout, value[layer], cfg))
    return tensors


def export_safetensors(cfg: ModelConfig, arrays: dict[str, np.ndarray], directory: str | os.PathLike,
                       tokenizer=None) -> pathlib.Path:
    """Writes `config.json`, `model.safetensors` and the tokenizer (when given) into `directory`, replacing it
    as a whole (a temporary sibling directory is written first and renamed). Only process 0 writes."""
    directory = pathlib.Path(directory)
    if not is_writer():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(hf_tensors(cfg, arrays), str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(hf_config(cfg), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
