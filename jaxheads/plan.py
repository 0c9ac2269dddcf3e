"""Memory planner for the Ships and Sahara scans: what one device holds, from the model's config alone.

Per device, under sharding rules (`jaxheads.sharding.RULES`) on a `data × model` mesh, a scan holds
- the weights: every parameter's bytes divided by the mesh axes its rules split it over (`weights_per_device`);
  with FSDP rules also one layer's weights gathered over `data` inside the layer loop (`gathered_layer_bytes`);
- the saved layer inputs of one batch of prompts, kept for prefix reuse: `L × rows × T × D` in the model dtype
  (D split as the `saved_embed` rule says), where `rows = batch_size / data` is the device's share of a batch's
  rows and T the padded prompt length;
- one chunk of ablations' activations: `chunk × scan.ablation_bytes(rows, T)`, calibrated against XLA's compiled
  peaks (docs/scaling.md: within ±20% of XLA's peak on the table there);
- for dataset-level scores and Sahara, the final representations of every candidate on every prompt, float32,
  their hidden axis split over `model` where it divides: `(M + 1) × P × D × 4 / model` for M = L·N candidates
  and P prompts.
`jaxheads plan --topology=...` compiles the same programs for a TPU topology and reports XLA's own numbers beside
this estimate (`jaxheads.aot`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.scan import MAX_AUTO_CHUNK, ablation_bytes, ablation_splits, saved_input_bytes
from jaxheads.sharding import PARAMETER_AXES, RULES, mesh_sizes, parse_rules, resolve_spec, split_of

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one scan on a `data × model` mesh under `rules`, and the largest chunk that fits
    `device_bytes`."""

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
    gathered: int = 0
    rules: str = "tp"

    @property
    def total(self) -> int:
        return self.weights + self.gathered + self.layer_inputs + self.chunk + self.representations

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= self.device_bytes


def _parameter_bytes(cfg: ModelConfig, itemsize: int, model_axis: int, data_axis: int, rules: dict,
                     layer_only: bool = False) -> int:
    sizes = mesh_sizes(data_axis, model_axis, cfg.num_kv_heads)
    axes, total = param_table.logical_axes(cfg), 0
    for name, shape in param_table.shapes(cfg).items():
        if layer_only and name in param_table.GLOBAL_PARAMS:
            continue
        own_axes, own_shape = (axes[name][1:], shape[1:]) if layer_only else (axes[name], shape)
        total += math.prod(own_shape) * itemsize // split_of(resolve_spec(own_axes, own_shape, rules, sizes), sizes)
    return total


def weights_per_device(cfg: ModelConfig, itemsize: int, model_axis: int, data_axis: int = 1,
                       rules: str = "tp") -> int:
    """Bytes of the parameters one device holds on a `data x model` mesh under sharding `rules`."""
    return _parameter_bytes(cfg, itemsize, model_axis, data_axis, dict(parse_rules(rules)))


def gathered_layer_bytes(cfg: ModelConfig, itemsize: int, model_axis: int, data_axis: int = 1,
                         rules: str = "tp") -> int:
    """Bytes of one decoder layer's weights as the layer loop gathers them under FSDP rules (their `data` split
    undone, their model split kept); 0 when the rules split no parameter over `data`."""
    rule_map = dict(parse_rules(rules))
    if data_axis == 1 or not any(target == "data" and axis in PARAMETER_AXES for axis, target in rule_map.items()):
        return 0
    kept = {axis: target for axis, target in rule_map.items() if not (target == "data" and axis in PARAMETER_AXES)}
    return _parameter_bytes(cfg, itemsize, model_axis, data_axis, kept, layer_only=True)


def scan_splits(cfg: ModelConfig, data: int, model: int, rules: str = "tp") -> dict[str, int]:
    """`scan.ablation_splits` of a `data x model` mesh under `rules`, from the config alone."""
    return ablation_splits(cfg, dict(parse_rules(rules)), mesh_sizes(data, model, cfg.num_kv_heads))


def plan(cfg: ModelConfig, data: int = 1, model: int = 1, prompts: int = 16, tokens: int = 64,
         dtype: str = "bfloat16", batch_size: int = 16, chunk_size: int = 16, dataset_level: bool = True,
         device_bytes: int | None = None, rules: str = "tp") -> MemoryPlan:
    """The memory of a scan of `prompts` prompts padded to `tokens`, `batch_size` prompts per batch (split over
    `data`), parameters laid out by `rules`, `chunk_size` ablations per device call."""
    itemsize = DTYPE_BYTES[dtype]
    batch = -(-min(batch_size, prompts) // data) * data
    rows = batch // data
    splits = scan_splits(cfg, data, model, rules)
    weights = weights_per_device(cfg, itemsize, model, data, rules)
    gathered = gathered_layer_bytes(cfg, itemsize, model, data, rules)
    layer_inputs = saved_input_bytes(cfg, rows, tokens, itemsize, splits)
    one = ablation_bytes(cfg, rows, tokens, itemsize, splits=splits)
    split = model if cfg.hidden_size % model == 0 else 1  # scan.representation_zeros splits D over `model`
    representations = ((cfg.num_layers * cfg.num_heads + 1) * prompts * cfg.hidden_size * 4 // split
                       if dataset_level else 0)
    largest = None
    if device_bytes is not None:
        room = device_bytes - weights - gathered - layer_inputs - representations
        largest = int(np.clip(room // one, 0, MAX_AUTO_CHUNK)) if room > 0 else 0
    return MemoryPlan(data, model, rows, tokens, weights, layer_inputs, chunk_size, chunk_size * one,
                      representations, device_bytes, largest, gathered, rules or "tp")


def recommend_rules(cfg: ModelConfig, data: int, model: int, device_bytes: int, **options) -> str:
    """The preset (`RULES`) under which the scan's estimate fits the largest chunk on this mesh (tensor parallel
    on a tie: it moves the fewest bytes), among those that use every mesh axis: `fsdp` leaves a model axis idle
    (every model shard would compute the same), and FSDP needs a data axis to split over."""
    usable = [name for name in RULES if not (name == "fsdp" and model > 1) and not (name != "tp" and data == 1)]
    best, best_chunk = "tp", -1
    for name in usable:
        chunk = plan(cfg, data, model, device_bytes=device_bytes, rules=name, **options).largest_chunk or 0
        if chunk > best_chunk:
            best, best_chunk = name, chunk
    return best


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
             f"  weights ({memory.rules:<8s})    {memory.weights / GIB:9.2f} GiB",
             *([f"  one layer gathered     {memory.gathered / GIB:9.2f} GiB"] if memory.gathered else []),
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
