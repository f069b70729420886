"""The UCI regression benchmark on its published splits (Hernández-Lobato and Adams, ICML 2015).

Four of the benchmark's sets ship with the package (``bayessparse/data/uci/``, NOTICE.md names the sources),
exactly as the protocol distributes them: ``data.txt`` (features then target), ``index_features.txt``,
``index_target.txt``, ``n_splits.txt`` and the 0-based row indices of the 20 fixed splits
(``index_train_K.txt`` / ``index_test_K.txt``), the copy published with Gal and Ghahramani's dropout
experiments:

==============  ==========  =====  ========  ======  ==========================
name            folder      rows   features  splits  train / test (split 0)
==============  ==========  =====  ========  ======  ==========================
uci-concrete    concrete    1,030  8         20      927 / 103
uci-energy      energy      768    8         20      691 / 77
uci-wine        wine-q...   1,599  11        20      1,439 / 160
uci-yacht       yacht       308    6         20      277 / 31
==============  ==========  =====  ========  ======  ==========================

``data_seed`` is the split index ``K`` (``0 .. n_splits − 1``; anything else is a one-line error). The test
split is the published one; the validation split is a seeded 20 % of that split's training rows (drawn from
``data_seed`` alone), on which hyper-parameters are chosen, never on test; the network trains on the other
80 %. Features and target are standardised with the statistics of those training rows (a constant feature
keeps scale 1), and the bundle records the target's ``(mean, std)`` as ``target_scale``, so that scores are
reported in the **original units** of the target, as the published tables are: a Gaussian ``N(μ, σ²)`` on the
standardised scale is ``N(m + sμ, s²σ²)`` on the original one, whose log-density is the standardised one minus
``log s`` (:class:`~bayessparse.regressors.GaussianPredictions`).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from bayessparse.data.bundle import DataBundle, regression_dataset
from bayessparse.data.noise import check_label_noise
from bayessparse.data.splits import Stream, check_data_seed, reject_n_samples, rng_for
from bayessparse.errors import ConfigError
from bayessparse.tasks import REGRESSION

__all__ = ["UCI_SETS", "VAL_FRACTION", "load_uci", "read_split", "uci_folder"]

#: registry name -> folder under ``bayessparse/data/uci``
UCI_SETS = {"uci-concrete": "concrete", "uci-energy": "energy", "uci-wine": "wine-quality-red", "uci-yacht": "yacht"}
#: the fraction of a split's training rows held out for validation (the protocol's 80 / 20)
VAL_FRACTION = 0.2


def uci_folder(name: str) -> Path:
    """The package folder holding set ``name`` (a key of :data:`UCI_SETS`)."""
    if name not in UCI_SETS:
        raise ConfigError(f"unknown UCI set {name!r} (choose from: {', '.join(UCI_SETS)})")
    return Path(str(resources.files("bayessparse.data").joinpath("uci", UCI_SETS[name])))


def _ints(path: Path) -> np.ndarray:
    return np.atleast_1d(np.loadtxt(path, dtype=np.int64))


@functools.lru_cache(maxsize=None)
def _table(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x, y, n_splits)`` of set ``name``: the features and the target column as the files name them."""
    folder = uci_folder(name)
    data = np.loadtxt(folder / "data.txt", dtype=np.float64)
    features, target = _ints(folder / "index_features.txt"), _ints(folder / "index_target.txt")
    if len(target) != 1:
        raise ConfigError(f"{name}: index_target.txt must name one column, got {target.tolist()}")
    n_splits = int(_ints(folder / "n_splits.txt")[0])
    x, y = data[:, features], data[:, int(target[0])]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, n_splits


def read_split(name: str, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The published ``(train, test)`` row indices of split ``split`` of set ``name``."""
    _, _, n_splits = _table(name)
    split = check_data_seed(split)
    if split >= n_splits:
        raise ConfigError(f"data_seed must be a split index in 0..{n_splits - 1} for {name}, got {split}")
    folder = uci_folder(name)
    return _ints(folder / f"index_train_{split}.txt"), _ints(folder / f"index_test_{split}.txt")


def load_uci(name: str, *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0,
             n_samples: int | None = None) -> DataBundle:
    """Split ``data_seed`` of UCI set ``name`` as a regression bundle (module docstring)."""
    if check_label_noise(label_noise) > 0:
        raise ConfigError(f"label_noise is not supported for the regression dataset {name!r}, got {label_noise!r}")
    reject_n_samples(name, n_samples)
    x, y, _ = _table(name)
    train_rows, test = read_split(name, data_seed)
    order = rng_for(data_seed, Stream.SPLIT).permutation(len(train_rows))
    n_val = round(VAL_FRACTION * len(train_rows))
    val, train = np.sort(train_rows[order[:n_val]]), np.sort(train_rows[order[n_val:]])
    x_mean, x_std = x[train].mean(axis=0), x[train].std(axis=0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    return DataBundle(
        name=name,
        train=regression_dataset(xs[train], ys[train]),
        val=regression_dataset(xs[val], ys[val]),
        test=regression_dataset(xs[test], ys[test]),
        num_classes=1,
        input_shape=(x.shape[1],),
        task=REGRESSION,
        target_scale=(y_mean, y_std),
    )


#: the registry entries (:data:`bayessparse.data.DATASETS`)
LOADERS = {name: functools.partial(load_uci, name) for name in UCI_SETS}
