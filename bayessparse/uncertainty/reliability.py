"""Reliability diagrams (Guo et al., 2017) written as PNG files, and their regression counterpart.

For a regressor the diagram is the calibration curve of its central intervals (Kuleshov et al.,
ICML 2018): the observed coverage of the central ``α`` interval of each predictive distribution
against ``α`` (:func:`plot_interval_calibration`).

Uses :class:`matplotlib.figure.Figure` with the Agg canvas directly, so no pyplot and no global
backend state. Bins come from :func:`bayessparse.uncertainty.metrics.calibration_bins`, the same
routine the ECE uses. Each function returns the Figure it saved (handy for tests and notebooks).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from bayessparse.files import save_figure
from bayessparse.uncertainty.metrics import calibration_bins, ece_from_bins

__all__ = ["INTERVAL_LEVELS", "plot_interval_calibration", "plot_reliability", "plot_reliability_overlay"]

#: The nominal levels of :func:`plot_interval_calibration`'s curves.
INTERVAL_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (0.99,)

_DIAGONAL_GID = "diagonal"


def _bins_numpy(probs: Tensor, labels: Tensor, n_bins: int) -> tuple[dict[str, np.ndarray], float]:
    bins = calibration_bins(probs, labels, n_bins)
    return {k: v.detach().cpu().double().numpy() for k, v in bins.items()}, ece_from_bins(bins)


def _style_unit_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.set_axisbelow(True)


def _draw_diagonal(ax) -> None:
    ax.plot([0, 1], [0, 1], "--", color="0.35", linewidth=1.2, label="Perfect calibration", gid=_DIAGONAL_GID)


def _draw_reliability(ax, b: dict[str, np.ndarray], ece: float) -> None:
    width = np.diff(b["edges"])
    left = b["edges"][:-1]
    acc = np.nan_to_num(b["accuracy"], nan=0.0)
    gap = np.where(b["counts"] > 0, b["confidence"] - b["accuracy"], 0.0)
    ax.bar(left, acc, width=width, align="edge", color="#1f77b4", edgecolor="#0d3c61", linewidth=0.8,
           label="Accuracy")
    ax.bar(left, gap, bottom=acc, width=width, align="edge", facecolor="#d62728", alpha=0.25,
           edgecolor="#d62728", hatch="//", linewidth=0.8, label="Gap to confidence")
    _draw_diagonal(ax)
    _style_unit_axes(ax, "", "Accuracy")
    ax.legend(loc="upper left", title=f"ECE = {ece:.4f}", frameon=True)


def _draw_histogram(ax, b: dict[str, np.ndarray]) -> None:
    counts = b["counts"]
    n = counts.sum()
    ax.bar(b["edges"][:-1], counts, width=np.diff(b["edges"]), align="edge", color="0.6", edgecolor="0.3",
           linewidth=0.8)
    mean_conf = np.nansum(b["confidence"] * counts) / n
    acc = np.nansum(b["accuracy"] * counts) / n
    ax.axvline(acc, color="#1f77b4", linestyle="-", linewidth=1.5, label=f"Accuracy ({acc:.3f})")
    ax.axvline(mean_conf, color="#d62728", linestyle="--", linewidth=1.5, label=f"Avg. confidence ({mean_conf:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Count")
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", frameon=True)


def plot_reliability(probs: Tensor, labels: Tensor, path: str | os.PathLike, n_bins: int = 15,
                     title: str | None = None) -> Figure:
    """Reliability diagram (top) and confidence histogram (bottom) of one model, saved as PNG.

    ``probs`` is ``(N, C)`` or ``(S, N, C)`` (averaged over ``S``), ``labels`` is ``(N,)``. The
    top panel has one bar per bin with height ``acc_b``, the gap up to ``conf_b`` hatched, and
    the diagonal; the ECE is in the legend. The bottom panel shows ``n_b`` per bin with vertical
    lines at the overall accuracy and mean confidence. Written atomically; returns the Figure.
    """
    b, ece = _bins_numpy(probs, labels, n_bins)
    fig = Figure(figsize=(5.0, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    _draw_reliability(top, b, ece)
    _draw_histogram(bottom, b)
    top.set_title(title or "Reliability diagram")
    save_figure(fig, path)
    return fig


def plot_reliability_overlay(curves: dict[str, tuple[Tensor, Tensor]], path: str | os.PathLike,
                             n_bins: int = 15, title: str | None = None) -> Figure:
    """Reliability curves of several methods on one axes, saved as PNG.

    ``curves`` maps a method name to ``(probs, labels)``. Each method is one line with markers at
    ``(conf_b, acc_b)`` over its non-empty bins, labelled with its ECE; plus the diagonal.
    Written atomically; returns the Figure.
    """
    if not curves:
        raise ValueError("curves must contain at least one method")
    fig = Figure(figsize=(5.6, 6.2), layout="constrained")
    ax = fig.subplots()
    _draw_diagonal(ax)
    for name, (probs, labels) in curves.items():
        b, ece = _bins_numpy(probs, labels, n_bins)
        keep = b["counts"] > 0
        ax.plot(b["confidence"][keep], b["accuracy"][keep], marker="o", markersize=4, linewidth=1.6,
                clip_on=False, label=f"{name} (ECE {ece:.4f})")
    return _finish_overlay(fig, ax, ("Confidence", "Accuracy"), title or "Reliability diagram", path)


def plot_interval_calibration(pits: dict[str, Tensor], path: str | os.PathLike, title: str | None = None) -> Figure:
    """Observed against nominal coverage of central intervals, one line per predictive, saved as PNG.

    ``pits`` maps a name to the probability integral transform ``F_n(y_n)`` of each target under its
    predictive distribution, ``(N,)`` (:func:`bayessparse.uncertainty.regression.mixture_cdf`); the
    central ``α`` interval covers ``y_n`` when ``|F_n(y_n) − ½| ≤ α/2``. Each line's legend gives its mean
    absolute gap to the diagonal over :data:`INTERVAL_LEVELS`; below the diagonal the intervals are too
    narrow (over-confident). Written atomically; returns the Figure.
    """
    if not pits:
        raise ValueError("pits must contain at least one predictive")
    levels = np.array(INTERVAL_LEVELS)
    fig = Figure(figsize=(5.6, 6.2), layout="constrained")
    ax = fig.subplots()
    _draw_diagonal(ax)
    for name, pit in pits.items():
        distance = np.abs(pit.detach().cpu().double().numpy() - 0.5)
        observed = (distance[None, :] <= levels[:, None] / 2).mean(axis=1)
        gap = float(np.mean(np.abs(observed - levels)))
        ax.plot(levels, observed, marker="o", markersize=4, linewidth=1.6, clip_on=False,
                label=f"{name} (mean gap {gap:.3f})")
    return _finish_overlay(fig, ax, ("Nominal coverage of the central interval", "Observed coverage"),
                           title or "Interval calibration", path)


def _finish_overlay(fig: Figure, ax, labels: tuple[str, str], title: str, path: str | os.PathLike) -> Figure:
    """Unit square axes with ``labels``, the legend under them, ``title``; saved to ``path``."""
    _style_unit_axes(ax, *labels)
    ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.set_title(title)
    save_figure(fig, path)
    return fig
