"""Ships (Safety Head ImPortant Score), query level and dataset level (docs/methods.md §3–4)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.sharding import Mesh

from jaxheads.errors import JaxheadsError
from jaxheads.interventions import DEFAULT_EPSILON, Interventions, single_heads
from jaxheads.loading import Model
from jaxheads.scan import AUTO_CHUNK, DEFAULT_BATCH_SIZE, make_batches, row_multiple, scan_ablations
from jaxheads.sharding import make_mesh


def query_level(model: Model, prompts: Sequence, kind: str = "ua", epsilon: float = DEFAULT_EPSILON,
                batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = AUTO_CHUNK,
                progress: bool = False, mesh: Mesh | None = None) -> np.ndarray:
    """Ships scores `[P, L, N]`: KL(p_base || p_ablated) of the first response token for every prompt and
    every single-head ablation, float32, computed on `mesh` (default: every device data-parallel)."""
    cfg = model.config
    mesh = make_mesh() if mesh is None else mesh
    ablations = single_heads(cfg.num_layers, cfg.num_heads, kind, epsilon)
    batches = make_batches(model, prompts, batch_size, row_multiple(len(prompts), batch_size, mesh))
    result = scan_ablations(model, batches, ablations, chunk_size, progress=progress, mesh=mesh)
    return result.kl.T.reshape(len(prompts), cfg.num_layers, cfg.num_heads)


def check_rank(rank: int, num_prompts: int) -> None:
    """The rank of the dataset-level score must be in 1..P (checked before any scan)."""
    if not 1 <= rank <= num_prompts:
        raise JaxheadsError(f"rank must be in 1..{num_prompts} for {num_prompts} prompts, got {rank}")


def top_left_singular_vectors(gram: np.ndarray, rank: int) -> np.ndarray:
    """The first `rank` left singular vectors `[..., P, r]` of representation matrices `M: [..., P, D]`, from
    their Gram matrices `M Mᵀ: [..., P, P]` (the eigenvectors of the largest eigenvalues), in float64."""
    _, vectors = np.linalg.eigh(np.asarray(gram, np.float64))
    return vectors[..., ::-1][..., :rank]


def principal_angle_degrees(base_gram: np.ndarray, ablated_gram: np.ndarray, rank: int = 1) -> np.ndarray:
    """Dataset-level Ships: Σ_{i≤r} arccos σ_i(U_baseᵀ U_abl) in degrees, where U are the top-r left singular
    vectors of the representation matrices, given as Gram matrices `base_gram: [P, P]`, `ablated_gram: [M, P, P]`.
    Returns `[M]`."""
    check_rank(rank, base_gram.shape[0])
    u_base = top_left_singular_vectors(base_gram, rank)
    u_ablated = top_left_singular_vectors(ablated_gram, rank)
    cosines = np.linalg.svd(np.einsum("pr,mps->mrs", u_base, u_ablated), compute_uv=False)
    return np.degrees(np.arccos(np.clip(cosines, 0.0, 1.0))).sum(axis=-1)


def dataset_level_scores(model: Model, prompts: Sequence, ablations: Interventions, rank: int = 1,
                         batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = AUTO_CHUNK,
                         progress: bool = False, mesh: Mesh | None = None) -> np.ndarray:
    """Dataset-level score `[M]` (degrees) of each ablation `[M, L, N]` over the whole prompt set, computed on
    `mesh` (default: every device data-parallel)."""
    check_rank(rank, len(prompts))
    mesh = make_mesh() if mesh is None else mesh
    batches = make_batches(model, prompts, batch_size, row_multiple(len(prompts), batch_size, mesh))
    result = scan_ablations(model, batches, ablations, chunk_size, keep_gram=True, progress=progress, mesh=mesh)
    return principal_angle_degrees(result.base_gram, result.gram, rank)


def dataset_level(model: Model, prompts: Sequence, kind: str = "ua", epsilon: float = DEFAULT_EPSILON,
                  rank: int = 1, **scan_options) -> np.ndarray:
    """Dataset-level Ships `[L, N]` of every single-head ablation."""
    cfg = model.config
    scores = dataset_level_scores(model, prompts, single_heads(cfg.num_layers, cfg.num_heads, kind, epsilon), rank,
                                  **scan_options)
    return scores.reshape(cfg.num_layers, cfg.num_heads)
