"""Output folders: each has one writer at a time and one kind, and is checked before any work.

Every command that writes a folder (``train``, ``ensemble``, ``imp``, ``study``, ``compare``,
``evaluate``) goes through three steps:

1. :func:`check_writable` -- before any work: the path is not a file, does not lie under a file,
   and its nearest existing folder is writable (a read-only disk is caught here too);
2. :func:`check_kind` -- before any work: the folder does not hold another kind of output (an IMP
   sweep is not a run folder, an EDST ensemble cannot be resumed as a plain run);
3. :func:`exclusive` -- for the lifetime of the writing: an exclusive ``flock`` on
   ``FOLDER/.bayessparse.lock`` (a second writer is refused with a one-line error), the kind check
   again, the kind marker ``FOLDER/.bayessparse-kind`` written, and the temporary files that a
   killed writer left behind (:data:`bayessparse.files.TEMPORARY`) removed.

Folders written before kind markers existed are recognised by their files (:func:`folder_kind`).

A command that reads one folder and writes a file named by a flag (``export --out``, ``evaluate
--arviz``) refuses a file that is one of an output folder's own (:func:`check_not_own_file`: its
lock, its marker, a run's :data:`RUN_FILES`), and holds the lock of the folder it writes into
while it writes there (:func:`writing_into`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from bayessparse.errors import ConfigError, WriteError
from bayessparse.files import TEMPORARY, write_text

#: The lock file a writer holds in its output folder (kept; the lock is the open file's, not the name's).
LOCK = ".bayessparse.lock"
#: The file naming what a folder holds (one of :data:`KINDS`).
MARKER = ".bayessparse-kind"
#: Each kind of output folder, as a user reads it.
KINDS = {
    "run": "a training run",
    "ensemble": "an ensemble",
    "imp": "an IMP sweep",
    "study": "a study",
    "compare": "a comparison",
    "deep-gp": "a deep GP baseline run",
    "uci-benchmark": "a UCI benchmark",
}
#: The files of a run folder: ``train`` writes the first four, ``evaluate`` the rest (the names of
#: ``bayessparse.train`` and ``bayessparse.workflows.evaluate``). No output flag may name one of them.
RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.json", "reliability.png",
             "eval.json", "reliability_temperature.png", "ood_scores.png", "corruptions.png")
#: Files that identify a folder written before markers existed, most specific first.
_SIGNATURES = (
    ("ensemble", ("ensemble.yaml",)),
    ("imp", ("imp_state.pt", "imp.json")),
    ("study", ("results.md",)),
    ("compare", ("table.md", "results.json")),
    ("run", ("checkpoint.pt", "metrics.json", "config.yaml")),
)


def check_writable(folder: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be created or written; returns it as a ``Path``.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {folder}: {existing} is not writable")
    return folder


def folder_kind(folder: str | Path) -> str | None:
    """What ``folder`` holds: its marker, else recognised by its files; ``None`` if missing or empty."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        try:
            kind = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            kind = ""
        if kind in KINDS:
            return kind
    for kind, names in _SIGNATURES:
        if any((folder / name).exists() for name in names):
            return kind
    return None


def check_kind(folder: str | Path, kind: str) -> None:
    """Refuse ``folder`` if it holds another kind of output than ``kind`` (see :data:`KINDS`)."""
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise ConfigError(f"{folder} holds {KINDS[found]}, not {KINDS[kind]}; choose another folder")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under ``folder``; returns them.

    Only the holder of the folder's lock may call this: another writer's temporary file is live.
    """
    stale = [p for p in folder.rglob(".*.tmp") if TEMPORARY.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str, kind: str | None = None) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if missing) for the block; yields the folder.

    An exclusive ``flock`` on ``folder/.bayessparse.lock``, released when the block ends or the
    process dies. A second writer -- another process, or another open in this one -- is refused at
    once with a one-line :class:`ConfigError` (``what`` names the refused work, e.g. ``"train"``).
    Once held, the temporary files of killed writers are removed and, with ``kind``, the folder's
    kind is checked and marked.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK, "a")
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror, str(folder)) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"cannot {what} into {folder}: another process is writing it") from None
        remove_stale_temporaries(folder)
        if kind is not None:
            check_kind(folder, kind)
            if not (folder / MARKER).is_file():
                write_text(folder / MARKER, kind + "\n")
        yield folder


def mark(folder: str | Path, kind: str) -> None:
    """Write the kind marker of a folder whose writer already holds an enclosing folder's lock."""
    folder = Path(folder)
    check_kind(folder, kind)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / MARKER, kind + "\n")


def _same_folder(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def own_file(path: str | Path, folder: str | Path | None = None) -> Path | None:
    """The output-folder file that writing ``path`` would replace, or ``None``.

    A folder's own files are its :data:`LOCK` and :data:`MARKER` (any folder), the files that
    identify its kind (:func:`folder_kind`) and, where the folder is ``folder`` (the run a command
    reads) or holds a run, the :data:`RUN_FILES`. Both the path as written (its folder resolved:
    ``..``, relative parts, symlinked folders) and the path with every symlink resolved are
    compared, and a name that differs only in case counts where the file system says it is the
    same file.
    """
    path = Path(path)
    signatures = dict(_SIGNATURES)
    for target in (path.parent.resolve() / path.name, path.resolve()):
        parent = target.parent
        kind = folder_kind(parent)
        names = {LOCK, MARKER, *signatures.get(kind, ())}
        if kind == "run" or (folder is not None and _same_folder(parent, Path(folder))):
            names.update(RUN_FILES)
        for name in names:
            if target.name == name:
                return parent / name
            if target.name.casefold() == name.casefold() and target.exists() and (parent / name).exists():
                try:
                    if os.path.samefile(target, parent / name):
                        return parent / name
                except OSError:
                    pass
    return None


def check_not_own_file(path: str | Path, flag: str, folder: str | Path | None = None) -> None:
    """Refuse an output file ``path`` (given by ``flag``) that is an output folder's own file (:func:`own_file`)."""
    found = own_file(path, folder)
    if found is not None:
        raise ConfigError(f"{flag} {path} would overwrite {found.name} of {found.parent}; name another file")


@contextlib.contextmanager
def writing_into(path: str | Path, what: str, held: str | Path | None = None) -> Iterator[None]:
    """Around writing the file ``path``: hold the lock of its folder (:func:`exclusive`, no kind)
    if that folder is a bayessparse output folder; nothing for a plain folder, nor for ``held``
    (a folder whose lock the caller already holds)."""
    folder = Path(path).parent
    if folder_kind(folder) is None or (held is not None and _same_folder(folder, Path(held))):
        yield
        return
    with exclusive(folder, what):
        yield
