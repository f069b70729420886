"""MNIST-1D, generated locally with the ``mnist1d`` package (never its download path).

Reference: S. Greydanus and D. Kobak (2024), *Scaling down deep learning with MNIST-1D*, ICML;
https://github.com/greydanus/mnist1d.

The package's ``make_dataset`` with its default arguments (5,000 sequences of length 40, generation
seed 42, 80 / 20 train / test split) reproduces the published dataset. Its values are already
standardised over the whole generated set (global mean 0, std 1) and are kept as returned. The test
split is the package's; ``data_seed`` only chooses the stratified 10 % of its training part that
becomes the validation split (and the label noise). Generated arrays are cached in
``$BAYESSPARSE_CACHE`` (default ``~/.cache/bayessparse``), keyed on a hash of the generation
arguments and the package version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from bayessparse.data.bundle import DataBundle, tensor_dataset
from bayessparse.files import write_atomic
from bayessparse.data.noise import check_label_noise, symmetric_label_noise
from bayessparse.data.splits import Stream, check_data_seed, check_n_samples, rng_for, stratified_holdout

NUM_CLASSES = 10
VAL_FRACTION = 0.1
MIN_SAMPLES = 200
_ARRAYS = ("x", "y", "x_test", "y_test")


def load_mnist1d(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """MNIST-1D as ``TensorDataset``s of ``(N, 40)`` float32 sequences and int64 labels (``root`` is unused).

    ``n_samples`` replaces the package's ``num_samples`` (default 5,000; rounded down to a multiple of 10
    by the generator): 80 % train + val, 20 % test.
    """
    data_seed = check_data_seed(data_seed)
    eps = check_label_noise(label_noise)
    args = generation_args(n_samples)
    arrays = cached_arrays(args)
    x, y = arrays["x"], arrays["y"]
    train, val = stratified_holdout(y, round(VAL_FRACTION * len(y)), rng_for(data_seed, Stream.SPLIT))
    return DataBundle(
        name="mnist1d",
        train=tensor_dataset(x[train], symmetric_label_noise(y[train], eps, NUM_CLASSES, data_seed)),
        val=tensor_dataset(x[val], y[val]),
        test=tensor_dataset(arrays["x_test"], arrays["y_test"]),
        num_classes=NUM_CLASSES,
        input_shape=(args["final_seq_length"],),
    )


def generation_args(n_samples: int | None) -> dict:
    """The package's default generation arguments, with ``num_samples`` replaced by ``n_samples`` if given."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    if n_samples is not None:
        args["num_samples"] = check_n_samples("mnist1d", n_samples, MIN_SAMPLES)
    return args


def cache_path(args: dict) -> Path:
    """``$BAYESSPARSE_CACHE/mnist1d-<hash>.npz``; the hash covers the arguments and the package version."""
    key = {k: v for k, v in args.items() if k != "url"} | {"version": importlib.metadata.version("mnist1d")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = Path(os.environ.get("BAYESSPARSE_CACHE", Path.home() / ".cache" / "bayessparse"))
    return cache_dir / f"mnist1d-{digest}.npz"


def cached_arrays(args: dict) -> dict[str, np.ndarray]:
    """The generated arrays (``x`` float32, ``y`` int64, ``x_test``, ``y_test``), from the cache when present.

    A fresh generation is written atomically (temporary file, then ``os.replace``); if the cache folder
    is not writable the data is still returned, with a warning. A cache file that cannot be read
    (truncated, not an ``.npz``, pickled objects) or does not hold the four arrays with the expected
    dtypes and shapes is reported in one warning and regenerated in place.
    """
    path = cache_path(args)
    if path.is_file():
        arrays = _read_cache(path, args)
        if arrays is not None:
            return arrays
        warnings.warn(f"MNIST-1D cache {path} is corrupt or incomplete; regenerating it", stacklevel=2)
    arrays = generate(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save_npz(tmp, arrays))
    except OSError as err:
        warnings.warn(f"could not cache MNIST-1D at {path}: {err}", stacklevel=2)
    return arrays


def _read_cache(path: Path, args: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` if the file is unreadable or its arrays are not what ``generate`` writes."""
    try:
        with path.open("rb") as handle:  # our handle: np.load leaves its own open when the zip is unreadable
            cached = np.load(handle, allow_pickle=False)
            if isinstance(cached, np.ndarray):  # a single .npy array
                return None
            with cached:
                arrays = {name: cached[name] for name in _ARRAYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    length = args["final_seq_length"]
    for x_name, y_name in (("x", "y"), ("x_test", "y_test")):
        x, y = arrays[x_name], arrays[y_name]
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != length:
            return None
        if y.dtype != np.int64 or y.shape != (x.shape[0],) or y.min() < 0 or y.max() >= NUM_CLASSES:
            return None
        if not np.isfinite(x).all():
            return None
    return arrays


def generate(args: dict) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset``, leaving NumPy's and Python's global RNG states as they were.

    ``make_dataset`` reseeds both global generators (``random.seed``, ``np.random.seed``) with ``args["seed"]``.
    """
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:  # a handle: np.savez would append ".npz" to a path
        np.savez(handle, **arrays)
