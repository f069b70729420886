"""``bayessparse benchmark uci``: the UCI regression benchmark on its published splits, every row, one report.

The benchmark (Hernández-Lobato and Adams, ICML 2015; the protocol of every deep-GP, MC dropout and deep
ensemble paper since) trains each row of :mod:`.rows` on each split of each set, chooses its hyper-parameters
on the split's validation part (:mod:`.fitting`), scores it on the published test rows in the target's original
units with the two post-hoc fixes beside it (:mod:`.units`), and writes a report section with the published
numbers and a verdict per target (:mod:`.report`) into ``<out>/report.md`` and, with ``docs``, into
``docs/results.md`` between its markers (the figure into ``<docs>/figures/<section>_loglik.svg``; the section
is ``uci`` for UCI sets and is named after the sets otherwise, e.g. ``diabetes``).

Units run side by side (``jobs``); each writes its record when it finishes, so re-running the same command
continues an interrupted benchmark. ``timing.json`` sums the wall time of the invocations that trained units
(the T4 measurement, when together they trained every unit of the whole benchmark); one output folder has one
writer at a time.
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
from bayessparse.workflows.uci.report import PUBLISHED, report_text, section_id, summarise, write_section
from bayessparse.workflows.uci.rows import DEFAULT_ROWS, budget, check_rows
from bayessparse.workflows.uci.units import Unit, fit_unit, read_record

__all__ = ["QUICK_SETS", "QUICK_SPLITS", "check_sets", "check_splits", "run_benchmark"]

#: ``--quick``: two sets, two splits
QUICK_SETS = ("uci-energy", "uci-yacht")
QUICK_SPLITS = (0, 1)
REPORT = "report.md"
TIMING = "timing.json"


def check_sets(names: Sequence[str]) -> list[str]:
    """The sets named: UCI sets (``concrete`` or ``uci-concrete``, in the registry's order) and any other
    regression dataset (``diabetes``, whose ``data_seed`` draws its split); one-line error otherwise."""
    from bayessparse.data import DATASETS, task_of
    from bayessparse.tasks import REGRESSION

    full = [f"uci-{n}" if f"uci-{n}" in UCI_SETS else n for n in names]
    unknown = [n for n in full if n not in DATASETS or task_of(n) != REGRESSION]
    if unknown or not full:
        others = [n for n in DATASETS if task_of(n) == REGRESSION and n not in UCI_SETS]
        raise ConfigError(f"--datasets: unknown regression set(s) {', '.join(unknown) or '(none given)'} "
                          f"(choose from: {', '.join([s.removeprefix('uci-') for s in UCI_SETS] + others)})")
    return [s for s in UCI_SETS if s in full] + [s for s in dict.fromkeys(full) if s not in UCI_SETS]


def check_splits(splits: Sequence[int], sets: Sequence[str]) -> list[int]:
    """Split indices valid for every set (a UCI set has 20; elsewhere any ``data_seed``); one-line error
    naming ``--splits`` otherwise."""
    if not splits or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in splits):
        raise ConfigError(f"--splits must be split indices >= 0, got {list(splits)}")
    for name in sets:
        if name in UCI_SETS:
            try:
                read_split(name, max(splits))
            except ConfigError as exc:
                raise ConfigError(f"--splits: {exc}") from None
    return sorted(set(splits))


def _timing(out: Path, units: list[Unit], whole: bool, fresh: int, seconds: float, jobs: int,
            quick: bool) -> dict[str, Any]:
    """The T4 record, with this invocation added to the earlier ones that trained units of the same plan:
    ``seconds`` and ``trained`` are their sums; ``complete`` when the plan is the whole benchmark (every set,
    split and row; with ``quick``, --quick's) and those invocations trained every unit of it."""
    try:
        saved = json.loads((out / TIMING).read_text())
    except (OSError, ValueError):
        saved = {}
    same = saved.get("units") == len(units) and saved.get("quick") == quick and saved.get("whole") == whole
    invocations = list(saved.get("invocations", [])) if same else []
    if fresh:
        invocations.append({"seconds": seconds, "trained": fresh, "jobs": jobs, "cores": os.cpu_count()})
    trained = sum(i["trained"] for i in invocations)
    return {"units": len(units), "quick": quick, "whole": whole, "invocations": invocations,
            "seconds": sum(i["seconds"] for i in invocations), "trained": trained,
            "complete": whole and trained >= len(units),
            "jobs": max((i["jobs"] for i in invocations), default=jobs), "cores": os.cpu_count()}


def run_benchmark(sets: Sequence[str], splits: Sequence[int], out: str | Path, *, rows: Sequence[str] | None = None,
                  quick: bool = False, jobs: int = 1, docs: str | Path | None = None, progress: bool = True,
                  command: str = "bayessparse benchmark uci") -> dict[str, Any]:
    """Run (or continue) the benchmark into ``out``; write the report; return ``units``, ``trained`` (this
    invocation), ``seconds``, ``report`` (the files written) and the ``timing`` record."""
    sets = check_sets(list(sets))
    splits = check_splits(list(splits), sets)
    chosen = check_rows(list(rows) if rows is not None else list(DEFAULT_ROWS))
    if docs is not None and not Path(docs).is_dir():
        raise ConfigError(f"--docs: folder {docs} does not exist")
    out = check_writable(out)
    check_kind(out, "uci-benchmark")
    plan = budget(quick)
    # the expensive rows first, interleaved over sets and splits, so that two workers finish together
    units = [Unit(s, k, r.name, plan, out) for r in chosen for k in splits for s in sets]
    from bayessparse.plots.benchmark import plot_loglik  # matplotlib: only when a report is drawn

    with exclusive(out, "run a UCI benchmark", kind="uci-benchmark"):
        fresh = sum(read_record(u) is None for u in units)
        start = time.perf_counter()
        records = run_jobs(fit_unit, units, jobs, progress=progress, desc="benchmark")
        seconds = time.perf_counter() - start
        whole = len(chosen) == len(DEFAULT_ROWS) and (sets, splits) == (
            (list(QUICK_SETS), list(QUICK_SPLITS)) if quick else (list(UCI_SETS), list(range(20))))
        timing = _timing(out, units, whole, fresh, seconds, jobs, quick)
        write_json(out / TIMING, timing)
        summary, pooled, diverged = summarise(records)
        targets = [out] + ([Path(docs)] if docs is not None else [])
        written = []
        section = section_id(sets)
        for target in targets:
            figure = f"figures/{section}_loglik.svg"
            plot_loglik({s: {r: v["loglik"][:2] for r, v in summary[s].items()} for s in summary},
                        [(r.name, r.label) for r in chosen], {s: (p[2], p[3]) for s, p in PUBLISHED.items()},
                        target / figure)
            text = report_text(section, summary, pooled, diverged, [r.name for r in chosen], splits, plan, timing,
                               command, figure)
            path = out / REPORT if target == out else target / "results.md"
            write_text(path, text) if target == out else write_section(path, section, text)
            written.append(str(path))
    return {"units": len(units), "trained": fresh, "seconds": seconds, "report": written, "timing": timing}
