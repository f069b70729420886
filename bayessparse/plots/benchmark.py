"""The UCI benchmark's figure: test log-likelihood per row and set, mean ± standard error over splits, with the
published dense MC dropout value as a shaded band (its mean ± standard error)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from matplotlib.figure import Figure

from bayessparse.files import save_figure

__all__ = ["plot_loglik"]


def plot_loglik(summary: Mapping[str, Mapping[str, tuple[float, float]]], rows: Sequence[tuple[str, str]],
                published: Mapping[str, tuple[float, float]], path: str | os.PathLike) -> Figure:
    """``summary[set][row] = (mean, s.e.)`` of the test log-likelihood; ``rows``: ``(name, label)`` in display
    order; ``published[set] = (mean, s.e.)`` drawn as a band. One panel per set, rows on the vertical axis."""
    sets = list(summary)
    if not sets:
        raise ValueError("the summary holds no set")
    fig = Figure(figsize=(3.2 * len(sets), 0.35 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(1, len(sets), sharey=True, squeeze=False)[0]
    ys = range(len(rows))
    for ax, name in zip(axes, sets):
        if name in published:
            mean, se = published[name]
            ax.axvspan(mean - se, mean + se, color="tab:orange", alpha=0.35, lw=0, label="published MC dropout")
            ax.axvline(mean, color="tab:orange", lw=1)
        for y, (row, _) in zip(ys, rows):
            if row in summary[name]:
                mean, se = summary[name][row]
                ax.errorbar(mean, y, xerr=se, fmt="o", color="tab:blue", ms=4, capsize=2)
        ax.set_title(name.removeprefix("uci-"))
        ax.set_xlabel("test log-likelihood")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(ys), [label for _, label in rows])
    axes[0].invert_yaxis()
    if any(name in published for name in sets):
        axes[0].legend(loc="lower left", fontsize="small")
    save_figure(fig, path)
    return fig
