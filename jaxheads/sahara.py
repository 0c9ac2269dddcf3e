"""Sahara: greedy forward selection of the head group whose joint ablation most changes the dataset-level
representation (DESIGN.md §4)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from jaxheads.interventions import DEFAULT_EPSILON, Head, ablation_mask, from_mask
from jaxheads.loading import Model
from jaxheads.scan import (
    AUTO_CHUNK,
    DEFAULT_BATCH_SIZE,
    make_batches,
    model_on_mesh,
    scan_ablations,
)
from jaxheads.sharding import DATA, make_mesh
from jaxheads.errors import JaxheadsError
from jaxheads.ships import check_rank, principal_angle_degrees


@dataclasses.dataclass
class SaharaStep:
    """One greedy step: the score `[L, N]` of adding each head to the group (NaN for heads already in it)."""

    scores: np.ndarray
    chosen: Head


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
           progress: bool = False, mesh: Mesh | None = None) -> SaharaResult:
    """Greedy search for `steps` heads. Each step scores every head h outside the chosen group G by the
    dataset-level score of ablating G ∪ {h} against the unablated model, and adds the best.

    `done_steps` resumes an interrupted search; `on_step` is called after each new step (e.g. to save it).
    The scans run on `mesh` (default: every device data-parallel).
    """
    cfg = model.config
    if not 1 <= steps <= cfg.num_layers * cfg.num_heads:
        raise JaxheadsError(f"steps must be in 1..{cfg.num_layers * cfg.num_heads}, got {steps}")
    check_rank(rank, len(prompts))
    started = time.perf_counter()
    mesh = make_mesh() if mesh is None else mesh
    model = model_on_mesh(model, mesh)
    batches = make_batches(model, prompts, batch_size, mesh.shape[DATA])
    result = list(done_steps)
    while len(result) < steps:
        group = [step.chosen for step in result]
        masks, candidates = candidate_masks(group, cfg.num_layers, cfg.num_heads)
        scan = scan_ablations(model, batches, from_mask(masks, kind, epsilon), chunk_size, keep_gram=True,
                              progress=progress, mesh=mesh)
        scores = principal_angle_degrees(scan.base_gram, scan.gram, rank)
        table = np.full((cfg.num_layers, cfg.num_heads), np.nan)
        for (l, n), score in zip(candidates, scores):
            table[l, n] = score
        step = SaharaStep(table, candidates[int(np.argmax(scores))])
        result.append(step)
        if on_step is not None:
            on_step(step)
    return SaharaResult([step.chosen for step in result], result, time.perf_counter() - started)
