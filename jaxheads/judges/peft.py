"""A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`, as the StrongREJECT evaluator
ships) merged into its base checkpoint on load: each target weight becomes W + (alpha / r) B A (alpha / sqrt(r)
with rsLoRA), in float32, before the model is cast to its dtype and placed."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

import numpy as np
from safetensors import safe_open

from jaxheads.errors import LoadError
from jaxheads.loading import DTYPES, Model, _load_tokenizer, directory_fingerprint
from jaxheads.models.config import config_from_hf
from jaxheads.placement import model_on_mesh
from jaxheads.weights.build import module_from_tensors
from jaxheads.weights.safetensors import read_config, read_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_NAME = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def is_adapter(directory) -> bool:
    return (pathlib.Path(directory) / ADAPTER_CONFIG).is_file()


def base_folder(adapter: pathlib.Path, config: dict, base: str | None, kind: str) -> pathlib.Path:
    """The base checkpoint of an adapter: `base` (`--judge_base`), else the adapter's `base_model_name_or_path`
    when that is a local folder."""
    named = base or config.get("base_model_name_or_path") or ""
    path = pathlib.Path(os.path.expanduser(str(named)))
    if not named or not (path / "config.json").is_file():
        raise LoadError(f"--judge={kind}:{adapter} is a LoRA adapter over {config.get('base_model_name_or_path')!r}, "
                        "which is not a local checkpoint folder; pass the base folder as --judge_base=DIR")
    return path


def lora_deltas(adapter: pathlib.Path, config: dict) -> dict[str, np.ndarray]:
    """Hugging Face weight name -> the LoRA update (alpha / r) B A of that weight, float32."""
    if config.get("fan_in_fan_out"):
        raise LoadError(f"{adapter / ADAPTER_CONFIG}: fan_in_fan_out adapters are not supported")
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    file = adapter / ADAPTER_WEIGHTS
    if not file.is_file():
        raise LoadError(f"{adapter} has no {ADAPTER_WEIGHTS} (a pickle adapter_model.bin must be converted to "
                        "safetensors first: load it with peft and save_pretrained(safe_serialization=True))")
    with safe_open(str(file), framework="numpy") as handle:
        for name in handle.keys():
            found = LORA_NAME.match(name)
            if found is None:
                raise LoadError(f"{file}: unexpected tensor {name!r} (only LoRA A/B weights are merged)")
            pairs.setdefault(found.group(1) + ".weight", {})[found.group(2)] = handle.get_tensor(name)
    deltas = {}
    for target, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise LoadError(f"{file}: {target} has lora_{''.join(pair)} without its pair")
        deltas[target] = scale * (pair["B"].astype(np.float32) @ pair["A"].astype(np.float32))
    return deltas


def load_merged(adapter_dir, kind: str, base: str | None = None, dtype: str = "float32", mesh=None,
                sharding: str | None = None) -> Model:
    """The base checkpoint with the adapter merged in, as a `Model` (its tokenizer: the adapter folder's, else the
    base's), placed on `mesh` when one is given. Its fingerprint is the base folder's and the adapter files'."""
    adapter = pathlib.Path(os.path.expanduser(str(adapter_dir)))
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    base_dir = base_folder(adapter, config, base, kind)
    deltas = lora_deltas(adapter, config)
    cfg = config_from_hf(read_config(base_dir))
    seen = set()

    def merged():
        for name, array in read_tensors(base_dir):
            if name in deltas:
                seen.add(name)
                array = (array.astype(np.float32) + deltas[name]).astype(np.float32)
            yield name, array

    module = module_from_tensors(cfg, merged(), DTYPES[dtype])
    missing = sorted(set(deltas) - seen)
    if missing:
        raise LoadError(f"{adapter / ADAPTER_WEIGHTS} adapts weights the base {base_dir} lacks: {missing[:4]}")
    tokenizer = _load_tokenizer(adapter) or _load_tokenizer(base_dir)
    if tokenizer is None:
        raise LoadError(f"neither {adapter} nor {base_dir} has a tokenizer")
    digest = hashlib.sha256((adapter / ADAPTER_CONFIG).read_bytes() + (adapter / ADAPTER_WEIGHTS).read_bytes())
    fingerprint = {**directory_fingerprint(base_dir), "adapter_sha256": digest.hexdigest(), "dtype": dtype}
    model = Model(name=f"{base_dir} + {adapter}", config=cfg, tokenizer=tokenizer, module=module,
                  fingerprint=fingerprint)
    return model if mesh is None else model_on_mesh(model, mesh, sharding)

