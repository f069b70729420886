"""Reading a checkpoint back: safely, checked for its entries, and only into the run it belongs to.

Shared by every kind of run folder (training runs, deep GP baselines). Loading itself is
:func:`bayessparse.files.load_torch` (``weights_only=True``: no code runs); these checks turn a
foreign or damaged file into one :class:`~bayessparse.errors.ConfigError` line instead of a
``KeyError`` or a size-mismatch traceback.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bayessparse.errors import ConfigError
from bayessparse.files import load_torch
from bayessparse.rng import global_rng_state, set_global_rng_state
from bayessparse.version import TRAINING_VERSION

__all__ = ["fitting", "load_progress", "progress_state", "read_checkpoint", "same_config"]


def progress_state(run: Any) -> dict[str, Any]:
    """Where a run (network or deep GP) stands: its generator, the global generators, ``epoch``, ``step``,
    ``train_seconds``, ``history`` and the ``training_version`` training it -- the checkpoint entries every kind
    of run shares."""
    return {"generator": run.generator.get_state(), **global_rng_state(), "epoch": run.epoch, "step": run.step,
            "train_seconds": run.train_seconds, "history": run.history, "training_version": TRAINING_VERSION}


def check_resumable(state: Mapping[str, Any], path: Path) -> None:
    """A checkpoint to continue training from was written by this training version: a run continued by other
    training numerics would be neither of the two. (A checkpoint written before versions were recorded has
    none and is continued; a finished run of another version still evaluates.)"""
    saved = state.get("training_version", TRAINING_VERSION)
    if saved != TRAINING_VERSION:
        raise ConfigError(f"{path} was written by training version {saved!r}, this code trains version "
                          f"{TRAINING_VERSION}: continuing it would mix two trainings; train it again in a new folder")


def load_progress(run: Any, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`progress_state`."""
    run.generator.set_state(state["generator"])
    set_global_rng_state(state)
    run.epoch, run.step = state["epoch"], state["step"]
    run.train_seconds, run.history = state["train_seconds"], state["history"]


def read_checkpoint(path: Path, keys: Sequence[str], what: str) -> dict[str, Any]:
    """The checkpoint at ``path``: a mapping holding every entry of ``keys`` and a ``config`` mapping,
    else ``"PATH is not a bayessparse WHAT checkpoint"``."""
    state = load_torch(path)
    if not isinstance(state, dict) or any(key not in state for key in keys) \
            or not isinstance(state.get("config"), dict):
        raise ConfigError(f"{path} is not a bayessparse {what} checkpoint")
    return state


@contextlib.contextmanager
def fitting(path: Path) -> Iterator[None]:
    """Around loading the checkpoint's tensors: ones that do not fit the rebuilt objects are a one-line error."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} does not fit the run it belongs to ({reason})") from None


def same_config(current: Mapping[str, Any], saved: Mapping[str, Any], defaults: Mapping[str, Any], checkpoint: Path,
                ignore: Sequence[str] = ()) -> None:
    """Every field of ``current`` equals the checkpoint's (a field saved before it existed has its default)."""
    for name, value in current.items():
        was = saved.get(name, defaults[name])
        if name not in ignore and was != value:
            raise ConfigError(f"{name}={value!r} differs from the run in {checkpoint} ({was!r})")
