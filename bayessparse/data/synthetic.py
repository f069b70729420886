"""Overlapping Gaussian classes with a known Bayes posterior ``p(y | x)``.

``K = 3`` classes with equal priors; class ``k`` has mean ``r (cos 2πk/K, sin 2πk/K)`` in ``d = 2`` and shared
covariance ``σ² I`` with ``r = 1.6``, ``σ = 1``, so the classes overlap and the Bayes classifier reaches
about 85 % accuracy. With equal priors and shared covariance the posterior is the softmax of the log densities,
``p(y = k | x) = softmax_k(-‖x - μ_k‖² / (2σ²))`` (linear discriminant analysis; Hastie, Tibshirani and
Friedman, *The Elements of Statistical Learning*, 2nd ed., 2009, sec. 4.3). Because the exact posterior is
known, calibration metrics can be compared with their true values.
"""

from __future__ import annotations

import numpy as np
import torch

from bayessparse.data.bundle import DataBundle, tensor_dataset
from bayessparse.data.noise import check_label_noise, noisy_label_posterior, symmetric_label_noise
from bayessparse.data.splits import Stream, check_data_seed, check_n_samples, rng_for, train_val_test_indices

NUM_CLASSES = 3
DIM = 2
RADIUS = 1.6
SIGMA = 1.0
DEFAULT_SAMPLES = 3000
MIN_SAMPLES = 30


def class_means() -> np.ndarray:
    """``(K, d)`` class means: the vertices of a regular ``K``-gon of radius ``RADIUS`` in the first two axes."""
    angles = 2.0 * np.pi * np.arange(NUM_CLASSES) / NUM_CLASSES
    means = np.zeros((NUM_CLASSES, DIM))
    means[:, 0], means[:, 1] = RADIUS * np.cos(angles), RADIUS * np.sin(angles)
    return means


def bayes_posterior(x: np.ndarray) -> torch.Tensor:
    """Exact ``p(y | x)`` as an ``(N, K)`` float64 tensor: softmax of the Gaussian log densities."""
    sq_dist = ((x[:, None, :] - class_means()[None, :, :]) ** 2).sum(-1)
    return torch.softmax(torch.from_numpy(-sq_dist / (2.0 * SIGMA**2)), dim=-1)


def load_synthetic(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """``n_samples`` (default 3,000) draws split 60 / 20 / 20, with ``true_probs`` per split (``root`` is unused).

    ``true_probs["train"]`` is the conditional of the label the training split carries: with label noise
    ``eps`` it is ``(1 - eps) p(y | x) + eps / K``; validation and test labels are clean, so theirs is ``p(y | x)``.
    """
    data_seed = check_data_seed(data_seed)
    eps = check_label_noise(label_noise)
    n = DEFAULT_SAMPLES if n_samples is None else check_n_samples("synthetic", n_samples, MIN_SAMPLES)
    rng = rng_for(data_seed, Stream.SAMPLE)
    y = rng.integers(NUM_CLASSES, size=n)
    # Posteriors are evaluated at the float32 inputs the model sees, in float64.
    x = (class_means()[y] + SIGMA * rng.standard_normal((n, DIM))).astype(np.float32).astype(np.float64)
    train, val, test = train_val_test_indices(y, rng_for(data_seed, Stream.SPLIT))
    return DataBundle(
        name="synthetic",
        train=tensor_dataset(x[train], symmetric_label_noise(y[train], eps, NUM_CLASSES, data_seed)),
        val=tensor_dataset(x[val], y[val]),
        test=tensor_dataset(x[test], y[test]),
        num_classes=NUM_CLASSES,
        input_shape=(DIM,),
        true_probs={
            "train": noisy_label_posterior(bayes_posterior(x[train]), eps),
            "val": bayes_posterior(x[val]),
            "test": bayes_posterior(x[test]),
        },
    )
