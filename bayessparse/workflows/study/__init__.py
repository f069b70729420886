"""The reproduction study: every claim of the papers, trained, scored and written up by one command.

``bayessparse study`` reads a specification (:mod:`bayessparse.workflows.study.spec`; the full CPU study is
``experiments/study.yaml``, the CI-sized one ``experiments/study_quick.yaml``), plans its trainings
(:mod:`bayessparse.workflows.study.plan`), runs them side by side (:mod:`bayessparse.jobs`; finished ones are
skipped, interrupted ones resumed), scores them (:mod:`bayessparse.workflows.study.cells`) and writes
``results.md`` with its figures (:mod:`bayessparse.workflows.study.report`): into the output folder, and with
``docs`` into that folder too (``docs/results.md``, ``docs/figures/*.svg``), each time with
``results.json`` beside it, the machine-readable record of the cells (:mod:`bayessparse.workflows.study.records`).

Before any training the study checks the training version every finished unit recorded
(:mod:`bayessparse.workflows.study.stale`): a cell trained by other training code is trained again, or with
``reuse_stale`` (``--reuse-stale``) kept, and the report says so near its top.

One study writes an output folder at a time: a lock file refuses a second process on the same folder.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bayessparse import version
from bayessparse.config import TrainConfig
from bayessparse.errors import ConfigError
from bayessparse.files import write_text
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.jobs import run_jobs
from bayessparse.workflows.study.cells import check_cells, score
from bayessparse.workflows.study.plan import plan, row_cell
from bayessparse.workflows.study.records import RECORDS, records_text
from bayessparse.workflows.study.report import (
    Report,
    calibration_section,
    corruption_section,
    deep_gp_section,
    drop_rate_section,
    variational_section,
    dst_ee_section,
    freetickets_section,
    imp_section,
    reliability_section,
)
from bayessparse.workflows.study.rows import ROWS
from bayessparse.workflows.study.spec import StudySpec, read_spec
from bayessparse.workflows.study.stale import Stale, describe, distinct, remove_unit, scan

__all__ = ["run_study", "read_spec", "default_spec"]

RESULTS = "results.md"


def default_spec(quick: bool = False) -> Path:
    """``experiments/study.yaml`` (or ``study_quick.yaml``) of the source tree, else of the working directory."""
    name = "study_quick.yaml" if quick else "study.yaml"
    here = Path(__file__).resolve().parents[2] / "experiments" / name
    return here if here.exists() else Path("experiments") / name


def _locked(out: Path) -> contextlib.AbstractContextManager:
    """The study's hold on its output folder (one writer per folder)."""
    return exclusive(out, "run a study", kind="study")


