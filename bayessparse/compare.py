"""Methods side by side: every (method, seed) pair trained from one base config, then tabulated.

Layout of the output folder::

    OUT/results.json                 {"runs": [metrics records], "summary": {method: {metric: {mean, std}}}}
    OUT/table.md                     the printed table
    OUT/reliability-METHOD.png       reliability diagram of each method (test predictions pooled over seeds)
    OUT/reliability-overlay.png      all methods on one set of axes
    OUT/METHOD/seed-S/               one run folder per pair (the train run-folder contract)
    OUT/KIND-METHOD-xM/seed-S/       one ensemble folder per (ensemble entry, seed) (see bayessparse.ensembles)

An entry of ``methods`` is a method (``cigl``: one run per seed) or a FreeTickets ensemble:
``edst:METHOD:M`` (EDST, one run with M phases), ``dst:METHOD:M`` (M independent runs) and
``METHOD:M`` for ``dst:METHOD:M`` (``dense:3`` is a deep ensemble). Ensemble rows are named
``EDST(RigL) x3``, ``DST(CigL) x3``, ``dense x3``; their accuracy / nll / ece / brier are those of the
ensemble, density is the mean member density and train_seconds the total. For seed ``S`` a DST
ensemble's members use seeds ``S*M .. S*M+M-1`` (ensembles of different seeds share no member) and
an EDST run uses seed ``S``.

Re-running the same command continues interrupted runs and re-uses finished ones.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from bayessparse.config import TrainConfig
from bayessparse.ensembles import KINDS, PREDICTIONS, ensemble, ensemble_name, ensemble_probs
from bayessparse.errors import ConfigError
from bayessparse.files import load_torch, write_json, write_text
from bayessparse.methods import METHODS, check_method
from bayessparse.predict import predict_probs
from bayessparse.train import load_data, load_finished, train
from bayessparse.uncertainty.reliability import plot_reliability, plot_reliability_overlay

DEFAULT_METHODS = ("dense", "rigl", "cigl")
TABLE_METRICS = ("accuracy", "nll", "ece", "brier", "density", "train_seconds")


def default_methods() -> list[str]:
    """dense, RigL and CigL: those of them that are registered."""
    return [m for m in DEFAULT_METHODS if m in METHODS]


@dataclass(frozen=True)
class Entry:
    """One row of the table: a method (``kind=None``, one run per seed) or an ensemble of ``members``."""

    method: str
    kind: str | None = None
    members: int = 1

    @property
    def name(self) -> str:
        """The row name: the method, or e.g. ``EDST(RigL) x3``."""
        return self.method if self.kind is None else ensemble_name(self.kind, self.method, self.members)

    @property
    def folder(self) -> str:
        return self.method if self.kind is None else f"{self.kind}-{self.method}-x{self.members}"


def parse_entry(text: str) -> Entry:
    """``rigl`` | ``edst:rigl:3`` | ``dst:cigl:3`` | ``dense:3`` (= ``dst:dense:3``), checked."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) == 1:
        check_method(parts[0])
        return Entry(parts[0])
    if len(parts) not in (2, 3):
        raise ConfigError(f"bad --methods entry {text!r} (use METHOD, METHOD:M, dst:METHOD:M or edst:METHOD:M)")
    kind, method, count = parts if len(parts) == 3 else ("dst", *parts)
    if kind not in KINDS:
        raise ConfigError(f"unknown ensemble kind '{kind}' in {text!r} (choose from: {', '.join(KINDS)})")
    check_method(method)
    if not count.isdigit() or int(count) < 2:
        raise ConfigError(f"the number of members in {text!r} must be an integer >= 2")
    if kind == "edst" and method == "dense":
        raise ConfigError(f"{text!r}: EDST needs a sparse method")
    return Entry(method, kind, int(count))


def _ensemble_record(base: TrainConfig, entry: Entry, seed: int, folder: Path, progress: bool) -> dict[str, Any]:
    """Train / resume one ensemble of the table and flatten its result into a table record."""
    cfg = base.replace(method=entry.method, seed=seed * entry.members if entry.kind == "dst" else seed)
    result = ensemble(cfg, entry.kind, entry.members, folder, dense_reference=None, progress=progress)
    members = result["members"]
    return {
        **{k: result["ensemble"][k] for k in ("accuracy", "nll", "ece", "brier")},
        "method": entry.name,
        "kind": entry.kind,
        "base_method": entry.method,
        "members": entry.members,
        "member_seeds": [m["seed"] for m in members],
        "density": statistics.fmean(m["density"] for m in members),
        "train_seconds": result["cost"]["train_seconds"],
        "flops_proxy": result["cost"]["flops_proxy"],
        "sparsity": cfg.effective_sparsity,
        "seed": seed,
        "epochs": result["cost"]["epochs"],
        "data": cfg.data,
        "model": cfg.model,
        "diversity": result["diversity"],
        "mask_overlap": result["mask_overlap"]["mean"],
    }


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


def _test_predictions(run_dir: Path, entry: Entry | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test probabilities of a finished run's evaluated model (of an ensemble: the mean of its members)."""
    if entry is not None and entry.kind is not None:
        saved = load_torch(run_dir / PREDICTIONS)
        return ensemble_probs(saved["member_probs"]), saved["labels"]
    run, model = load_finished(run_dir)
    return predict_probs(model, run.data.test, run.cfg.eval_batch_size, run.device)


def compare(
    base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Train every entry (method or ensemble, see :func:`parse_entry`) with every seed, print the table,
    write results.json and the diagrams."""
    entries = [parse_entry(m) for m in methods]
    configs = {(e, s): base.replace(method=e.method, seed=s) for e in entries for s in seeds}
    out = Path(out)
    load_data(base)  # validates the data fields before any folder exists
    records = []
    for (entry, seed), cfg in configs.items():
        folder = out / entry.folder / f"seed-{seed}"
        if entry.kind is None:
            records.append(train(cfg, folder, resume=True, progress=progress))
        else:
            records.append(_ensemble_record(base, entry, seed, folder, progress))
    summary = summarise(records)
    table = format_table(summary)
    print(table)
    write_text(out / "table.md", table + "\n")
    write_json(out / "results.json", {"runs": records, "summary": summary})
    curves = {}
    for entry in entries:
        preds = [_test_predictions(out / entry.folder / f"seed-{s}", entry) for s in seeds]
        probs, labels = torch.cat([p for p, _ in preds]), torch.cat([y for _, y in preds])
        curves[entry.name] = (probs, labels)
        plot_reliability(probs, labels, out / f"reliability-{entry.folder}.png", n_bins=base.ece_bins, title=entry.name)
    plot_reliability_overlay(curves, out / "reliability-overlay.png", n_bins=base.ece_bins, title=f"{base.data}")
    return {"runs": records, "summary": summary}
