"""Figures of the reproduction study: metrics against sparsity, severity, drop rate and parameter count.

Every function takes ``{line label: [(x, Interval), ...]}`` (an :class:`~bayessparse.stats.Interval`
per point: the mean over seeds and its 95 % confidence interval, drawn as error bars) and writes
one figure (SVG for the committed docs) with one panel per metric.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from matplotlib.figure import Figure

from bayessparse.files import save_figure
from bayessparse.stats import Interval

Series = dict[str, list[tuple[float, Interval]]]


def plot_panels(panels: Sequence[tuple[str, Series]], path: str | os.PathLike, xlabel: str, title: str,
                logx: bool = False, xticks: Sequence[float] | None = None) -> Figure:
    """One panel per ``(metric label, series)``, side by side; lines with 95 % CI error bars."""
    fig = Figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, series) in zip(axes, panels):
        for label, points in series.items():
            points = sorted(points, key=lambda p: p[0])
            xs = [x for x, _ in points]
            ys = [i.mean for _, i in points]
            err = [0.0 if not math.isfinite(i.half_width) else i.half_width for _, i in points]
            ax.errorbar(xs, ys, yerr=err, marker="o", markersize=3.5, linewidth=1.3, capsize=2.5, label=label)
        if logx:
            ax.set_xscale("log")
        if xticks is not None:
            ax.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title)
    save_figure(fig, path)
    return fig
