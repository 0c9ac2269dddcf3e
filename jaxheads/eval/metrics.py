"""Classification metrics with their counts and 95% Wilson intervals (docs/guard.md): rates, the confusion matrix,
per-label recall and precision, and for a task with a negative label the risk recall, false alarms and
over-caution."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxheads.errors import DataError


def wilson(numerator: int, denominator: int, z: float = 1.959963984540054) -> list[float] | None:
    """The 95% Wilson score interval of a proportion (None for an empty denominator)."""
    if denominator == 0:
        return None
    p = numerator / denominator
    scale = 1 + z * z / denominator
    centre = (p + z * z / (2 * denominator)) / scale
    half = z * math.sqrt(p * (1 - p) / denominator + z * z / (4 * denominator ** 2)) / scale
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rate(numerator: int, denominator: int) -> dict:
    """A metric with its counts and 95% Wilson interval; value None (reported as n/a) when the denominator is 0."""
    return {"value": numerator / denominator if denominator else None, "numerator": int(numerator),
            "denominator": int(denominator), "wilson95": wilson(numerator, denominator)}


def confusion(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts `[K, K]`: rows the true label, columns the predicted one, in `labels` order."""
    if len(true) != len(predicted):
        raise DataError(f"{len(true)} true labels but {len(predicted)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    for a, b in zip(true, predicted):
        if a not in index or b not in index:
            raise DataError(f"label {a if a not in index else b!r} is not one of {', '.join(labels)}")
        matrix[index[a], index[b]] += 1
    return matrix


def metrics(true: Sequence[str], predicted: Sequence[str], task) -> dict:
    """The metrics of docs/guard.md for a `task` (a `jaxheads.classifier.Task`: its `labels`, and its `negative`
    and `alarm` labels or None): the confusion matrix, recall and precision per label, and with a negative
    label (Safe) the risk recall (risky inputs not predicted negative), the false-alarm rate (negative inputs
    predicted `task.alarm`) and over-caution (negative inputs predicted anything else)."""
    labels = task.labels
    matrix = confusion(true, predicted, labels)
    result = {"n": int(matrix.sum()), "labels": list(labels), "confusion": matrix.tolist(),
              "recall": {label: rate(matrix[i, i], matrix[i].sum()) for i, label in enumerate(labels)},
              "precision": {label: rate(matrix[i, i], matrix[:, i].sum()) for i, label in enumerate(labels)}}
    if task.negative is not None:
        s = labels.index(task.negative)
        risky = [i for i in range(len(labels)) if i != s]
        caught = sum(matrix[i, j] for i in risky for j in risky)
        result["risk_recall"] = rate(caught, matrix[risky].sum())
        if task.alarm is not None:
            result["false_alarm"] = rate(matrix[s, labels.index(task.alarm)], matrix[s].sum())
        result["over_caution"] = rate(matrix[s].sum() - matrix[s, s], matrix[s].sum())
    return result


def format_rate(metric: dict) -> str:
    """'0.976 (41/42, 95% CI 0.877-0.996)' or 'n/a (0/0)'."""
    if metric["value"] is None:
        return f"n/a ({metric['numerator']}/{metric['denominator']})"
    low, high = metric["wilson95"]
    return f"{metric['value']:.3f} ({metric['numerator']}/{metric['denominator']}, 95% CI {low:.3f}-{high:.3f})"
