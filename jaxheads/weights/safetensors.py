"""Reads a Hugging Face checkpoint directory (`config.json` + `*.safetensors`, sharded or not) without PyTorch."""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

import numpy as np
from safetensors import safe_open

from jaxheads.errors import LoadError


def read_config(directory: pathlib.Path) -> dict:
    """The `config.json` of a checkpoint directory as a dict."""
    path = directory / "config.json"
    if not path.is_file():
        raise LoadError(f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LoadError(f"{path} is not valid JSON: {error}") from error


def safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The weight files of a checkpoint: those listed by `model.safetensors.index.json`, else every `*.safetensors`."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise LoadError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return [directory / name for name in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{directory} has no *.safetensors weights (PyTorch .bin checkpoints are not supported)")
    return files


def read_tensors(directory: pathlib.Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (Hugging Face name, numpy array) for every tensor of the checkpoint, one at a time."""
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
