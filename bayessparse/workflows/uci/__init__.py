"""``bayessparse benchmark uci``: the UCI regression benchmark on its published splits, every row, one report.

The benchmark (Hernández-Lobato and Adams, ICML 2015; the protocol of every deep-GP, MC dropout and deep
ensemble paper since) trains each row of :mod:`.rows` on each split of each set, chooses its hyper-parameters
on the split's validation part (:mod:`.fitting`), scores it on the published test rows in the target's original
units with the two post-hoc fixes beside it (:mod:`.units`), and writes a report section with the published
numbers and a verdict per target (:mod:`.report`) into ``<out>/uci.md`` and, with ``docs``, into
``docs/results.md`` between its markers (the figure into ``<docs>/figures/uci_loglik.svg``).

Units run side by side (``jobs``); each writes its record when it finishes, so re-running the same command
continues an interrupted benchmark. The wall time of an invocation that trains every unit from scratch is the
T4 measurement; one output folder has one writer at a time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from bayessparse.data.uci import UCI_SETS, read_split
from bayessparse.errors import ConfigError
from bayessparse.files import write_json, write_text
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.jobs import run_jobs
from bayessparse.plots.benchmark import plot_loglik
from bayessparse.workflows.uci.report import PUBLISHED, report_text, summarise, write_section
from bayessparse.workflows.uci.rows import ROWS, budget, check_rows
from bayessparse.workflows.uci.units import Unit, fit_unit, read_record

__all__ = ["QUICK_SETS", "QUICK_SPLITS", "check_sets", "check_splits", "run_benchmark"]

#: ``--quick``: two sets, two splits
QUICK_SETS = ("uci-energy", "uci-yacht")
QUICK_SPLITS = (0, 1)
REPORT = "uci.md"
FIGURE = "uci_loglik.svg"


def check_sets(names: Sequence[str]) -> list[str]:
    """The UCI sets named (``concrete`` or ``uci-concrete``), in the registry's order; one-line error otherwise."""
    full = [n if n.startswith("uci-") else f"uci-{n}" for n in names]
    unknown = [n for n in full if n not in UCI_SETS]
    if unknown or not full:
        raise ConfigError(f"--datasets: unknown UCI set(s) {', '.join(unknown) or '(none given)'} "
                          f"(choose from: {', '.join(s.removeprefix('uci-') for s in UCI_SETS)})")
    return [s for s in UCI_SETS if s in full]


def check_splits(splits: Sequence[int], sets: Sequence[str]) -> list[int]:
    """Split indices valid for every set (each has 20); one-line error naming ``--splits`` otherwise."""
    if not splits or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in splits):
        raise ConfigError(f"--splits must be split indices >= 0, got {list(splits)}")
    for name in sets:
        try:
            read_split(name, max(splits))
        except ConfigError as exc:
            raise ConfigError(f"--splits: {exc}") from None
    return sorted(set(splits))


def _timing(units: list[Unit], full: bool, fresh: int, seconds: float, jobs: int, quick: bool) -> dict[str, Any]:
    """The T4 record: ``complete`` only when this invocation trained every unit of the whole benchmark (every
    set, split and row; with ``quick``, of ``--quick``'s sets and splits)."""
    return {"seconds": seconds, "units": len(units), "trained": fresh, "complete": full and fresh == len(units),
            "jobs": jobs, "cores": os.cpu_count(), "quick": quick}


def run_benchmark(sets: Sequence[str], splits: Sequence[int], out: str | Path, *, rows: Sequence[str] | None = None,
                  quick: bool = False, jobs: int = 1, docs: str | Path | None = None, progress: bool = True,
                  command: str = "bayessparse benchmark uci") -> dict[str, Any]:
    """Run (or continue) the benchmark into ``out``; write the report; return ``units``, ``trained`` (this
    invocation), ``seconds``, ``report`` (the files written) and the ``timing`` record."""
    sets = check_sets(list(sets))
    splits = check_splits(list(splits), sets)
    chosen = check_rows(list(rows) if rows is not None else list(ROWS))
    if docs is not None and not Path(docs).is_dir():
        raise ConfigError(f"--docs: folder {docs} does not exist")
    out = check_writable(out)
    check_kind(out, "uci-benchmark")
    plan = budget(quick)
    # the expensive rows first, interleaved over sets and splits, so that two workers finish together
    units = [Unit(s, k, r.name, plan, out) for r in chosen for k in splits for s in sets]
    with exclusive(out, "run a UCI benchmark", kind="uci-benchmark"):
        fresh = sum(read_record(u) is None for u in units)
        start = time.perf_counter()
        records = run_jobs(fit_unit, units, jobs, progress=progress, desc="uci")
        seconds = time.perf_counter() - start
        whole = (sets, splits) == ((list(QUICK_SETS), list(QUICK_SPLITS)) if quick else (list(UCI_SETS), list(range(20))))
        timing = _timing(units, whole and len(chosen) == len(ROWS), fresh, seconds, jobs, quick)
        if fresh:
            write_json(out / "timing.json", timing)
        else:
            timing = _previous_timing(out, timing)
        summary, pooled, diverged = summarise(records)
        targets = [out] + ([Path(docs)] if docs is not None else [])
        written = []
        for target in targets:
            figure = target / "figures" / FIGURE
            plot_loglik({s: {r: v["loglik"][:2] for r, v in summary[s].items()} for s in summary},
                        [(r.name, r.label) for r in chosen], {s: (p[2], p[3]) for s, p in PUBLISHED.items()}, figure)
            text = report_text(summary, pooled, diverged, [r.name for r in chosen], splits, plan, timing, command,
                               f"figures/{FIGURE}")
            if target == out:
                write_text(out / REPORT, text)
                written.append(str(out / REPORT))
            else:
                write_section(target / "results.md", text)
                written.append(str(target / "results.md"))
    return {"units": len(units), "trained": fresh, "seconds": seconds, "report": written, "timing": timing}


def _previous_timing(out: Path, current: dict[str, Any]) -> dict[str, Any]:
    """Nothing was trained this time: the timing of the invocation that trained the units, if recorded."""
    try:
        saved = json.loads((out / "timing.json").read_text())
    except (OSError, ValueError):
        return {**current, "complete": False}
    return saved if saved.get("units") == current["units"] and saved.get("quick") == current["quick"] else {
        **current, "complete": False}
