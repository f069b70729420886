"""Small datasets shipped inside the scikit-learn wheel: digits, breast cancer, wine, diabetes (no download).

References (the UCI Machine Learning Repository copies that scikit-learn bundles):

- digits: E. Alpaydin and C. Kaynak (1998), *Optical Recognition of Handwritten Digits*; 1,797 8x8 images, 10 classes.
- breast_cancer: W. N. Street, W. H. Wolberg and O. L. Mangasarian (1993), *Nuclear feature extraction for
  breast tumor diagnosis* (Breast Cancer Wisconsin, Diagnostic); 569 examples, 30 features, 2 classes.
- wine: M. Forina et al. (1991), *PARVUS* (Wine recognition); 178 examples, 13 features, 3 classes.
- diabetes (regression): B. Efron, T. Hastie, I. Johnstone and R. Tibshirani (2004), *Least angle
  regression*; 442 patients, 10 baseline features, target a measure of disease progression one year later.

Each is split 60 / 20 / 20 into train / val / test, stratified and seeded by ``data_seed``, and standardised
with statistics of the training split only: digits with one scalar mean and std (after scaling the 0..16
pixel counts to [0, 1]), the tabular sets per feature. The regression set is stratified by the quintile
of its target and its target is standardised too (training mean and std): RMSE and NLL are in units of
the training targets' standard deviation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bayessparse.data.bundle import DataBundle, regression_dataset, tensor_dataset
from bayessparse.tasks import REGRESSION
from bayessparse.data.noise import check_label_noise, symmetric_label_noise
from bayessparse.data.splits import Stream, check_data_seed, reject_n_samples, rng_for, train_val_test_indices
from bayessparse.errors import ConfigError

if TYPE_CHECKING:
    from sklearn.utils import Bunch


def load_digits(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """scikit-learn digits as ``(N, 1, 8, 8)`` float32 images (``root`` is unused; ``n_samples`` is rejected)."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = (data.images / 16.0)[:, None, :, :]
    return _split_standardise("digits", x, data, None, data_seed, label_noise, n_samples)


def load_breast_cancer(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """Breast Cancer Wisconsin (Diagnostic) as ``(N, 30)`` float32 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer as sk_load

    data = sk_load()
    return _split_standardise("breast_cancer", data.data, data, 0, data_seed, label_noise, n_samples)


def load_wine(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """Wine recognition as ``(N, 13)`` float32 features, 3 classes."""
    from sklearn.datasets import load_wine as sk_load

    data = sk_load()
    return _split_standardise("wine", data.data, data, 0, data_seed, label_noise, n_samples)


def load_diabetes(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """Diabetes progression as ``(N, 10)`` float32 features and float32 targets ``(N,)``: a regression bundle.

    The raw features (``scaled=False``: scikit-learn's default scaling uses all 442 rows, test included)
    and the target are standardised with the training split's statistics. Label noise is refused.
    """
    from sklearn.datasets import load_diabetes as sk_load

    data_seed = check_data_seed(data_seed)
    if check_label_noise(label_noise) > 0:
        raise ConfigError(f"label_noise is not supported for the regression dataset 'diabetes', got {label_noise!r}")
    reject_n_samples("diabetes", n_samples)
    data = sk_load(scaled=False)
    x, y = data.data, data.target
    strata = np.searchsorted(np.quantile(y, [0.2, 0.4, 0.6, 0.8]), y, side="right")
    train, val, test = train_val_test_indices(strata, rng_for(data_seed, Stream.SPLIT))
    x, y = standardise(x, x[train], 0), standardise(y, y[train], None)
    return DataBundle(
        name="diabetes",
        train=regression_dataset(x[train], y[train]),
        val=regression_dataset(x[val], y[val]),
        test=regression_dataset(x[test], y[test]),
        num_classes=1,
        input_shape=tuple(x.shape[1:]),
        task=REGRESSION,
    )


def _split_standardise(
    name: str,
    x: np.ndarray,
    data: Bunch,
    stats_axis: int | None,
    data_seed: int,
    label_noise: float,
    n_samples: int | None,
) -> DataBundle:
    """Split ``x`` and ``data.target`` 60/20/20 (stratified), standardise with train statistics over
    ``stats_axis``, and add label noise to the training split."""
    data_seed = check_data_seed(data_seed)
    eps = check_label_noise(label_noise)
    reject_n_samples(name, n_samples)
    y, num_classes = data.target, len(data.target_names)
    train, val, test = train_val_test_indices(y, rng_for(data_seed, Stream.SPLIT))
    x = standardise(x, x[train], stats_axis)
    return DataBundle(
        name=name,
        train=tensor_dataset(x[train], symmetric_label_noise(y[train], eps, num_classes, data_seed)),
        val=tensor_dataset(x[val], y[val]),
        test=tensor_dataset(x[test], y[test]),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
    )


def standardise(x: np.ndarray, reference: np.ndarray, axis: int | None) -> np.ndarray:
    """``(x - mean) / std`` with the mean and std of ``reference`` over ``axis`` (constant features: std 1)."""
    mean = reference.mean(axis=axis)
    std = reference.std(axis=axis)
    return (x - mean) / np.where(std > 0, std, 1.0)
