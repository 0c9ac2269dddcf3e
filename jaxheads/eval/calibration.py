"""Calibration of a classifier's label logits (docs/guard.md): the softmax, the negative log-likelihood of the true
labels, the temperature that minimises it, and the thresholds that reach a risk-recall or false-alarm target."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxheads.errors import JaxheadsError


def softmax(z: np.ndarray) -> np.ndarray:
    """softmax over the last axis, computed stably."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: Sequence[int], low: float = 0.05, high: float = 20.0) -> float:
    """The temperature in [low, high] that minimises the calibration NLL (a log-spaced grid, then a finer one
    around its best point)."""
    grid = np.exp(np.linspace(np.log(low), np.log(high), 241))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    step = np.log(grid[1] / grid[0])
    fine = np.exp(np.linspace(np.log(best) - step, np.log(best) + step, 41))
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


def choose_threshold(negative_probs_of_risky: Sequence[float], target: float) -> float:
    """The smallest threshold t >= 0.5 with which at least a share `target` of the risky inputs has P(negative)
    <= t (is not predicted negative): with p sorted from high to low and m = floor((1 - target) * n) misses
    allowed, t = max(0.5, p[m]); 0.5 when there are no risky inputs."""
    if not 0 < target <= 1:
        raise JaxheadsError(f"the risk-recall target must be in (0, 1], got {target}")
    p = np.sort(np.asarray(negative_probs_of_risky, np.float64))[::-1]
    if len(p) == 0:
        return 0.5
    allowed = int(math.floor((1 - target) * len(p) + 1e-9))
    return float(max(0.5, p[allowed])) if allowed < len(p) else 0.5


def choose_alarm_threshold(alarm_probs_of_negatives_flagged: Sequence[float], num_negatives: int,
                           target: float) -> float:
    """The smallest alarm threshold with which at most a share `target` of the negative inputs are false alarms:
    `alarm_probs_of_negatives_flagged` are P(alarm) of the negative inputs that the rule would otherwise label
    `alarm`; with them sorted from high to low and k = floor(target * num_negatives) false alarms allowed, the
    threshold is the (k+1)-th of them (0, i.e. plain argmax, when there are no more than k)."""
    if not 0 <= target <= 1:
        raise JaxheadsError(f"the false-alarm target must be in [0, 1], got {target}")
    q = np.sort(np.asarray(alarm_probs_of_negatives_flagged, np.float64))[::-1]
    allowed = int(math.floor(target * num_negatives + 1e-9))
    return float(q[allowed]) if allowed < len(q) else 0.0
