"""Headless figures of head scores, Sahara selections and training curves, saved atomically.

Figures are built with `matplotlib.figure.Figure` and drawn by the Agg canvas, so no display and no pyplot state
are involved (the global backend is left alone).
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jaxheads.errors import DataError
from jaxheads.io import save_figure_atomic

TOP_HEADS = 5
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="black")]
_MARK_COLOR = "#ff3b30"


def plot_head_heatmap(scores, path: str | os.PathLike, title: str = "", cbar_label: str = "score",
                      diverging: bool = False) -> Figure:
    """Saves a heatmap of per-head `scores` [L, N] (layer 0 in the top row, heads across) with the top-5 heads
    outlined and numbered by rank, and listed with their (layer, head) and score below the plot. NaN cells
    are grey. `diverging`: for signed scores, a red-blue colormap centred at 0."""
    scores = _head_table(scores, "scores")
    num_layers, num_heads = scores.shape
    fig = Figure(figsize=_grid_size(num_layers, num_heads, extra_height=1.0), layout="constrained")
    ax = fig.add_subplot()
    _draw_grid(fig, ax, scores, cbar_label, diverging)
    top = _top_heads(scores, TOP_HEADS)
    for rank, (layer, head) in enumerate(top, start=1):
        _mark_cell(ax, layer, head, str(rank))
    listing = [f"#{rank}  ({layer}, {head})  {scores[layer, head]:.4g}"
               for rank, (layer, head) in enumerate(top, start=1)]
    ax.annotate("\n".join(["top heads (layer, head)  score", *listing]) if top else "no finite scores",
                xy=(0, 0), xycoords="axes fraction", xytext=(0, -36), textcoords="offset points", va="top",
                fontsize=8, family="monospace")
    ax.set_title(title, fontsize=10)
    save_figure_atomic(fig, path)
    return fig


def plot_chosen_heads(num_layers: int, num_heads: int, heads: Sequence[tuple[int, int]],
                      step_scores: Sequence, path: str | os.PathLike, title: str = "Sahara greedy head selection",
                      score_label: str = "dataset-level score (°)") -> Figure:
    """Saves Sahara's selection: left, the step-1 scores (each head ablated alone) on the [L, N] grid with the
    chosen heads outlined and numbered by the step that chose them; right, the score of the chosen group after
    each step."""
    if len(heads) != len(step_scores) or not heads:
        raise DataError(f"need one score table per chosen head and at least one step; got {len(heads)} heads and "
                        f"{len(step_scores)} score tables")
    tables = [_head_table(table, f"step {step} scores") for step, table in enumerate(step_scores, start=1)]
    for step, table in enumerate(tables, start=1):
        if table.shape != (num_layers, num_heads):
            raise DataError(f"step {step} scores have shape {table.shape}, expected ({num_layers}, {num_heads})")
    for layer, head in heads:
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise DataError(f"chosen head ({layer}, {head}) is outside the {num_layers} x {num_heads} grid")
    width, height = _grid_size(num_layers, num_heads)
    fig = Figure(figsize=(width + 4.5, height), layout="constrained")
    grid_ax, line_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [width, 4.0]})
    _draw_grid(fig, grid_ax, tables[0], f"step 1 (head alone): {score_label}")
    for step, (layer, head) in enumerate(heads, start=1):
        _mark_cell(grid_ax, layer, head, str(step))
    grid_ax.set_title("chosen heads, numbered by step", fontsize=10)
    steps = np.arange(1, len(heads) + 1)
    chosen_scores = [table[layer, head] for table, (layer, head) in zip(tables, heads)]
    line_ax.plot(steps, chosen_scores, marker="o", color="#1f5aa6")
    for step, score, (layer, head) in zip(steps, chosen_scores, heads):
        line_ax.annotate(f"+({layer}, {head})", (step, score), xytext=(4, 6), textcoords="offset points",
                         fontsize=8)
    line_ax.set_xticks(steps)
    line_ax.set_xlim(0.6, len(heads) + 0.9)
    line_ax.set_xlabel("step (heads ablated together)")
    line_ax.set_ylabel(score_label)
    line_ax.set_title("best score per step", fontsize=10)
    line_ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    save_figure_atomic(fig, path)
    return fig


def plot_curves(records: Sequence[dict], keys: Sequence[str], path: str | os.PathLike, x: str = "step",
                title: str = "") -> None:
    """Saves one panel per metric in `keys` against `x`, from log records (a record without a metric, or with
    None for it, is skipped for that panel)."""
    if not keys:
        raise DataError("plot_curves needs at least one metric key")
    fig = Figure(figsize=(7, 1.2 + 2.2 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = []
        for index, record in enumerate(records):
            if record.get(key) is None:
                continue
            if x not in record:
                raise DataError(f"record {index} has {key!r} but no {x!r}; log {x!r} with every metric or pick "
                                "another x")
            points.append((record[x], record[key]))
        if not points:
            present = sorted({name for record in records for name in record})
            raise DataError(f"no record has a value for {key!r}; the records hold {present}")
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(points) < 50 else None, color="#1f5aa6", linewidth=1.3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(x)
    if title:
        axes[0].set_title(title, fontsize=10)
    save_figure_atomic(fig, path)


def plot_ablation_asr(table: dict, path: str | os.PathLike, title: str = "",
                      chosen_label: str = "Sahara heads") -> None:
    """Saves grouped bars of ASR against the number of ablated heads k: the chosen k heads (`chosen_label`) next
    to k random heads (mean, with the draws' standard deviation), and a line at the unablated ASR. `table` is the summary of
    `launch.sahara_asr`: `{"none": float, "sahara": [..], "random_mean": [..], "random_std": [..]}`."""
    sizes = np.arange(1, len(table["sahara"]) + 1)
    fig = Figure(figsize=(1.6 + 1.1 * len(sizes), 3.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(sizes - 0.18, table["sahara"], width=0.34, color="#b2182b", label=chosen_label)
    ax.bar(sizes + 0.18, table["random_mean"], width=0.34, yerr=table["random_std"], capsize=3, color="#7f7f7f",
           label="random heads (mean ± sd)")
    ax.axhline(table["none"], color="black", linestyle="--", linewidth=1, label="no ablation")
    ax.set_xticks(sizes)
    ax.set_xlabel("heads ablated (k)")
    ax.set_ylabel("ASR")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure_atomic(fig, path)


def _head_table(scores, name: str) -> np.ndarray:
    """`scores` as a float [L, N] array (None becomes NaN)."""
    table = np.array(scores, dtype=float)
    if table.ndim != 2 or 0 in table.shape:
        raise DataError(f"{name} must be a non-empty [layers, heads] table, got shape {table.shape}")
    return table


def _grid_size(num_layers: int, num_heads: int, extra_height: float = 0.0) -> tuple[float, float]:
    """Figure inches for an [L, N] grid: cells about 0.3 inch, within readable bounds."""
    width = min(max(2.2 + 0.32 * num_heads, 5.0), 16.0)
    height = min(max(1.4 + 0.24 * num_layers, 3.5), 14.0) + extra_height
    return width, height


def _draw_grid(fig: Figure, ax, table: np.ndarray, cbar_label: str, diverging: bool = False) -> None:
    """Draws an [L, N] table as cells (layer 0 at the top) with a labelled colorbar; `diverging` centres a
    red-blue colormap at 0."""
    num_layers, num_heads = table.shape
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "viridis"].with_extremes(bad="#d9d9d9")
    norm = CenteredNorm(vcenter=0.0) if diverging else None
    image = ax.imshow(np.ma.masked_invalid(table), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.02, aspect=35)
    colorbar.set_label(cbar_label, fontsize=9)
    ax.set_xticks(_ticks(num_heads))
    ax.set_yticks(_ticks(num_layers))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer (0 at top)")


def _ticks(count: int) -> np.ndarray:
    """Tick positions: every index for small axes, else about 16 evenly spaced ones."""
    return np.arange(0, count, max(1, int(np.ceil(count / 16))))


def _mark_cell(ax, layer: int, head: int, label: str) -> None:
    """Outlines cell (layer, head) and writes `label` in it."""
    ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=_MARK_COLOR, linewidth=2.0))
    ax.text(head, layer, label, ha="center", va="center", color="white", fontsize=8, fontweight="bold",
            path_effects=_OUTLINE)


def _top_heads(scores: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The (layer, head) of the `count` highest finite scores, highest first."""
    flat = np.where(np.isfinite(scores), scores, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:min(count, int(np.isfinite(scores).sum()))]
    return [tuple(int(i) for i in np.unravel_index(index, scores.shape)) for index in order]


_RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_RUN_COLORS = ("#1f5aa6", "#d9480f", "#2b8a3e", "#7b2cbf", "#c2255c", "#0b7285", "#5c940d", "#495057")
_SHARED_COLOR = "#ffd43b"


def plot_top_heads_overlap(num_layers: int, num_heads: int, labels: Sequence[str],
                           top_heads: dict[int, Sequence[Sequence[tuple[int, int]]]], path: str | os.PathLike,
                           title: str = "", panel_titles: dict[int, str] | None = None) -> None:
    """Saves one panel per k of `top_heads` ({k: [run 0's top-k heads, run 1's, ...]}) on the [L, N] grid (layer
    0 at the top, heads across): each run's heads as markers of its own shape and colour, shifted sideways
    within the cell so that runs choosing the same head stay visible, and the cells of heads in the top-k of
    two or more runs filled. `panel_titles` ({k: text}) replaces the default title, the count of such heads."""
    if not top_heads or not labels:
        raise DataError("plot_top_heads_overlap needs at least one k and one run")
    for k, per_run in top_heads.items():
        if len(per_run) != len(labels):
            raise DataError(f"k={k} has heads of {len(per_run)} runs but there are {len(labels)} labels")
        for label, heads in zip(labels, per_run):
            outside = [(l, n) for l, n in heads if not (0 <= l < num_layers and 0 <= n < num_heads)]
            if outside:
                raise DataError(f"{label}'s top-{k} heads {outside} are outside the {num_layers} x {num_heads} grid")
    runs = len(labels)
    panel_width = min(max(1.6 + 0.3 * num_heads, 3.6), 8.0)
    panel_height = min(max(1.2 + 0.26 * num_layers, 3.0), 12.0)
    fig = Figure(figsize=(panel_width * len(top_heads), panel_height + 0.5 + 0.22 * runs), layout="constrained")
    axes = fig.subplots(1, len(top_heads), squeeze=False)[0]
    cell_points = 72 * min(0.8 * panel_width / num_heads, 0.8 * panel_height / num_layers)
    marker_size = float(np.clip(0.7 * cell_points / max(runs, 2), 2.0, 9.0))  # about 0.35 cell for two runs
    step = 0.8 / max(runs, 2)  # markers side by side within the cell
    for ax, (k, per_run) in zip(axes, top_heads.items()):
        counts: dict[tuple[int, int], int] = {}
        for heads in per_run:
            for head in {tuple(head) for head in heads}:
                counts[head] = counts.get(head, 0) + 1
        shared = sorted(head for head, count in counts.items() if count > 1)
        for layer, head in shared:
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, facecolor=_SHARED_COLOR, edgecolor="#e67700",
                                   linewidth=1.2, zorder=1))
        for index, (label, heads) in enumerate(zip(labels, per_run)):
            offset = (index - (runs - 1) / 2) * step
            ax.plot([n + offset for _, n in heads], [l for l, _ in heads], linestyle="none",
                    marker=_RUN_MARKERS[index % len(_RUN_MARKERS)], color=_RUN_COLORS[index % len(_RUN_COLORS)],
                    markersize=marker_size, markeredgecolor="black", markeredgewidth=0.4, label=label, zorder=3)
        ax.set_xlim(-0.5, num_heads - 0.5)
        ax.set_ylim(num_layers - 0.5, -0.5)
        ax.set_xticks(_ticks(num_heads))
        ax.set_yticks(_ticks(num_layers))
        ax.set_xticks(np.arange(-0.5, num_heads), minor=True)
        ax.set_yticks(np.arange(-0.5, num_layers), minor=True)
        ax.grid(which="minor", color="#dee2e6", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer (0 at top)")
        default = f"top-{k}: {len(shared)} heads in the top-{k} of two or more runs"
        ax.set_title((panel_titles or {}).get(k, default), fontsize=9)
    handles, names = axes[0].get_legend_handles_labels()
    handles.append(Rectangle((0, 0), 1, 1, facecolor=_SHARED_COLOR, edgecolor="#e67700"))
    names.append("in the top-k of two or more runs")
    fig.legend(handles, names, loc="outside lower center", ncol=min(runs + 1, 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure_atomic(fig, path)


def plot_utility(summary: dict, path: str | os.PathLike, title: str = "") -> None:
    """Saves three panels against the number of ablated heads k: the perplexity of the harmless answers, the
    harmless refusal rate and the arithmetic accuracy; each with the set's first k heads, k random heads (mean,
    shaded ± the draws' standard deviation) and a dashed line without ablation. `summary` is that of
    `jaxheads utility`: `{measure: {"none": float, "chosen": [..], "random_mean": [..], "random_std": [..]}}`.
    The perplexity axis is logarithmic when its values span more than a factor of 20."""
    panels = (("perplexity", "perplexity of harmless answers"), ("refusal_rate", "harmless refusal rate"),
              ("arithmetic_accuracy", "arithmetic accuracy"))
    missing = [key for key, _ in panels if key not in summary]
    if missing:
        raise DataError(f"the utility summary has no {', '.join(missing)}; it holds {sorted(summary)}")
    sizes = np.arange(1, len(summary["perplexity"]["chosen"]) + 1)
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, 3), panels):
        table = summary[key]
        mean, std = np.asarray(table["random_mean"], float), np.asarray(table["random_std"], float)
        ax.plot(sizes, table["chosen"], marker="o", color="#b2182b", label="the set's first k heads")
        ax.plot(sizes, mean, marker="s", color="#7f7f7f", label="k random heads (mean ± sd)")
        ax.fill_between(sizes, mean - std, mean + std, color="#7f7f7f", alpha=0.25, linewidth=0)
        ax.axhline(table["none"], color="black", linestyle="--", linewidth=1, label="no ablation")
        values = np.array([*table["chosen"], *(mean - std), *(mean + std), table["none"]], float)
        if key == "perplexity":
            positive = values[values > 0]
            if positive.size and positive.max() > 20 * positive.min():
                ax.set_yscale("log")
        else:
            ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(sizes)
        ax.set_xlabel("heads ablated (k)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure_atomic(fig, path)


def plot_last_position_attention(heads: Sequence[tuple[int, int]], examples: dict[str, dict], path: str | os.PathLike,
                                 title: str = "") -> None:
    """Saves bars of each head's last-position attention over the tokens of one example prompt per set: a row per
    head, a column per set (`examples[name]` has `query`, `tokens` and `attention` `[head][token]`), the token
    strings on the x axis."""
    names = list(examples)
    widest = max(len(example["tokens"]) for example in examples.values())
    fig = Figure(figsize=(min(max(4.0, 0.28 * widest), 11.0) * len(names), 1.2 + 2.4 * len(heads)),
                 layout="constrained")
    axes = fig.subplots(len(heads), len(names), squeeze=False)
    for column, name in enumerate(names):
        tokens = examples[name]["tokens"]
        for row, (layer, head) in enumerate(heads):
            ax = axes[row, column]
            ax.bar(np.arange(len(tokens)), examples[name]["attention"][row], color="#b2182b" if column == 0
                   else "#2166ac")
            ax.set_xticks(np.arange(len(tokens)), tokens, rotation=90, fontsize=7)
            ax.set_xlim(-0.6, len(tokens) - 0.4)
            ax.set_ylabel(f"head ({layer}, {head})", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                query = examples[name]["query"]
                ax.set_title(f"{name}: {query[:70]}{'…' if len(query) > 70 else ''}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure_atomic(fig, path)



def plot_confusion(matrix, labels: Sequence[str], path: str | os.PathLike, title: str = "") -> Figure:
    """Saves a confusion matrix (rows the true label, columns the predicted one): each cell shows its count, and
    its colour is the count's share of its row (the row's recall on the diagonal)."""
    counts = np.asarray(matrix, float)
    if counts.ndim != 2 or counts.shape != (len(labels), len(labels)):
        raise DataError(f"a confusion matrix of {len(labels)} labels must be {len(labels)} x {len(labels)}, "
                        f"got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    names = [label.replace("_", "\n") for label in labels]
    fig = Figure(figsize=(1.6 + 1.2 * len(labels), 1.2 + 1.1 * len(labels)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row in range(len(labels)):
        for col in range(len(labels)):
            ax.text(col, row, f"{int(counts[row, col])}", ha="center", va="center", fontsize=10,
                    color="white" if shares[row, col] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), names, fontsize=8)
    ax.set_yticks(range(len(labels)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="share of the row", shrink=0.8)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure_atomic(fig, path)
    return fig
