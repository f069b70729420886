"""Seeded, stratified index splits and the checks of the arguments that size and seed them.

All randomness in the data package comes from ``numpy.random.default_rng([data_seed, stream])``
with one :class:`Stream` per purpose, so that, for example, switching label noise on never changes
which examples land in the validation set, and the global NumPy / Python RNGs are never touched.
"""

from __future__ import annotations

import numbers
from enum import IntEnum

import numpy as np

from bayessparse.errors import ConfigError


class Stream(IntEnum):
    """Independent random streams derived from one ``data_seed``."""

    SPLIT = 0
    LABEL_NOISE = 1
    SAMPLE = 2


def rng_for(data_seed: int, stream: Stream) -> np.random.Generator:
    """The generator of ``stream`` for ``data_seed`` (a ``SeedSequence`` over both numbers)."""
    return np.random.default_rng([data_seed, int(stream)])


def check_data_seed(data_seed: object) -> int:
    """Return ``data_seed`` as an int, or raise :class:`ConfigError` unless it is a non-negative integer."""
    if isinstance(data_seed, bool) or not isinstance(data_seed, numbers.Integral) or data_seed < 0:
        raise ConfigError(f"data_seed must be a non-negative integer, got {data_seed!r}")
    return int(data_seed)


def check_n_samples(dataset: str, n_samples: object, minimum: int) -> int:
    """Return ``n_samples`` as an int, or raise :class:`ConfigError` unless it is an integer >= ``minimum``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < minimum:
        raise ConfigError(f"n_samples must be an integer >= {minimum} for dataset '{dataset}', got {n_samples!r}")
    return int(n_samples)


def reject_n_samples(dataset: str, n_samples: int | None) -> None:
    """Raise :class:`ConfigError` if ``n_samples`` is given for a dataset of fixed size."""
    if n_samples is not None:
        raise ConfigError(f"n_samples is not supported for dataset '{dataset}'")


def stratified_holdout(labels: np.ndarray, n_holdout: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(kept, held_out)`` with exactly ``n_holdout`` held out.

    Each class contributes in proportion to its frequency; the fractional parts of the per-class quotas
    go to the classes with the largest remainders (ties broken at random), so sizes are exact.
    Both index arrays are sorted.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_holdout * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    by_remainder = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[by_remainder[: n_holdout - take.sum()]] += 1
    held = np.zeros(len(labels), dtype=bool)
    for cls, k in zip(classes, take):
        held[rng.permutation(np.flatnonzero(labels == cls))[:k]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def train_val_test_indices(
    labels: np.ndarray, rng: np.random.Generator, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified ``(train, val, test)`` index arrays (sorted) with the given fractions of ``len(labels)``."""
    n = len(labels)
    rest, test = stratified_holdout(labels, round(test_fraction * n), rng)
    train, val = stratified_holdout(labels[rest], round(val_fraction * n), rng)
    return rest[train], rest[val], test
