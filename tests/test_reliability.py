"""Reliability diagrams: valid PNGs written atomically, and the plotted data equals calibration_bins."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from bayessparse.uncertainty.metrics import calibration_bins, expected_calibration_error
from bayessparse.uncertainty.reliability import plot_reliability, plot_reliability_overlay

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_data(seed: int, temperature: float = 1.0, n: int = 600, c: int = 5, s: int | None = None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, c) if s is None else (s, n, c)
    logits = 3 * torch.randn(shape, generator=g)
    first = logits if s is None else logits[0]
    labels = torch.multinomial((first / 2).softmax(-1), 1, generator=g).squeeze(-1)
    return (logits / temperature).softmax(-1), labels


def assert_valid_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


@pytest.mark.parametrize("n_bins", [10, 15])
def test_plot_reliability_png_and_bar_heights(tmp_path, n_bins):
    probs, labels = make_data(0)
    path = tmp_path / "rel.png"
    fig = plot_reliability(probs, labels, path, n_bins=n_bins, title="test")
    assert_valid_png(path)

    bins = calibration_bins(probs, labels, n_bins)
    top, bottom = fig.axes
    acc_bars, gap_bars = top.containers
    heights = np.array([r.get_height() for r in acc_bars])
    np.testing.assert_allclose(heights, bins["accuracy"].nan_to_num(0.0).numpy(), atol=1e-12)
    lefts = np.array([r.get_x() for r in acc_bars])
    np.testing.assert_allclose(lefts, bins["edges"][:-1].numpy(), atol=1e-7)
    tops = np.array([r.get_y() + r.get_height() for r in gap_bars])  # gap bar ends at the bin's confidence
    filled = bins["counts"].numpy() > 0
    np.testing.assert_allclose(tops[filled], bins["confidence"][filled].numpy(), atol=1e-12)

    counts = np.array([r.get_height() for r in bottom.containers[0]])
    np.testing.assert_array_equal(counts, bins["counts"].numpy())
    assert top.get_xlim() == (0.0, 1.0) and top.get_ylim() == (0.0, 1.0)
    ece = expected_calibration_error(probs, labels, n_bins)
    assert top.get_legend().get_title().get_text() == f"ECE = {ece:.4f}"
    assert top.get_title() == "test"


def test_plot_reliability_sample_input_and_overwrite(tmp_path):
    probs, labels = make_data(1, s=3)
    path = tmp_path / "sub" / "rel.png"  # parent directory created
    plot_reliability(probs, labels, path)
    first = path.stat().st_mtime_ns
    fig = plot_reliability(probs, labels, path)  # replaces the existing file atomically
    assert_valid_png(path)
    assert path.stat().st_mtime_ns >= first
    heights = np.array([r.get_height() for r in fig.axes[0].containers[0]])
    np.testing.assert_allclose(heights, calibration_bins(probs.mean(0), labels)["accuracy"].nan_to_num(0).numpy())


def test_plot_reliability_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    probs, labels = make_data(2)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_reliability(probs, labels, tmp_path / "rel.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_reliability_rejects_bad_input(tmp_path):
    probs, labels = make_data(0)
    with pytest.raises(ValueError):
        plot_reliability(probs, labels[:-1], tmp_path / "rel.png")
    assert list(tmp_path.iterdir()) == []


def test_overlay_one_line_per_method(tmp_path):
    curves = {name: make_data(3, temperature=t) for name, t in [("overconfident", 0.5), ("ok", 1.0), ("under", 3.0)]}
    path = tmp_path / "overlay.png"
    fig = plot_reliability_overlay(curves, path, n_bins=10, title="overlay")
    assert_valid_png(path)

    (ax,) = fig.axes
    lines = [ln for ln in ax.lines if ln.get_gid() != "diagonal"]
    assert len(lines) == len(curves)
    assert len(ax.lines) == len(curves) + 1  # plus the diagonal
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for (name, (probs, labels)), line in zip(curves.items(), lines):
        bins = calibration_bins(probs, labels, 10)
        keep = bins["counts"] > 0
        np.testing.assert_allclose(line.get_xdata(), bins["confidence"][keep].numpy())
        np.testing.assert_allclose(line.get_ydata(), bins["accuracy"][keep].numpy())
        assert f"{name} (ECE {expected_calibration_error(probs, labels, 10):.4f})" in legend
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)


def test_overlay_requires_curves(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_reliability_overlay({}, tmp_path / "x.png")
