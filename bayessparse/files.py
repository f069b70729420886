"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer puts the bytes in a temporary file in the target's folder and renames it over the
target; ``os.replace`` is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bayessparse.errors import ConfigError

# The process umask, read once at import (os.umask can only be read by setting it): mkstemp
# creates files 0600, and a result file should get the permissions an ordinary open() gives.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` (mode ``0666 & ~umask``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 150) -> None:
    """Render a matplotlib ``Figure`` (Agg, no pyplot state) to ``path``, creating the folder if needed.

    The format follows the suffix: ``.svg`` (text; what the committed docs use, with fixed metadata so
    that the same figure gives the same file) or PNG for anything else."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    if path.suffix == ".svg":
        options = {"format": "svg", "metadata": {"Date": None}}
        with _fixed_svg_ids():
            write_atomic(path, lambda tmp: fig.savefig(tmp, **options))
    else:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


@contextlib.contextmanager
def _fixed_svg_ids():
    """matplotlib names SVG elements from a random salt unless ``svg.hashsalt`` is set."""
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "bayessparse"}):
        yield


#: The lock file a writer holds in its output folder (kept; the lock is the open file's, not the name's).
LOCK = ".bayessparse.lock"


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if missing) for the block; yields the folder.

    An exclusive ``flock`` on ``folder/.bayessparse.lock``, released when the block ends or the
    process dies. A second writer -- another process, or another open in this one -- is refused at
    once with a one-line :class:`ConfigError` (``what`` names the refused work, e.g. ``"train"``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"cannot {what} into {folder}: another process is writing it") from None
        yield folder


def save_torch(path: str | Path, obj: Any) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_torch`; an unreadable file is a ConfigError.

    Checkpoints hold only tensors, numbers, strings and containers of them, and are loaded with
    ``torch.load(..., weights_only=True)``: a file that needs anything else (a pickled object, which
    could run its author's code while loading) is refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # no object to refuse: a corrupt or foreign file
            raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
        raise ConfigError(f"refusing to load {path}: it holds Python objects beyond tensors and plain data "
                          "(only bayessparse's own checkpoints load; an older one must be re-created)") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
