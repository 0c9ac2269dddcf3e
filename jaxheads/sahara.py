"""Sahara: greedy forward selection of the head group whose joint ablation most changes the dataset-level
representation (docs/methods.md §4)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from jaxheads.errors import JaxheadsError
from jaxheads.interventions import DEFAULT_EPSILON, Head, ablation_mask, from_mask
from jaxheads.loading import Model
from jaxheads.placement import model_on_mesh
from jaxheads.scan import (
    AUTO_CHUNK,
    DEFAULT_BATCH_SIZE,
    make_batches,
    row_multiple,
    scan_ablations,
)
from jaxheads.sharding import make_mesh
from jaxheads.ships import check_rank, principal_angle_degrees


@dataclasses.dataclass
class SaharaStep:
    """One greedy step: the score `[L, N]` of adding each head to the group (NaN for heads already in it). With a
    specificity term, `scores = harmful_scores - specificity * harmless_scores`, both kept."""

    scores: np.ndarray
    chosen: Head
    harmful_scores: np.ndarray | None = None
    harmless_scores: np.ndarray | None = None


@dataclasses.dataclass
class SaharaResult:
    heads: list[Head]
    steps: list[SaharaStep]
    seconds: float


def candidate_masks(group: Sequence[Head], num_layers: int, num_heads: int) -> tuple[np.ndarray, list[Head]]:
    """Masks `[M, L, N]` ablating `group ∪ {h}` for every head h outside the group, and those heads."""
    base = ablation_mask(group, num_layers, num_heads)
    candidates = [(l, n) for l in range(num_layers) for n in range(num_heads) if not base[l, n]]
    masks = np.repeat(base[None], len(candidates), axis=0)
    for i, (l, n) in enumerate(candidates):
        masks[i, l, n] = True
    return masks, candidates


def sahara(model: Model, prompts: Sequence, steps: int = 3, rank: int = 1, kind: str = "ua",
           epsilon: float = DEFAULT_EPSILON, batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = AUTO_CHUNK,
           done_steps: Sequence[SaharaStep] = (), on_step: Callable[[SaharaStep], None] | None = None,
           progress: bool = False, mesh: Mesh | None = None, harmless_prompts: Sequence = (),
           specificity: float = 0.0) -> SaharaResult:
    """Greedy search for `steps` heads. Each step scores every head h outside the chosen group G by the
    dataset-level score of ablating G ∪ {h} against the unablated model, and adds the best.

    With `specificity` λ > 0, a candidate's score is its score on `prompts` minus λ times the same score on
    `harmless_prompts`, so that heads every answer needs (whose ablation moves harmless prompts as much) lose to
    heads that matter for the harmful set only. `done_steps` resumes an interrupted search; `on_step` is called
    after each new step (e.g. to save it). The scans run on `mesh` (default: every device data-parallel).
    """
    cfg = model.config
    if not 1 <= steps <= cfg.num_layers * cfg.num_heads:
        raise JaxheadsError(f"steps must be in 1..{cfg.num_layers * cfg.num_heads}, got {steps}")
    check_rank(rank, len(prompts))
    if specificity < 0 or (specificity > 0 and not harmless_prompts):
        raise JaxheadsError(f"specificity must be >= 0, and > 0 needs harmless prompts; got {specificity} with "
                            f"{len(harmless_prompts)} harmless prompts")
    if specificity > 0:
        check_rank(rank, len(harmless_prompts))
    started = time.perf_counter()
    mesh = make_mesh() if mesh is None else mesh
    model = model_on_mesh(model, mesh)
    prompt_sets = [make_batches(model, prompts, batch_size, row_multiple(len(prompts), batch_size, mesh))]
    if specificity > 0:
        prompt_sets.append(make_batches(model, harmless_prompts, batch_size,
                                        row_multiple(len(harmless_prompts), batch_size, mesh)))
    result = list(done_steps)
    while len(result) < steps:
        group = [step.chosen for step in result]
        masks, candidates = candidate_masks(group, cfg.num_layers, cfg.num_heads)
        ablations = from_mask(masks, kind, epsilon)
        tables = []
        for batches in prompt_sets:
            scan = scan_ablations(model, batches, ablations, chunk_size, keep_gram=True, progress=progress, mesh=mesh)
            table = np.full((cfg.num_layers, cfg.num_heads), np.nan)
            for (l, n), score in zip(candidates, principal_angle_degrees(scan.base_gram, scan.gram, rank)):
                table[l, n] = score
            tables.append(table)
        if specificity > 0:
            combined = tables[0] - specificity * tables[1]
            step = SaharaStep(combined, _best(combined), tables[0], tables[1])
        else:
            step = SaharaStep(tables[0], _best(tables[0]))
        result.append(step)
        if on_step is not None:
            on_step(step)
    return SaharaResult([step.chosen for step in result], result, time.perf_counter() - started)


def _best(table: np.ndarray) -> Head:
    """The (layer, head) of the highest score (NaN cells, heads already chosen, are skipped); the first on ties."""
    layer, head = np.unravel_index(np.nanargmax(table), table.shape)
    return int(layer), int(head)
