"""Figures render headless to non-empty PNG files and reject malformed input."""

import numpy as np
import pytest

from jaxheads import plots
from jaxheads.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5000


def test_head_heatmap(tmp_path):
    scores = np.random.default_rng(0).random((6, 4))
    scores[2, 1] = np.nan
    path = tmp_path / "out" / "heatmap.png"
    plots.plot_head_heatmap(scores, path, title="Ships", cbar_label="KL, nats")
    assert_png(path)


def test_top_heads_skip_nan_and_rank_highest_first():
    scores = np.array([[0.1, np.nan], [0.9, 0.5]])
    assert plots._top_heads(scores, 5) == [(1, 0), (1, 1), (0, 0)]


def test_chosen_heads(tmp_path):
    rng = np.random.default_rng(1)
    heads = [(3, 1), (0, 2)]
    steps = [rng.random((5, 3)), rng.random((5, 3))]
    steps[1][3, 1] = np.nan
    path = tmp_path / "sahara.png"
    plots.plot_chosen_heads(5, 3, heads, [step.tolist() for step in steps], path)
    assert_png(path)


def test_chosen_heads_rejects_mismatched_input(tmp_path):
    with pytest.raises(DataError, match="got 2 heads and 1 score tables"):
        plots.plot_chosen_heads(5, 3, [(0, 0), (1, 1)], [np.zeros((5, 3))], tmp_path / "a.png")
    with pytest.raises(DataError, match=r"step 1 scores have shape \(4, 3\), expected \(5, 3\)"):
        plots.plot_chosen_heads(5, 3, [(0, 0)], [np.zeros((4, 3))], tmp_path / "a.png")
    with pytest.raises(DataError, match=r"chosen head \(5, 0\) is outside the 5 x 3 grid"):
        plots.plot_chosen_heads(5, 3, [(5, 0)], [np.zeros((5, 3))], tmp_path / "a.png")


def test_curves(tmp_path):
    records = [{"step": step, "loss": 2.0 / (step + 1)} for step in range(20)]
    records += [{"step": 20, "loss": 0.1, "asr": 0.3}]
    path = tmp_path / "curves.png"
    plots.plot_curves(records, ["loss", "asr"], path)
    assert_png(path)
    with pytest.raises(DataError, match=r"no record has a value for 'accuracy'; the records hold \['asr', 'loss', "):
        plots.plot_curves(records, ["accuracy"], path)
    with pytest.raises(DataError, match="record 0 has 'loss' but no 'epoch'"):
        plots.plot_curves(records, ["loss"], path, x="epoch")


def test_heatmap_rejects_non_tables(tmp_path):
    with pytest.raises(DataError, match=r"non-empty \[layers, heads\] table, got shape \(3,\)"):
        plots.plot_head_heatmap(np.zeros(3), tmp_path / "a.png")
