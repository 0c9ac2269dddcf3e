"""Memory planner for the Ships and Sahara scans: what one device holds, from the model's config alone.

Per device, a scan holds
- the weights: every parameter's bytes, divided by the `model` axis for the parameters its tensor-parallel specs
  split (`partition_specs`; a parameter whose split axis does not divide stays whole);
- the saved layer inputs of one batch of prompts, kept for prefix reuse: `L × rows × T × D` in the model dtype,
  where `rows = batch_size / data` is the device's share of a batch's rows and T the padded prompt length;
- one chunk of ablations' activations: `chunk × scan.ablation_bytes(rows, T)` (one layer's hidden- and MLP-sized
  buffers, the attention's working memory and the vocabulary rows of the last position);
- for dataset-level scores and Sahara, the final representations of every candidate on every prompt, float32,
  their hidden axis split over `model` where it divides: `(M + 1) × P × D × 4 / model` for M = L·N candidates
  and P prompts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.scan import MAX_AUTO_CHUNK, ablation_bytes
from jaxheads.sharding import mesh_sizes, parse_rules, resolve_spec, split_of

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one scan on a `data × model` mesh, and the largest chunk that fits `device_bytes`."""

    data: int
    model: int
    rows: int
    tokens: int
    weights: int
    layer_inputs: int
    chunk_size: int
    chunk: int
    representations: int
    device_bytes: int | None
    largest_chunk: int | None  # None without device_bytes; 0 when not even one ablation fits

    @property
    def total(self) -> int:
        return self.weights + self.layer_inputs + self.chunk + self.representations

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= self.device_bytes


def weights_per_device(cfg: ModelConfig, itemsize: int, model_axis: int, data_axis: int = 1,
                       rules: str = "tp") -> int:
    """Bytes of the parameters one device holds on a `data x model` mesh under sharding `rules`."""
    sizes = mesh_sizes(data_axis, model_axis, cfg.num_kv_heads)
    rule_map = dict(parse_rules(rules))
    total = 0
    for name, shape in param_table.shapes(cfg).items():
        spec = resolve_spec(param_table.logical_axes(cfg)[name], shape, rule_map, sizes)
        total += math.prod(shape) * itemsize // split_of(spec, sizes)
    return total


def plan(cfg: ModelConfig, data: int = 1, model: int = 1, prompts: int = 16, tokens: int = 64,
         dtype: str = "bfloat16", batch_size: int = 16, chunk_size: int = 16, dataset_level: bool = True,
         device_bytes: int | None = None) -> MemoryPlan:
    """The memory of a scan of `prompts` prompts padded to `tokens`, `batch_size` prompts per batch (split over
    `data`), weights split over `model`, `chunk_size` ablations per device call."""
    itemsize = DTYPE_BYTES[dtype]
    batch = -(-min(batch_size, prompts) // data) * data
    rows = batch // data
    weights = weights_per_device(cfg, itemsize, model)
    layer_inputs = cfg.num_layers * rows * tokens * cfg.hidden_size * itemsize
    one = ablation_bytes(cfg, rows, tokens, itemsize)
    split = model if cfg.hidden_size % model == 0 else 1  # scan.representation_zeros splits D over `model`
    representations = ((cfg.num_layers * cfg.num_heads + 1) * prompts * cfg.hidden_size * 4 // split
                       if dataset_level else 0)
    largest = None
    if device_bytes is not None:
        room = device_bytes - weights - layer_inputs - representations
        largest = int(np.clip(room // one, 0, MAX_AUTO_CHUNK)) if room > 0 else 0
    return MemoryPlan(data, model, rows, tokens, weights, layer_inputs, chunk_size, chunk_size * one,
                      representations, device_bytes, largest)


def fitting_meshes(cfg: ModelConfig, devices: int, device_bytes: int, **options) -> list[tuple[int, int, int]]:
    """`(data, model, largest chunk)` of every mesh over `devices` devices on which at least one ablation fits,
    the widest data axis first."""
    found = []
    for model in range(1, devices + 1):
        if devices % model == 0:
            candidate = plan(cfg, devices // model, model, device_bytes=device_bytes, **options)
            if candidate.largest_chunk:
                found.append((devices // model, model, candidate.largest_chunk))
    return found


def describe(memory: MemoryPlan) -> list[str]:
    """The plan as lines of text, in GiB."""
    lines = [f"mesh {memory.data} x {memory.model} (data x model); {memory.rows} prompt rows of {memory.tokens} "
             f"tokens per device",
             f"  weights                {memory.weights / GIB:9.2f} GiB",
             f"  saved layer inputs     {memory.layer_inputs / GIB:9.2f} GiB",
             f"  chunk of {memory.chunk_size:<4d} ablations {memory.chunk / GIB:9.2f} GiB",
             f"  representations        {memory.representations / GIB:9.2f} GiB",
             f"  total                  {memory.total / GIB:9.2f} GiB"]
    if memory.device_bytes is not None:
        verdict = ("fits" if memory.fits else
                   f"does NOT fit: {(memory.total - memory.device_bytes) / GIB:.2f} GiB over")
        lines.append(f"  device memory          {memory.device_bytes / GIB:9.2f} GiB: {verdict}; largest chunk that "
                     f"fits: {memory.largest_chunk}")
    return lines
