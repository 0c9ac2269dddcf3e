"""jaxheads: find and control the attention heads that carry safety behaviour in LLMs, in JAX/Flax.

The package face hands on the names most programs need; each lives in its library module:
`load` and `Model` (`jaxheads.loading`), `forward` (`jaxheads.inference`), `generate`, `Generation`, `Sampling` and
`eos_ids` (`jaxheads.generation`), `encode_prompts` (`jaxheads.tokens`), the intervention helpers
(`jaxheads.interventions`), `attention_patterns` (`jaxheads.patterns`) and the error types (`jaxheads.errors`).

Importing the package first keeps libtpu quiet on hosts without a TPU (`jaxheads.tpu`).
"""

from jaxheads import tpu  # noqa: F401  (first: sets libtpu's environment before any JAX backend starts)
from jaxheads.errors import DataError, JaxheadsError, LoadError
from jaxheads.generation import Generation, Sampling, eos_ids, generate
from jaxheads.inference import forward
from jaxheads.interventions import Interventions, ablate, identity, single_heads
from jaxheads.loading import Model, load
from jaxheads.patterns import attention_patterns
from jaxheads.tokens import encode_prompts

__all__ = [
    "DataError", "Generation", "Interventions", "JaxheadsError", "LoadError", "Model", "Sampling",
    "ablate", "attention_patterns", "encode_prompts", "eos_ids", "forward", "generate", "identity", "load",
    "single_heads",
]
