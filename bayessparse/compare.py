"""Methods side by side: every (method, seed) pair trained from one base config, then tabulated.

Layout of the output folder::

    OUT/results.json                 {"runs": [metrics records], "summary": {method: {metric: {mean, std}}}}
    OUT/table.md                     the printed table
    OUT/reliability-METHOD.png       reliability diagram of each method (test predictions pooled over seeds)
    OUT/reliability-overlay.png      all methods on one set of axes
    OUT/METHOD/seed-S/               one run folder per pair (the train run-folder contract)

Re-running the same command continues interrupted runs and re-uses finished ones.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from bayessparse.config import TrainConfig
from bayessparse.files import write_json, write_text
from bayessparse.methods import METHODS, check_method
from bayessparse.predict import predict_probs
from bayessparse.train import load_data, load_finished, train
from bayessparse.uncertainty.reliability import plot_reliability, plot_reliability_overlay

DEFAULT_METHODS = ("dense", "rigl", "cigl")
TABLE_METRICS = ("accuracy", "nll", "ece", "brier", "density", "train_seconds")


def default_methods() -> list[str]:
    """dense, RigL and CigL: those of them that are registered."""
    return [m for m in DEFAULT_METHODS if m in METHODS]


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and (sample) standard deviation of each table metric, per method, over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        out[method] = {}
        for key in TABLE_METRICS:
            values = [float(r[key]) for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[method][key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of mean ± std per method."""
    header = "| method | " + " | ".join(TABLE_METRICS) + " |"
    rule = "|---" * (len(TABLE_METRICS) + 1) + "|"
    lines = [header, rule]
    for method, stats in summary.items():
        cells = []
        for key in TABLE_METRICS:
            digits = 1 if key == "train_seconds" else 4
            cells.append(f"{stats[key]['mean']:.{digits}f} ± {stats[key]['std']:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_predictions(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Test probabilities of a finished run's evaluated model."""
    run, model = load_finished(run_dir)
    return predict_probs(model, run.data.test, run.cfg.eval_batch_size, run.device)


def compare(
    base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Train every method with every seed, print the table, write results.json and the diagrams."""
    for method in methods:
        check_method(method)
    configs = {(m, s): base.replace(method=m, seed=s) for m in methods for s in seeds}
    out = Path(out)
    load_data(base)  # validates the data fields before any folder exists
    records = []
    for (method, seed), cfg in configs.items():
        records.append(train(cfg, out / method / f"seed-{seed}", resume=True, progress=progress))
    summary = summarise(records)
    table = format_table(summary)
    print(table)
    write_text(out / "table.md", table + "\n")
    write_json(out / "results.json", {"runs": records, "summary": summary})
    curves = {}
    for method in methods:
        preds = [_test_predictions(out / method / f"seed-{s}") for s in seeds]
        probs, labels = torch.cat([p for p, _ in preds]), torch.cat([y for _, y in preds])
        curves[method] = (probs, labels)
        plot_reliability(probs, labels, out / f"reliability-{method}.png", n_bins=base.ece_bins, title=method)
    plot_reliability_overlay(curves, out / "reliability-overlay.png", n_bins=base.ece_bins, title=f"{base.data}")
    return {"runs": records, "summary": summary}
