"""The decoder families jaxheads ports (`llama`: Llama 2/3, Mistral, Qwen2/3, SmolLM2; `gemma`: Gemma 1-3) and the
architecture config they share (`config`)."""

from jaxheads.models import gemma, llama
from jaxheads.models.config import GEMMA_FAMILY, ModelConfig


def module_class(cfg: ModelConfig) -> type[llama.Llama]:
    """The NNX module class of this config's model family."""
    return gemma.Gemma if cfg.model_type in GEMMA_FAMILY else llama.Llama
