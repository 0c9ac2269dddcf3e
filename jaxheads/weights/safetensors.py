"""Reads a Hugging Face checkpoint directory (`config.json` + `*.safetensors`, sharded or not) without PyTorch."""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Any, Iterator

import numpy as np
from safetensors import SafetensorError, safe_open

from jaxheads.errors import LoadError

# config.json fields that every supported text decoder's config must give (a multimodal Gemma 3 config gives
# them inside its `text_config`, where transformers' defaults complete them)
REQUIRED_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads")


def read_config(directory: pathlib.Path) -> dict:
    """The `config.json` of a checkpoint directory as a dict, with the fields a model needs checked."""
    path = directory / "config.json"
    if not path.is_file():
        raise LoadError(f"{directory} has no config.json: not a Hugging Face model directory")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise LoadError(f"{path} holds a JSON {type(config).__name__}, not an object of config fields")
    if "model_type" not in config:
        raise LoadError(f"{path} has no model_type field")
    if config["model_type"] != "gemma3":
        for field in REQUIRED_CONFIG_FIELDS:
            if field not in config:
                raise LoadError(f"{path} has no {field} field, which jaxheads needs to build the model")
            value = config[field]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LoadError(f"{path} has {field}={value!r}; it must be a positive integer")
    return config


def _read_json(path: pathlib.Path) -> Any:
    """A JSON file's content; a LoadError naming the file when it cannot be read, is not UTF-8 or not JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte order mark is no part of the JSON
    except OSError as error:
        raise LoadError(f"could not read {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise LoadError(f"{path} is not UTF-8 text: {error}") from error
    except json.JSONDecodeError as error:
        raise LoadError(f"{path} is not valid JSON: {error}") from error


def safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The weight files of a checkpoint: those listed by `model.safetensors.index.json`, else every `*.safetensors`."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        content = _read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            raise LoadError(f"{index} has no weight_map object (tensor name -> shard file)")
        shards = sorted(set(weight_map.values()))
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
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise LoadError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from error


@contextlib.contextmanager
def _opened(path: pathlib.Path):
    """`safe_open` of one weight file; a damaged file (at opening or while reading) raises a LoadError naming it."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            yield handle
    except (SafetensorError, OSError) as error:
        raise LoadError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from error


class SafetensorsSource:
    """The tensors of a checkpoint directory, read in slices: `shapes` (name -> shape) comes from the files'
    headers alone, and `tensor(name)` opens the tensor's file for as long as its slices are read
    (`read(tensor, name, index)`, `get_slice(name)[index]`: only those bytes are read). A file is opened for one
    tensor at a time, so the pages of the memory-mapped file that the reads touched leave the process with it."""

    def __init__(self, directory: pathlib.Path):
        self.files: dict[str, pathlib.Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for path in safetensors_files(directory):
            with _opened(path) as handle:
                for name in handle.keys():
                    if name not in self.files:
                        self.files[name] = path
                        self.shapes[name] = tuple(handle.get_slice(name).get_shape())

    @contextlib.contextmanager
    def tensor(self, name: str):
        with _opened(self.files[name]) as handle:
            yield handle.get_slice(name)

    @staticmethod
    def read(tensor, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` of an open tensor (`name` is what a test that records the reads sees)."""
        return tensor[index]
