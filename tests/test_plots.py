"""Figures render headless to non-empty PNG files, draw the data they are given (read back from the returned\nfigure: the heat map's array and orientation, its colour scale), and reject malformed input."""

import numpy as np
import pytest

from jaxheads import plots
from jaxheads.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5000


def grid_image(ax):
    """The heat map's image: its data (NaN cells masked), with layer 0 in the top row and heads across."""
    (image,) = ax.images
    assert image.origin == "upper" and ax.get_ylim()[0] > ax.get_ylim()[1]  # row 0 drawn at the top
    return image


def test_head_heatmap(tmp_path):
    scores = np.random.default_rng(0).random((6, 4))
    scores[2, 1] = np.nan
    path = tmp_path / "out" / "heatmap.png"
    fig = plots.plot_head_heatmap(scores, path, title="Ships", cbar_label="KL, nats")
    assert_png(path)
    image = grid_image(fig.axes[0])
    data = image.get_array()
    assert data.shape == (6, 4) and data.mask[2, 1] and data.mask.sum() == 1
    np.testing.assert_array_equal(data.filled(np.nan), scores)
    assert image.norm.vmin == np.nanmin(scores) and image.norm.vmax == np.nanmax(scores)
    assert image.get_cmap().name.startswith("viridis")
    assert fig.axes[1].get_ylabel() == "KL, nats"  # the colorbar


def test_signed_heatmap_is_a_diverging_map_centred_at_zero(tmp_path):
    scores = np.array([[0.3, -0.1], [-0.02, 0.05], [0.0, 0.2]])
    fig = plots.plot_head_heatmap(scores, tmp_path / "d.png", diverging=True)
    image = grid_image(fig.axes[0])
    np.testing.assert_array_equal(image.get_array(), scores)
    # centred at 0 and symmetric: -0.1 is as far below white as +0.1 is above it
    assert image.norm.vcenter == 0 and image.norm.vmin == -0.3 and image.norm.vmax == 0.3
    assert image.get_cmap().name.startswith("RdBu_r")
    np.testing.assert_allclose(image.norm(np.array([-0.3, 0.0, 0.3])), [0.0, 0.5, 1.0])


def test_top_heads_skip_nan_and_rank_highest_first():
    scores = np.array([[0.1, np.nan], [0.9, 0.5]])
    assert plots._top_heads(scores, 5) == [(1, 0), (1, 1), (0, 0)]


def test_chosen_heads(tmp_path):
    rng = np.random.default_rng(1)
    heads = [(3, 1), (0, 2)]
    steps = [rng.random((5, 3)), rng.random((5, 3))]
    steps[1][3, 1] = np.nan
    path = tmp_path / "sahara.png"
    fig = plots.plot_chosen_heads(5, 3, heads, [step.tolist() for step in steps], path)
    assert_png(path)
    grid_ax, line_ax = fig.axes[:2]
    np.testing.assert_array_equal(grid_image(grid_ax).get_array(), steps[0])  # the step-1 scores
    (line,) = line_ax.get_lines()  # the chosen group's score after each step
    np.testing.assert_array_equal(line.get_xdata(), [1, 2])
    np.testing.assert_array_equal(line.get_ydata(), [steps[0][3, 1], steps[1][0, 2]])


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


def test_confusion_colours_each_row_by_its_share_and_prints_the_counts(tmp_path):
    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig = plots.plot_confusion(counts, ["safe", "unsafe", "other_label"], tmp_path / "c.png")
    (image,) = fig.axes[0].images
    np.testing.assert_allclose(image.get_array(), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert (image.norm.vmin, image.norm.vmax) == (0, 1)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in fig.axes[0].texts}
    assert texts == {(row, col): str(counts[row, col]) for row in range(3) for col in range(3)}  # (true, predicted)
    assert fig.axes[0].get_ylabel() == "true" and fig.axes[0].get_xlabel() == "predicted"
