"""Symmetric (uniform) label noise on the training split.

A fraction ``eps`` of the training examples, chosen at random, gets a label drawn uniformly from
**all** ``K`` classes, so about ``eps / K`` of them keep their label by chance and the fraction of
labels that actually change is ``eps (K - 1) / K``. This is the "symmetric noise" model of
Zhang et al. (2017), *Understanding deep learning requires rethinking generalization*, and
Patrini et al. (2017), *Making deep neural networks robust to label noise: a loss correction approach*.
Validation and test labels are never corrupted.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from bayessparse.data.splits import Stream, rng_for
from bayessparse.errors import ConfigError


def check_label_noise(label_noise: object) -> float:
    """Return ``label_noise`` as a float, or raise :class:`ConfigError` unless it lies in ``[0, 1)``."""
    if isinstance(label_noise, bool) or not isinstance(label_noise, numbers.Real) or not 0.0 <= label_noise < 1.0:
        raise ConfigError(f"label_noise must be a number in [0, 1), got {label_noise!r}")
    return float(label_noise)


def symmetric_label_noise(labels: np.ndarray, eps: float, num_classes: int, data_seed: int) -> np.ndarray:
    """Copy of ``labels`` with ``round(eps * N)`` random entries replaced by uniform draws from ``K`` classes.

    Seeded by ``data_seed`` on its own stream, so the noise does not depend on (or alter) the splits.
    """
    if eps == 0.0:
        return labels.copy()
    rng = rng_for(data_seed, Stream.LABEL_NOISE)
    n_replaced = round(eps * len(labels))
    replaced = rng.choice(len(labels), size=n_replaced, replace=False)
    noisy = labels.copy()
    noisy[replaced] = rng.integers(num_classes, size=n_replaced)
    return noisy


def noisy_label_posterior(probs: torch.Tensor, eps: float) -> torch.Tensor:
    """Conditional of the noisy label: ``p(ỹ | x) = (1 - eps) p(y | x) + eps / K``.

    For an example drawn at random from the training split each example is relabelled with probability
    ``eps`` (exactly ``round(eps N)`` of ``N`` are), and a relabelled one is uniform over ``K`` classes.
    With a deterministic label ``y*(x)`` (``p(y | x)`` one-hot) this reduces to the familiar
    ``(1 - eps) 1[ỹ = y*(x)] + eps / K``; here ``y`` is itself random given ``x``, hence the mixture.
    """
    return (1.0 - eps) * probs + eps / probs.shape[-1]
