"""Do two runs find the same safety heads? The overlap of their top-k heads against chance, and the rank
correlation of their full score maps (docs/methods.md §10). Plain numpy and exact integer arithmetic; no scipy.

A score map is an `[L, N]` table with one finite score per head (higher = more important). Heads are ranked by
descending score; equal scores are ordered by the lower flat index `layer * N + head` (row-major), so a ranking,
and with it every top-k set, is deterministic.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np

from jaxheads.errors import DataError

Head = tuple[int, int]


def score_map(table, name: str = "scores") -> np.ndarray:
    """`table` as a float `[L, N]` array; an error naming `name` if it is not a non-empty 2-D table or holds a
    NaN, None or infinite cell (such a map cannot be ranked)."""
    try:
        scores = np.array(table, dtype=float)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} is not a numeric [layers, heads] table ({error})") from error
    if scores.ndim != 2 or 0 in scores.shape:
        raise DataError(f"{name} must be a non-empty [layers, heads] table, got shape {scores.shape}")
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        cells = ", ".join(f"({l}, {n})" for l, n in bad[:5].tolist())
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{name} has {len(bad)} NaN, None or infinite cells (layer, head) {cells}{more}; a score map "
                        "used for ranking needs a finite score for every head")
    return scores


def ranking(scores: np.ndarray) -> list[Head]:
    """Every head `(layer, head)`, highest score first; ties go to the lower flat index `layer * N + head`."""
    scores = score_map(scores)
    order = np.argsort(-scores.ravel(), kind="stable")  # stable: equal scores keep row-major order
    return [tuple(int(i) for i in np.unravel_index(index, scores.shape)) for index in order]


def top_heads(scores: np.ndarray, k: int) -> list[Head]:
    """The `k` highest-scoring heads, highest first, ties as in `ranking`."""
    scores = score_map(scores)
    if not 1 <= k <= scores.size:
        raise DataError(f"k must be in 1..{scores.size} (the number of heads), got {k}")
    return ranking(scores)[:k]


def tied_at_cutoff(scores: np.ndarray, k: int) -> bool:
    """Whether the k-th and (k+1)-th ranked heads have equal scores, so that the top-k set depends on the
    tie-break (never for k = all heads)."""
    scores = score_map(scores)
    ordered = np.sort(scores.ravel())[::-1]
    return k < ordered.size and bool(ordered[k - 1] == ordered[k])


def expected_overlap(k_a: int, k_b: int, population: int) -> float:
    """E[|A ∩ B|] when B is a uniformly random `k_b`-subset of `population` heads and |A| = `k_a`:
    k_a * k_b / population."""
    return k_a * k_b / population


def hypergeom_tail(x: int, population: int, successes: int, draws: int) -> float:
    """P(X >= x) for X ~ Hypergeometric(population, successes, draws), summed exactly over
    C(successes, i) C(population - successes, draws - i) / C(population, draws), i = x .. min(successes, draws),
    in integers and rounded once to a float."""
    if not (0 <= successes <= population and 0 <= draws <= population):
        raise ValueError(f"need 0 <= successes, draws <= population; got {population}, {successes}, {draws}")
    low = max(x, 0, draws - (population - successes))
    high = min(successes, draws)
    if low > high:  # x is above the largest possible overlap
        return 0.0
    favourable = sum(math.comb(successes, i) * math.comb(population - successes, draws - i)
                     for i in range(low, high + 1))
    return float(Fraction(favourable, math.comb(population, draws)))


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n of `values` (ascending), tied values sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=float).ravel()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(values.size, dtype=float)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and ordered[end + 1] == ordered[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1  # mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally shaped score maps: the Pearson correlation of their average
    ranks over all cells (exact with ties, unlike 1 - 6 Σd² / (n(n² - 1))). NaN when either map is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise DataError(f"Spearman needs maps of one shape, got {a.shape} and {b.shape}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")


def compare_pair(a: np.ndarray, b: np.ndarray, ks: Sequence[int]) -> dict:
    """Per k: the shared top-k heads (in `a`'s rank order), their count, its expectation under random choice and
    the one-sided p-value P(X >= overlap), X ~ Hypergeometric(L*N, k, k); and the Spearman correlation of the two
    maps."""
    a, b = score_map(a, "the first map"), score_map(b, "the second map")
    if a.shape != b.shape:
        raise DataError(f"cannot compare maps of shapes {a.shape} and {b.shape}")
    population = a.size
    per_k = {}
    for k in ks:
        top_b = set(top_heads(b, k))
        shared = [head for head in top_heads(a, k) if head in top_b]
        per_k[k] = {"overlap": len(shared), "expected": expected_overlap(k, k, population),
                    "p_value": hypergeom_tail(len(shared), population, k, k), "shared": shared}
    return {"top_k": per_k, "spearman": spearman(a, b)}
