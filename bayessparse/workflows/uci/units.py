"""One unit of the benchmark: one row on one split of one set, from training to its record.

A unit chooses the row's hyper-parameters on validation (:func:`~.fitting.select`, the test split hidden),
then scores the chosen candidate on the test split in the target's original units, and adds the two post-hoc
fixes fitted on validation (:mod:`bayessparse.uncertainty.recalibration`): one scale on the predictive
variance, and split-conformal intervals. Its record is ``units/<set>/<row>/split-<K>.json``; a record of the
same settings is reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayessparse.data import load as load_data
from bayessparse.errors import TrainingDiverged
from bayessparse.files import write_json
from bayessparse.regressors import GaussianPredictions
from bayessparse.uncertainty.recalibration import conformal_coverage, conformal_quantiles, fit_variance_scale
from bayessparse.uncertainty.regression import LEVELS, mixture_moments
from bayessparse.version import TRAINING_VERSION
from bayessparse.workflows.uci.fitting import select
from bayessparse.workflows.uci.rows import ROWS, Budget

__all__ = ["Unit", "fit_unit", "posthoc", "read_record"]


@dataclass(frozen=True)
class Unit:
    """Row ``row`` on split ``split`` of set ``dataset``, trained under ``budget``, recorded under ``root``."""

    dataset: str
    split: int
    row: str
    budget: Budget
    root: Path

    @property
    def path(self) -> Path:
        return self.root / "units" / self.dataset / self.row / f"split-{self.split:02d}.json"

    @property
    def key(self) -> dict[str, Any]:
        """What a reusable record must have been made with."""
        return {"dataset": self.dataset, "split": self.split, "row": self.row, "budget": self.budget.to_dict(),
                "training_version": TRAINING_VERSION}


def read_record(unit: Unit) -> dict[str, Any] | None:
    """The unit's record if one exists and was made with the unit's settings, else ``None``."""
    try:
        record = json.loads(unit.path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == unit.key else None


def posthoc(val: GaussianPredictions, test: GaussianPredictions) -> dict[str, Any]:
    """The two post-hoc fixes, fitted on ``val``, scored on ``test``: ``recalibrated`` (the variance scale
    ``c2`` and the test scores with every variance times ``c2``) and ``conformal`` (the normalised-residual
    quantiles, test coverage and mean interval width per level, in the target's original units)."""
    c2 = fit_variance_scale(val.means, val.variances, val.targets, val.log_weights)
    scaled = GaussianPredictions(test.means, test.variances * c2, test.targets, test.log_weights, test.scale)
    quantiles = conformal_quantiles(val.means, val.variances, val.targets, LEVELS, val.log_weights)
    coverage = conformal_coverage(test.means, test.variances, test.targets, quantiles, test.log_weights)
    _, variance = mixture_moments(test.means, test.variances, test.log_weights)
    s = test.scale[1] if test.scale is not None else 1.0
    width = {a: float(2 * q * s * variance.sqrt().mean()) for a, q in quantiles.items()}
    return {"recalibrated": {"c2": c2, **scaled.scores()},
            "conformal": {f"{round(100 * a)}": {"quantile": q, "coverage": coverage[a], "width": width[a]}
                          for a, q in quantiles.items()}}


def fit_unit(unit: Unit) -> dict[str, Any]:
    """Train, choose, score and record ``unit`` (or return its existing record)."""
    record = read_record(unit)
    if record is not None:
        return record
    row = ROWS[unit.row]
    data = load_data(unit.dataset, data_seed=unit.split)
    start = time.perf_counter()
    record = {"key": unit.key, "label": row.label, "n_test": len(data.test)}
    try:
        chosen, trace = select(row, data, unit.split, unit.budget)
    except TrainingDiverged as exc:
        record.update(diverged=str(exc), seconds=time.perf_counter() - start)
    else:
        val, test = chosen.predict(data.val), chosen.predict(data.test)  # the test split, after the choice
        record.update(choice=chosen.setting, trace=trace, nonzero=chosen.nonzero, val=val.scores(),
                      test=test.scores(), **posthoc(val, test), train_seconds=chosen.seconds,
                      seconds=time.perf_counter() - start)
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    write_json(unit.path, record)
    return record