def _predictions(spec: StudySpec, root: Path):
    """``(setup, row, sparsity, seed) -> (test probabilities, labels)`` of a finished cell."""
    from bayessparse.workflows import predictors as P
    from bayessparse.train import load_finished

    def predict(setup: str, row: str, sparsity: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cell = row_cell(spec, root, setup, row, sparsity, seed)
        run, model = load_finished(cell.folder)
        predictor = P.model_predictor(run, model)
        if ROWS[row].predict == "ts":
            predictor, _ = P.temperature_scaled(run, predictor)
        elif ROWS[row].predict == "mc":
            predictor = P.mc_predictor(run, model, spec.mc_samples)
        return predictor(run.data.test).softmax(-1).float(), P.labels_of(run.data.test)

    return predict


def run_study(spec_path: str | Path, out: str | Path, *, workers: int = 1, docs: str | Path | None = None,
              progress: bool = True, command: str | None = None, processes: int = 1, reuse_stale: bool = False,
              echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the study of ``spec_path`` in ``out``; write its report and ``results.json``; return a
    summary: ``cells``, ``seconds``, ``report`` (the files written), ``stale_retrained`` and ``stale_kept`` (the
    cells found trained by another training version, trained again or, with ``reuse_stale``, kept) and
    ``stale_versions`` (the versions they recorded; ``None``: none). ``processes`` > 1 trains each run
    data-parallel on that many processes (torchrun). ``echo`` receives a line about stale cells before any
    training."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"--processes must be an integer >= 1, got {processes!r}")
    spec = read_spec(spec_path)
    out = check_writable(out)
    check_kind(out, "study")
    if docs is not None and not Path(docs).is_dir():
        raise ConfigError(f"--docs: folder {docs} does not exist")
    command = command or f"bayessparse study --config {spec_path}"
    root = out / "runs"
    cells = plan(spec, root)
    check_cells(cells)
    with _locked(out):
        stale = scan(cells)  # here, before the workers start: the policy is decided once, for every cell
        if stale and echo is not None:
            echo(_stale_line(stale, len(cells), reuse_stale))
        if not reuse_stale:
            for cell in stale:
                remove_unit(cell.folder, root)
        start = time.perf_counter()
        results = run_jobs(functools.partial(score, processes=processes), cells, workers, progress=progress,
                           desc="study")
        seconds = time.perf_counter() - start
        scores = {c.folder: r for c, r in zip(cells, results)}
        kept = stale if reuse_stale else []
        records = records_text(cells, root)
        targets = [out] + ([Path(docs)] if docs is not None else [])
        for target in targets:
            report = _report(spec, root, scores, target / "figures", command, len(cells), kept)
            write_text(target / RESULTS, keep_benchmark_section(target / RESULTS, report.text()))
            write_text(target / RECORDS, records)
    versions = distinct([v for s in stale for v in s.versions])
    return {"cells": len(cells), "seconds": seconds, "report": [str(t / RESULTS) for t in targets],
            "stale_retrained": 0 if reuse_stale else len(stale), "stale_kept": len(stale) if reuse_stale else 0,
            "stale_versions": versions}


def keep_benchmark_section(path: Path, text: str) -> str:
    """``text`` with the benchmark sections of the existing ``path`` spliced in (the study rewrites its own
    sections only; ``bayessparse benchmark uci --docs`` owns those)."""
    from bayessparse.workflows.uci.report import sections, splice

    for section in sections(path.read_text() if path.exists() else ""):
        text = splice(text, section)
    return text


def _stale_line(stale: Sequence[Stale], n_cells: int, reuse: bool) -> str:
    """What the study says before training about the cells another training version trained."""
    found = (f"{len(stale)} of {n_cells} cells were trained by another training version than this code's "
             f"({version.TRAINING_VERSION}): {describe(stale)}")
    if reuse:
        return f"study: {found}; kept (--reuse-stale), and the report says so"
    return f"study: {found}; training them again"


def _report(spec: StudySpec, root: Path, scores: dict, figures: Path, command: str, n_cells: int,
            kept: Sequence[Stale] = ()) -> Report:
    rep = Report(spec, root, scores, figures, command)
    default_rate = TrainConfig().drop_rate
    warning = []
    if kept:
        warning = [f"**Mixed training versions: {len(kept)} of {n_cells} cells were trained by another training "
                   f"version than this code's ({version.TRAINING_VERSION}): {describe(kept)}.** They were kept "
                   "with `--reuse-stale`, so their numbers may differ from what this code trains; the same command "
                   "without `--reuse-stale` trains them again. `results.json` names them (`training_version`)."]
    rep.add("# Results", *warning,
            "Generated by the reproduction study; every number and figure below comes from runs it made. "
            "To regenerate (finished runs of this training version are reused, interrupted ones resumed):",
            f"```bash\nOMP_NUM_THREADS=1 {command}\n```",
            f"Specification `{Path(spec.path).name}`: {n_cells} trainings, seeds {', '.join(map(str, spec.seeds))}. "
            "CPU-scale numbers on embedded data; the paper-scale CIFAR configs are `experiments/cifar*.yaml`. "
            "Intervals are 95 % Student-t confidence intervals over seeds; method differences are paired by seed.")
    drop_rate_section(rep, default_rate)
    variational_section(rep, TrainConfig().keep_prior)
    calibration_section(rep)
    reliability_section(rep, _predictions(spec, root))
    corruption_section(rep)
    dst_ee_section(rep)
    freetickets_section(rep)
    imp_section(rep)
    deep_gp_section(rep)
    return rep

