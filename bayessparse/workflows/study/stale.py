"""Cached cells trained by other code: the training version each finished unit recorded, against the current one.

A cell's folder is named after its configuration only (:func:`bayessparse.workflows.study.cells.folder_for`), so a
unit trained before a change of the training numerics would be found again and reused, and a report
could mix runs of different code. Every finished unit records :data:`bayessparse.version.TRAINING_VERSION`:
a run and a deep GP in ``metrics.json``, an ensemble in each member's ``metrics.json``, an IMP sweep in
each round of ``imp.json``. A unit is *stale* when one of its finished parts recorded another version, or
none (it was made before versions were recorded): resuming a partly trained unit would mix versions too.
A unit interrupted before any of its parts finished has recorded nothing and is resumed as before.

The study scans its cells in its own process, under its lock, before any training (:func:`scan`). By
default it removes a stale unit (:func:`remove_unit`: every file of the folder, its cached scores
``study.json`` included) and trains it like a new cell; with ``bayessparse study --reuse-stale`` it keeps
it, and the report says near its top how many cells another version trained and which versions.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bayessparse import version
from bayessparse.errors import ConfigError, WriteError
from bayessparse.folders import LOCK, exclusive
from bayessparse.workflows.study.cells import Cell

#: what a finished part that recorded no training version shows in messages and the report
NONE_RECORDED = "none recorded"

_MISSING = object()


@dataclass(frozen=True)
class Stale:
    """A cell whose unit has finished parts of other training versions: ``versions``, ``None`` for none recorded."""

    folder: str
    versions: tuple[Any, ...]


def _record(path: Path) -> Any:
    """The JSON in ``path``; ``_MISSING`` when there is no such file; ``None`` when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _MISSING
    except (OSError, ValueError):
        return None


def _version_of(record: Any) -> Any:
    return record.get("training_version") if isinstance(record, dict) else None


def recorded_versions(cell: Cell) -> list[Any]:
    """The training version each finished part of the cell's unit recorded (``None``: none); for an unfinished
    run or deep GP, the version its checkpoint recorded; ``[]`` when there is nothing to go by."""
    from bayessparse.workflows.ensembles import member_dir
    from bayessparse.workflows.imp import RESULTS as IMP_RESULTS
    from bayessparse.train import METRICS

    folder = Path(cell.folder)
    if cell.kind == "imp":
        rounds = _record(folder / IMP_RESULTS)
        if rounds is _MISSING:
            return []
        return [_version_of(r) for r in rounds] if isinstance(rounds, list) else [None]
    if cell.kind in ("run", "deep-gp"):
        finished = [_version_of(r) for r in map(_record, [folder / METRICS]) if r is not _MISSING]
        return finished or _interrupted_version(folder)
    paths = [member_dir(folder, i) / METRICS for i in range(cell.members)]  # an ensemble: its members' folders
    return [_version_of(r) for r in map(_record, paths) if r is not _MISSING]


def _interrupted_version(folder: Path) -> list[Any]:
    """The training version an interrupted run's checkpoint recorded, which it would be resumed with; ``[]``
    when there is no checkpoint, or one written before versions were recorded (resumed as before)."""
    from bayessparse.files import load_torch
    from bayessparse.train import CHECKPOINT

    path = folder / CHECKPOINT
    if not path.is_file():
        return []
    try:
        state = load_torch(path)
    except Exception:  # an unreadable checkpoint is the resume's to report, in its own words
        return []
    return [state["training_version"]] if isinstance(state, dict) and "training_version" in state else []


def is_current(recorded: Any, current: int | None = None) -> bool:
    """Whether a recorded version is the current one (an integer equal to it; a bool or string is not)."""
    current = version.TRAINING_VERSION if current is None else current
    return type(recorded) is int and recorded == current


def _order(v: Any) -> tuple:
    return (0, v, "") if type(v) is int else (1, 0, repr(v))


def distinct(versions: Sequence[Any]) -> list[Any]:
    """The distinct versions, integers in order first, then ``None`` and anything else."""
    seen: list[Any] = []
    for v in versions:
        if not any(type(v) is type(s) and v == s for s in seen):
            seen.append(v)
    return sorted(seen, key=_order)


def scan(cells: Sequence[Cell]) -> list[Stale]:
    """The cells whose units are stale (module docstring), in the cells' order."""
    out = []
    for cell in cells:
        other = [v for v in recorded_versions(cell) if not is_current(v)]
        if other:
            out.append(Stale(cell.folder, tuple(distinct(other))))
    return out


def show(v: Any) -> str:
    """A recorded version as the messages and the report name it."""
    return NONE_RECORDED if v is None else f"version {v}" if type(v) is int else f"version {v!r}"


def describe(stale: Sequence[Stale]) -> str:
    """``"version 0 (2 cells), none recorded (1 cell)"``: the versions found and how many cells have each."""
    counts = Counter(v if type(v) is int or v is None else repr(v) for s in stale for v in s.versions)
    parts = []
    for v in distinct(list(counts)):
        n = counts[v]
        parts.append(f"{show(v)} ({n} cell{'s' if n != 1 else ''})")
    return ", ".join(parts)


def remove_unit(folder: str | Path, root: str | Path) -> None:
    """Remove every file and folder in ``folder`` (a stale unit) but its lock file, holding that lock.

    ``folder`` must lie inside ``root`` (the study's runs folder) and not be a link; a folder that another
    process is writing is refused with a one-line :class:`ConfigError`, as is anything else, untouched."""
    folder, root = Path(folder), Path(root)
    inside = folder.resolve().is_relative_to(root.resolve()) and folder.resolve() != root.resolve()
    if folder.is_symlink():
        raise ConfigError(f"study: will not remove the stale cell {folder}: it is a link")
    if not inside:
        raise ConfigError(f"study: will not remove {folder}: not a folder of the study's runs ({root})")
    with exclusive(folder, "retrain the stale cell"):
        for entry in sorted(folder.iterdir()):
            if entry.name == LOCK:
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                raise WriteError(exc.errno, exc.strerror, str(exc.filename or entry)) from None
