"""``results.json``: the machine-readable record of a study's cells, written beside its ``results.md``.

A JSON list with one entry per trained unit, in the study's plan order, one line each::

    {"folder": "digits-mlp/rigl-0123456789/seed-0", "kind": "run", "training_version": 1,
     "config": {...}, "metrics": {...}}

* ``folder``: the unit's folder relative to the study's runs folder (``OUT/runs``);
* ``kind``: ``"run"``, ``"dst"`` / ``"edst"`` (an ensemble; then also ``members``), ``"imp"`` (an IMP
  sweep; then also ``imp``, its settings) or ``"deep-gp"``;
* ``config``: the :class:`~bayessparse.config.TrainConfig` dict the unit was trained from (an ensemble's:
  its first member's seed; an IMP sweep's: the dense network it prunes), or the
  :class:`~bayessparse.baselines.DeepGPConfig` dict of a deep GP;
* ``training_version``: the :data:`~bayessparse.version.TRAINING_VERSION` its finished parts recorded
  (``null``: none recorded; a list of the versions when they differ, which only a unit kept with
  ``--reuse-stale`` can show);
* ``metrics``: the scalar entries (numbers, strings, booleans, nulls) of a run's or deep GP's
  ``metrics.json``, exactly as recorded there (no history, no lists or nested records). Compact summaries
  for the others: an ensemble's are the scalar entries of its ``ensemble.json`` and of that file's
  ``ensemble`` record (the ensemble's own test metrics), an IMP sweep's those of its last round in
  ``imp.json``.

The scores the study computes on top (temperature scaling, Monte Carlo predictives, corruptions: the
folders' ``study.json``) are not in it. With it a test can train one cell again and compare its numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from bayessparse.workflows.study.cells import Cell
from bayessparse.workflows.study.stale import distinct, recorded_versions

RECORDS = "results.json"


def _scalars(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if v is None or isinstance(v, (bool, int, float, str))}


def _metrics(cell: Cell) -> dict[str, Any]:
    from bayessparse.workflows.ensembles import RESULTS as ENSEMBLE
    from bayessparse.workflows.imp import RESULTS as IMP
    from bayessparse.train import METRICS

    folder = Path(cell.folder)
    if cell.kind in ("run", "deep-gp"):
        return _scalars(json.loads((folder / METRICS).read_text()))
    if cell.kind == "imp":
        rounds = json.loads((folder / IMP).read_text())
        return _scalars(rounds[-1]) if rounds else {}
    result = json.loads((folder / ENSEMBLE).read_text())
    return {**_scalars(result), **_scalars(result.get("ensemble"))}


def unit_record(cell: Cell, root: str | Path) -> dict[str, Any]:
    """The ``results.json`` entry of a cell whose unit has finished (module docstring)."""
    versions = distinct(recorded_versions(cell))
    entry: dict[str, Any] = {
        "folder": Path(cell.folder).relative_to(root).as_posix(),
        "kind": cell.kind,
        "training_version": versions[0] if len(versions) == 1 else (versions or None),
        "config": cell.config,
    }
    if cell.kind in ("dst", "edst"):
        entry["members"] = cell.members
    elif cell.kind == "imp":
        entry["imp"] = cell.imp
    entry["metrics"] = _metrics(cell)
    return entry


def records_text(cells: Sequence[Cell], root: str | Path) -> str:
    """The text of ``results.json`` for finished ``cells`` whose folders lie in ``root``: one unit a line."""
    lines = [json.dumps(unit_record(c, root), separators=(",", ":")) for c in cells]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
