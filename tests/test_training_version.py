"""docs/results.md follows the code.

``docs/results.json`` (written by ``bayessparse study --docs docs`` beside ``docs/results.md``)
records every unit the report was made from and the training version that trained it. A change that
moves a trained number must bump :data:`bayessparse.version.TRAINING_VERSION` and regenerate the
report: the first test fails when the committed report was made by another version, the second when
the numbers of a committed cell moved while the version stayed.
"""

import json
from pathlib import Path

import pytest

from bayessparse.config import resolve
from bayessparse.train import train
from bayessparse.version import TRAINING_VERSION

RECORDS = Path(__file__).resolve().parents[1] / "docs" / "results.json"
#: what a retrained cell must reproduce: its test scores and its size
SCORES = ("accuracy", "nll", "ece", "brier", "rmse", "coverage_50", "coverage_90", "coverage_95", "noise_scale",
          "density", "parameters")
REGENERATE = "regenerate it: OMP_NUM_THREADS=1 bayessparse study --config experiments/study.yaml --out runs/study --docs docs"
if not RECORDS.exists():  # written by the first full study run of a version that records training versions
    pytest.skip(f"docs/results.json is not committed yet; {REGENERATE}", allow_module_level=True)


def _records() -> list[dict]:
    return json.loads(RECORDS.read_text(encoding="utf-8"))


def _cells_to_retrain() -> list[dict]:
    """The cheapest committed network cell of each task and each of RigL / CigL: a few seconds each."""
    runs = [r for r in _records() if r["kind"] == "run"]
    chosen = []
    for method in ("rigl", "cigl"):
        for task_key in ("rmse", "accuracy"):  # regression, classification
            found = [r for r in runs if r["config"]["method"] == method and task_key in r["metrics"]]
            if found:
                chosen.append(min(found, key=lambda r: r["metrics"]["train_seconds"]))
    return chosen


def test_the_committed_report_was_trained_by_this_training_version():
    records = _records()
    assert len(records) > 100
    stale = sorted({(r["folder"], str(r["training_version"])) for r in records
                    if r["training_version"] != TRAINING_VERSION})
    assert not stale, (f"{len(stale)} units of docs/results.md were trained by another training version than "
                       f"{TRAINING_VERSION} (first: {stale[0]}); {REGENERATE}")


@pytest.mark.slow
@pytest.mark.parametrize("record", _cells_to_retrain(), ids=lambda r: r["folder"])
def test_a_committed_cell_trained_again_gives_its_committed_numbers(tmp_path, record):
    metrics = train(resolve(record["config"]), tmp_path / "run", progress=False)
    committed = record["metrics"]
    moved = {key: (committed[key], metrics[key]) for key in SCORES
             if key in committed and metrics[key] != pytest.approx(committed[key], rel=1e-6, abs=1e-9)}
    assert not moved, (f"{record['folder']} trains to other numbers than docs/results.md records "
                       f"(committed, now): {moved}; bump TRAINING_VERSION in bayessparse/version.py and {REGENERATE}")
