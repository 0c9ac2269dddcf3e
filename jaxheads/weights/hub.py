"""Resolves a Hugging Face hub id to a local checkpoint directory (needs a network)."""

from __future__ import annotations

import pathlib

from huggingface_hub import hf_hub_download, snapshot_download

from jaxheads.errors import LoadError

HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def download_config(repo_id: str, revision: str | None = None) -> pathlib.Path:
    """The folder holding `repo_id`'s config.json alone (downloaded, or found in the local hub cache)."""
    try:
        return pathlib.Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent
    except Exception as error:  # the hub client raises many kinds (offline, 404, gated, bad id)
        raise LoadError(f"could not get the config.json of {repo_id!r} from the Hugging Face hub "
                        f"({type(error).__name__}: {error}); pass a local config.json or folder instead") from error


def download(repo_id: str, revision: str | None = None) -> pathlib.Path:
    """Downloads (or finds in the local cache) the config, safetensors weights and tokenizer of `repo_id`."""
    try:
        return pathlib.Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except Exception as error:  # the hub client raises many kinds (offline, 404, gated, bad id)
        raise LoadError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            "Check the id and the network, or pass a local directory or .gguf file instead."
        ) from error
