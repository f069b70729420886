"""Distribution shift: parameterised input corruptions with severities 1..5, and CIFAR-10-C folders.

In the spirit of ImageNet-C / CIFAR-10-C (Hendrycks and Dietterich, ICLR 2019, *Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations*): every corruption has five
severity levels, each a fixed parameter from the tables below, and the set of corruptions fits
the kind of input (:func:`input_kind`):

============  ========================  =====================================================
kind          shape of one example      corruptions
============  ========================  =====================================================
``signal``    ``(L,)`` or ``(C, L)``    gaussian_noise, scaling, translation, blur
``image``     ``(C, H, W)``             gaussian_noise, contrast, translation, blur
``tabular``   ``(F,)``                  gaussian_noise, feature_scaling, feature_shift
============  ========================  =====================================================

Definitions (``x`` one example; statistics are those of the whole set being corrupted, per
channel for signals / images and per feature for tabular data; ``v`` is the severity parameter):

* ``gaussian_noise``: ``x + v · std · ε``, ``ε ~ N(0, 1)`` per entry.
* ``scaling`` / ``contrast``: ``m + v · (x − m)`` with ``m`` the example's own per-channel mean:
  the amplitude (contrast) shrinks to the fraction ``v``.
* ``translation``: circular shift by ``v · length`` positions, the direction drawn per example
  (signals: left or right; images: up, down, left or right); a fractional shift interpolates
  linearly between the two neighbouring whole shifts (so severities stay distinct on 8x8 images:
  0.24, 0.48, 0.72, 1 and 1.5 pixels; 1, 2, 4, 6 and 10 steps on MNIST-1D's length 40).
* ``blur``: convolution with a normalised Gaussian kernel of standard deviation ``v · length``
  (separable on images), mirror padding ``(c b | a b c | b a)``, radius ``round(3σ)`` (at most
  ``length − 1``): ``scipy.ndimage.gaussian_filter1d(x, σ, mode="mirror", truncate=3)``.
* ``feature_scaling``: ``μ_f + exp(±v) (x_f − μ_f)``, the sign drawn per feature.
* ``feature_shift``: ``x_f ± v · std_f``, the sign drawn per feature.

Randomness (noise, directions, signs) comes from ``numpy.random.default_rng([seed, id])`` with one
fixed ``id`` per corruption and is shared by the five severities, which only change the magnitude:
a corrupted set is deterministic given ``seed`` and the severities of a corruption are nested
(severity 5 moves every input in the same direction as severity 1, further).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from bayessparse.batches import batches
from bayessparse.errors import ConfigError

__all__ = [
    "CORRUPTIONS",
    "INPUT_KINDS",
    "SEVERITIES",
    "SEVERITY_PARAMS",
    "corrupt",
    "corrupt_dataset",
    "corruption_names",
    "corruption_suite",
    "folder_corruption_suite",
    "input_kind",
    "materialize",
]

SEVERITIES = (1, 2, 3, 4, 5)

#: dataset name -> kind of input. Unknown datasets are classified by the rank of ``input_shape``.
INPUT_KINDS = {
    "mnist1d": "signal",
    "digits": "image",
    "cifar10": "image",
    "cifar100": "image",
    "breast_cancer": "tabular",
    "wine": "tabular",
    "synthetic": "tabular",
}

#: kind -> the corruptions that fit it, in report order.
CORRUPTIONS = {
    "signal": ("gaussian_noise", "scaling", "translation", "blur"),
    "image": ("gaussian_noise", "contrast", "translation", "blur"),
    "tabular": ("gaussian_noise", "feature_scaling", "feature_shift"),
}

#: (kind, corruption) -> the parameter ``v`` of severities 1..5 (see the module docstring).
SEVERITY_PARAMS: dict[tuple[str, str], tuple[float, ...]] = {
    ("signal", "gaussian_noise"): (0.1, 0.2, 0.35, 0.5, 0.75),
    ("signal", "scaling"): (0.8, 0.65, 0.5, 0.35, 0.2),
    ("signal", "translation"): (0.025, 0.05, 0.1, 0.15, 0.25),
    ("signal", "blur"): (0.0125, 0.015, 0.0175, 0.02125, 0.025),  # sigma 0.5 .. 1 step on length 40
    ("image", "gaussian_noise"): (0.1, 0.2, 0.35, 0.5, 0.75),
    ("image", "contrast"): (0.8, 0.65, 0.5, 0.35, 0.2),
    ("image", "translation"): (0.03, 0.06, 0.09, 0.125, 0.1875),
    ("image", "blur"): (0.04, 0.06, 0.08, 0.11, 0.14),
    ("tabular", "gaussian_noise"): (0.1, 0.2, 0.35, 0.5, 0.75),
    ("tabular", "feature_scaling"): (0.1, 0.2, 0.35, 0.5, 0.75),
    ("tabular", "feature_shift"): (0.1, 0.25, 0.5, 0.75, 1.0),
}

# Stable random-stream ids (never reorder: they seed the corruptions).
_STREAM_IDS = {"gaussian_noise": 11, "scaling": 12, "contrast": 13, "translation": 14, "blur": 15,
               "feature_scaling": 16, "feature_shift": 17}


def input_kind(data_name: str, input_shape: tuple[int, ...]) -> str:
    """``"signal"``, ``"image"`` or ``"tabular"`` for a dataset (by name, else by the rank of its inputs)."""
    if data_name in INPUT_KINDS:
        return INPUT_KINDS[data_name]
    return {1: "tabular", 2: "signal", 3: "image"}.get(len(input_shape)) or _bad_shape(input_shape)


def _bad_shape(input_shape) -> str:
    raise ConfigError(f"no corruptions for inputs of shape {tuple(input_shape)} (expected 1-D, 2-D or 3-D examples)")


def corruption_names(kind: str) -> tuple[str, ...]:
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown input kind {kind!r} (choose from: {', '.join(CORRUPTIONS)})")
    return CORRUPTIONS[kind]


def _check(x: Tensor, kind: str) -> None:
    ranks = {"signal": (2, 3), "image": (4,), "tabular": (2,)}[kind]
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() not in ranks or x.shape[0] == 0:
        raise ValueError(f"{kind} inputs must be a non-empty floating tensor of rank {' or '.join(map(str, ranks))}"
                         f" (batch first), got {getattr(x, 'shape', type(x))}")


def _channel_view(x: Tensor, kind: str) -> Tensor:
    """``(N, C, rest)``: the channel axis (one channel for ``(N, L)`` signals) and the flattened positions."""
    if kind == "signal" and x.dim() == 2:
        return x[:, None, :]
    return x.reshape(x.shape[0], x.shape[1], -1)


def _channel_std(x: Tensor, kind: str) -> Tensor:
    """Per-channel std over examples and positions, broadcastable to ``x`` (per feature for tabular)."""
    if kind == "tabular":
        return x.std(0, keepdim=True, correction=0)
    v = _channel_view(x, kind)
    std = v.transpose(0, 1).reshape(v.shape[1], -1).std(1, correction=0)
    return std.reshape((1, -1) + (1,) * (x.dim() - 2)) if x.dim() > 2 else std.reshape(1, 1)


def _gaussian_kernel(sigma: float, length: int) -> Tensor:
    radius = max(1, min(int(3.0 * sigma + 0.5), length - 1))  # scipy.ndimage's rule for truncate=3
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur_last(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur along the last axis of ``x`` (any rank), mirror padding (``F.pad`` mode "reflect")."""
    length = x.shape[-1]
    if length < 2:
        return x
    k = _gaussian_kernel(sigma, length).to(x.dtype)
    flat = x.reshape(-1, 1, length)
    padded = F.pad(flat, (len(k) // 2, len(k) // 2), mode="reflect")
    return F.conv1d(padded, k.reshape(1, 1, -1)).reshape(x.shape)


def _roll_per_example(x: Tensor, shifts: Tensor, dim: int) -> Tensor:
    """``x[n]`` circularly shifted by the integer ``shifts[n]`` along ``dim`` (positive: towards higher indices)."""
    length = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = length
    src = (torch.arange(length).reshape(shape) - shifts.long().reshape([-1] + [1] * (x.dim() - 1))) % length
    return torch.gather(x, dim, src.expand(x.shape))


def _shift_per_example(x: Tensor, shifts: Tensor, dim: int) -> Tensor:
    """Circular shift by a real amount ``t``: linear interpolation of the shifts ``floor(t)`` and ``floor(t) + 1``."""
    lower = torch.floor(shifts)
    frac = (shifts - lower).to(x.dtype).reshape([-1] + [1] * (x.dim() - 1))
    return (1 - frac) * _roll_per_example(x, lower, dim) + frac * _roll_per_example(x, lower + 1, dim)


def corrupt(x: Tensor, corruption: str, severity: int, *, kind: str, seed: int = 0) -> Tensor:
    """Corrupted copy of the batch ``x`` (same shape and dtype); see the module docstring."""
    names = corruption_names(kind)
    if corruption not in names:
        raise ValueError(f"unknown corruption {corruption!r} for {kind} inputs (choose from: {', '.join(names)})")
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    _check(x, kind)
    v = SEVERITY_PARAMS[(kind, corruption)][severity - 1]
    rng = np.random.default_rng([seed, _STREAM_IDS[corruption]])
    dtype = x.dtype
    x = x.detach().cpu()
    n = x.shape[0]

    if corruption == "gaussian_noise":
        eps = torch.from_numpy(rng.standard_normal(tuple(x.shape), dtype=np.float32)).to(dtype)
        return x + v * _channel_std(x, kind) * eps
    if corruption in ("scaling", "contrast"):
        mean = _channel_view(x, kind).mean(-1, keepdim=True)
        mean = mean.reshape(x.shape[:2] + (1,) * (x.dim() - 2)) if x.dim() > 2 else mean.reshape(n, 1)
        return mean + v * (x - mean)
    if corruption == "translation":
        signs = torch.from_numpy(rng.choice(np.array([-1.0, 1.0]), size=n))
        if kind == "signal":
            return _shift_per_example(x, signs * v * x.shape[-1], x.dim() - 1)
        vertical = torch.from_numpy(rng.integers(0, 2, size=n)).bool()
        out = _shift_per_example(x, torch.where(vertical, signs * v * x.shape[-2], 0.0), 2)
        return _shift_per_example(out, torch.where(vertical, 0.0, signs * v * x.shape[-1]), 3)
    if corruption == "blur":
        out = _blur_last(x, v * x.shape[-1])
        if kind == "image":
            out = _blur_last(out.transpose(-1, -2), v * x.shape[-2]).transpose(-1, -2)
        return out.contiguous()
    # tabular, per-feature random signs
    signs = torch.from_numpy(rng.choice(np.array([-1.0, 1.0]), size=x.shape[1])).to(dtype)
    if corruption == "feature_scaling":
        mu = x.mean(0, keepdim=True)
        return mu + torch.exp(signs * v) * (x - mu)
    return x + signs * v * _channel_std(x, kind)  # feature_shift


def materialize(dataset: Dataset, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """All inputs and labels of ``dataset`` as two tensors (no copy for a ``TensorDataset``)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = zip(*batches(dataset, batch_size))
    return torch.cat(xs), torch.cat(ys)


def corrupt_dataset(dataset: Dataset, corruption: str, severity: int, *, kind: str, seed: int = 0) -> TensorDataset:
    """``TensorDataset(corrupt(x), y)`` of a whole dataset (statistics over the whole set)."""
    x, y = materialize(dataset)
    return TensorDataset(corrupt(x, corruption, severity, kind=kind, seed=seed), y)


def corruption_suite(dataset: Dataset, kind: str, *, seed: int = 0) -> Iterator[tuple[str, int, TensorDataset]]:
    """``(corruption, severity, corrupted dataset)`` for every corruption of ``kind`` and severity 1..5."""
    x, y = materialize(dataset)
    for name in corruption_names(kind):
        for severity in SEVERITIES:
            yield name, severity, TensorDataset(corrupt(x, name, severity, kind=kind, seed=seed), y)


# ----------------------------------------------------------------------------- CIFAR-10-C / CIFAR-100-C folders

CIFAR_C_LABELS = "labels.npy"


def folder_corruption_suite(root: str | Path, data_name: str) -> Iterator[tuple[str, int, TensorDataset]]:
    """The corruptions stored in a CIFAR-10-C / CIFAR-100-C folder (Hendrycks and Dietterich, 2019).

    ``root`` holds ``labels.npy`` and one ``<corruption>.npy`` per corruption: ``uint8`` images of
    shape ``(5 n, 32, 32, 3)``, rows ``[(s − 1) n, s n)`` at severity ``s`` (``n = 10,000`` in the
    published files). Images are turned into the tensors the run's model saw (``ToTensor`` and the
    per-channel normalisation of :mod:`bayessparse.data.cifar`). The folder is checked completely
    before anything is yielded; a problem is a one-line :class:`ConfigError`. Files are memory-mapped
    and converted one severity at a time.
    """
    from bayessparse.data.cifar import SPECS

    if data_name not in SPECS:
        raise ConfigError(
            f"a corruptions folder is only for CIFAR runs ({', '.join(SPECS)}), this run uses '{data_name}'"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"corruptions folder not found: {root}")
    if not (root / CIFAR_C_LABELS).is_file():
        raise ConfigError(f"corruptions folder {root} has no {CIFAR_C_LABELS}")
    files = sorted(p for p in root.glob("*.npy") if p.name != CIFAR_C_LABELS)
    if not files:
        raise ConfigError(f"corruptions folder {root} has no <corruption>.npy files")
    try:
        labels = np.load(root / CIFAR_C_LABELS, mmap_mode="r")
        arrays = {p.stem: np.load(p, mmap_mode="r") for p in files}
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the corruptions folder {root}: {err}") from None
    total = len(labels)
    if labels.ndim != 1 or total == 0 or total % len(SEVERITIES):
        raise ConfigError(f"{root / CIFAR_C_LABELS}: expected a 1-D array of 5 x n labels, got shape {labels.shape}")
    for name, images in arrays.items():
        if images.shape != (total, 32, 32, 3) or images.dtype != np.uint8:
            raise ConfigError(f"{root / (name + '.npy')}: expected uint8 images of shape ({total}, 32, 32, 3), "
                              f"got {images.dtype} {images.shape}")
    spec = SPECS[data_name]
    mean = torch.tensor(spec.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(spec.std).reshape(1, 3, 1, 1)
    n = total // len(SEVERITIES)
    return _iter_folder(arrays, labels, n, mean, std)


def _iter_folder(arrays, labels, n, mean, std) -> Iterator[tuple[str, int, TensorDataset]]:
    for name, images in arrays.items():
        for severity in SEVERITIES:
            rows = slice((severity - 1) * n, severity * n)
            x = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).float().div_(255.0)
            y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
            yield name, severity, TensorDataset(((x - mean) / std).contiguous(), y)
