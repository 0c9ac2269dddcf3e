"""Fine-tuning: optax trainer with Orbax checkpoints, LoRA, the Surgery regularizer, and safetensors export."""

from jaxheads.train.data import Batch, Example, PairSet, tokenize_example, tokenize_examples
from jaxheads.train.export import export_safetensors
from jaxheads.train.lora import LoraConfig
from jaxheads.train.trainer import CheckpointError, TrainConfig, TrainResult, train, trained_model

__all__ = ["Batch", "CheckpointError", "Example", "LoraConfig", "PairSet", "TrainConfig", "TrainResult",
           "export_safetensors", "tokenize_example", "tokenize_examples", "train", "trained_model"]
