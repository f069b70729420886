"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer puts the bytes in a temporary file in the target's folder (named by
:data:`TEMPORARY`), flushes it to the disk (``fsync``), renames it over the target (``os.replace``
is atomic on POSIX and Windows) and flushes the folder, so that the rename survives a power loss.
An interrupted writer removes its temporary file; one killed outright (SIGKILL) cannot, and the
next writer of the folder does (:func:`bayessparse.folders.exclusive`).

A write that fails (a full or read-only disk, a file too large) raises
:class:`~bayessparse.errors.WriteError` naming the target, not the temporary file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from bayessparse.errors import ConfigError, WriteError

# The process umask, read once at import (os.umask can only be read by setting it): mkstemp
# creates files 0600, and a result file should get the permissions an ordinary open() gives.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


#: The name of a temporary file of :func:`write_atomic`: ``.TARGET.XXXXXXXX.tmp`` (``tempfile.mkstemp``).
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` (mode ``0666 & ~umask``), durably."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically; serialised in memory first, so that a full disk is an ``OSError``
    (torch's own file writer reports it as an obscure ``RuntimeError``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_torch(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_torch`; an unreadable file is a ConfigError.

    Checkpoints hold only tensors, numbers, strings and containers of them, and are loaded with
    ``torch.load(..., weights_only=True)``: a file that needs anything else (a pickled object, which
    could run its author's code while loading) is refused, never unpickled. Loading is silent: the
    warnings torch's safe unpickler prints about a file it then refuses (e.g. "Detected pickle
    protocol 4" for a plain ``pickle.dump``) are suppressed, so that the refusal is the only output.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # no object to refuse: a corrupt or foreign file
            raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
        raise ConfigError(f"refusing to load {path}: it holds Python objects beyond tensors and plain data "
                          "(only bayessparse's own checkpoints load; an older one must be re-created)") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
