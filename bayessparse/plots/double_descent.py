"""The sparse-double-descent plot of an IMP sweep (Arora et al., UAI 2023, Fig. 1 style).

Test error (and the error on the noisy training labels) against the number of nonzero weights of the pruned
layers on a log axis (the dense output layer is left out of the count: it would squeeze the sparsest rounds
together), the dense network at the right; below it the NLL and KL(p ‖ p̂) (when the true posterior is known),
and the ECE with the mean top-label confidence gap. The best round (lowest test error) is marked in every
panel. Uses :class:`matplotlib.figure.Figure` directly and writes the PNG atomically, like
:mod:`bayessparse.uncertainty.reliability`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayessparse.files import save_figure
__all__ = ["best_round", "plot_double_descent"]


def best_round(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of an IMP sweep with the lowest test error (the densest one among equals)."""
    return min(records, key=lambda r: (r["test_error"], r["round"]))


def _column(records: Sequence[dict[str, Any]], key: str) -> np.ndarray | None:
    if not all(key in r for r in records):
        return None
    return np.array([float(r[key]) for r in records])


def plot_double_descent(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Figure:
    """Plot the IMP round records (see :mod:`bayessparse.workflows.imp`) into ``path``; return the Figure."""
    if not records:
        raise ValueError("records must hold at least one round")
    # x: nonzero weights of the pruned layers, so that every round is the same step (x 0.8) on the log axis;
    # a dense output layer (a constant count) would squeeze the sparsest rounds together.
    x_key = "nonzero_pruned" if all("nonzero_pruned" in r for r in records) else "nonzero"
    x = np.array([max(1, int(r[x_key])) for r in records])
    dense_rest = int(records[0]["nonzero"]) - int(records[0][x_key])
    best = list(records).index(best_round(list(records)))
    fig = Figure(figsize=(6.4, 8.4), layout="constrained")
    ax_err, ax_prob, ax_cal = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.6, 1.2, 1.0]})

    ax_err.plot(x, _column(records, "test_error"), "o-", color="#1f77b4", label="test error")
    train = _column(records, "train_error")
    if train is not None:
        ax_err.plot(x, train, "s--", color="0.45", markersize=4, label="train error (noisy labels)")
    bayes = _column(records, "bayes_test_error")
    if bayes is not None:
        ax_err.axhline(bayes[0], color="#2ca02c", linestyle=":", linewidth=1.2, label="Bayes classifier")
    ax_err.plot([x[best]], [records[best]["test_error"]], "*", color="#d62728", markersize=14,
                label=f"best: round {records[best]['round']} ({records[best]['test_error']:.4f})")
    ax_err.set_ylabel("error")

    ax_prob.plot(x, _column(records, "nll"), "o-", color="#9467bd", label="test NLL")
    for key, style, label in (("kl_clean", "^-", "KL(p(y|x) ‖ p̂)"), ("kl_noisy", "v--", "KL(p(ỹ|x) ‖ p̂)")):
        values = _column(records, key)
        if values is not None:
            ax_prob.plot(x, values, style, markersize=4, label=label)
    ax_prob.set_ylabel("nats")

    ax_cal.plot(x, _column(records, "ece"), "o-", color="#ff7f0e", label="test ECE")
    conf = _column(records, "mean_confidence")
    if conf is not None:
        gap = conf - (1.0 - _column(records, "test_error"))
        ax_cal.plot(x, gap, "d--", color="0.45", markersize=4, label="mean confidence − accuracy")
    ax_cal.axhline(0.0, color="0.6", linewidth=0.8)
    ax_cal.set_ylabel("calibration")
    xlabel = "nonzero weights of the pruned layers" if x_key == "nonzero_pruned" else "nonzero prunable weights"
    if dense_rest:
        xlabel += f" (+{dense_rest} dense output weights)"
    ax_cal.set_xlabel(xlabel + "; log scale")

    for ax in (ax_err, ax_prob, ax_cal):
        ax.set_xscale("log")
        ax.axvline(x[best], color="#d62728", linestyle=":", linewidth=1.0)
        ax.grid(True, which="both", alpha=0.3, linewidth=0.6)
        ax.legend(fontsize="small", frameon=True)
    top = ax_err.secondary_xaxis("top")
    step = max(1, -(-len(records) // 7))  # at most 7 labels, from the dense end
    ticks = list(range(len(records)))[::step]
    top.set_xticks(x[ticks])
    top.set_xticks([], minor=True)
    top.set_xticklabels([f"{records[i]['density']:.2g}" for i in ticks], fontsize="x-small")
    top.set_xlabel("density of the pruned layers", fontsize="small")
    ax_err.set_title(title or "Iterative magnitude pruning")
    save_figure(fig, path)
    return fig
