"""Toy-size runs of any command: ``BAYESSPARSE_SMOKE=1``.

With the environment variable ``BAYESSPARSE_SMOKE`` set to ``1``, every command runs its full
pipeline -- data, training, evaluation, tables, figures, run folders -- at toy size, so a setup (a
new machine, a config file, the README's command-line tour) is checked end to end in seconds:

* training lasts :data:`EPOCHS` epochs (networks, deep GPs, IMP rounds, ensemble phases);
* the generated data sets (``mnist1d``, ``synthetic``) have at most :data:`SAMPLES` examples;
* a command that repeats over seeds (``compare``, ``study``) keeps its first :data:`SEEDS`;
* ``bench`` measures 2 rounds of 2 steps, and an IMP sweep prunes 2 rounds.

Nothing else changes: the methods, sparsities, models and settings are the ones asked for, and
the resolved ``config.yaml`` of every run records the sizes it really trained with. The numbers
of a smoke run mean nothing; never report them.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

ENV = "BAYESSPARSE_SMOKE"
EPOCHS = 2
SAMPLES = 600  # mnist1d keeps 480 for training and validation, 120 for test
SEEDS = 2  # two, so that every interval over seeds still has a width

_T = TypeVar("_T")


def active() -> bool:
    """Whether ``BAYESSPARSE_SMOKE=1`` is set."""
    return os.environ.get(ENV, "") == "1"


def shrink_config(values: dict) -> dict:
    """A training config's fields (a merged mapping) at toy size; unchanged unless :func:`active`."""
    if not active():
        return values
    out = dict(values)
    epochs = min(int(out.get("epochs", EPOCHS)), EPOCHS)
    out["epochs"] = epochs
    out["warmup_epochs"] = min(int(out.get("warmup_epochs", 0)), epochs - 1)
    if out.get("data", "mnist1d") in ("mnist1d", "synthetic"):
        given = out.get("n_samples")
        out["n_samples"] = SAMPLES if given is None else min(int(given), SAMPLES)
    return out


def shrink_count(value: int) -> int:
    """A repetition count (benchmark rounds and steps, IMP rounds) at toy size: at most 2 when :func:`active`."""
    return min(value, 2) if active() else value


def shrink_seeds(seeds: Sequence[_T]) -> list[_T]:
    """The first :data:`SEEDS` of ``seeds`` when :func:`active`, else all of them."""
    return list(seeds[:SEEDS]) if active() else list(seeds)


__all__ = ["ENV", "EPOCHS", "SAMPLES", "SEEDS", "active", "shrink_config", "shrink_count", "shrink_seeds"]
