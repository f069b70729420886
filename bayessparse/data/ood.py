"""Out-of-distribution sets built from a dataset's own test split (no downloads).

Each set has as many examples as the split it is built from, inputs of the same shape and dtype,
and labels ``-1`` (no class: they are only ever scored, never compared with a label). Statistics
(means, standard deviations) are those of the split passed in, per channel for signals and
images and per feature for tabular data. Everything is deterministic given ``seed``.

=================  ==================  ==========================================================
name               kinds               construction
=================  ==================  ==========================================================
``shuffled``       signal, image       the positions (time steps; pixels, channels kept together)
                                       permuted by one fixed random permutation: the same values
                                       and marginal statistics, no spatial structure
``noise``          all                 Gaussian noise with the data's mean and std
``feature-shift``  tabular             every feature shifted by ``±3 std`` (sign per feature)
``far-shift``      tabular             points far from the data: ``μ + r σ ⊙ u``, ``u`` a random
                                       unit direction, ``r`` uniform in ``[2, 3]`` times the 95th
                                       percentile of the data's standardised radius
                                       ``‖(x − μ)/σ‖`` (for ``synthetic``: far from all class means)
=================  ==================  ==========================================================

:data:`DEFAULT_OOD` names the built-in set of every registered dataset (MNIST-1D: shuffled,
digits and CIFAR: noise, breast_cancer / wine / diabetes: feature-shift, synthetic: far-shift).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from bayessparse.data.corruptions import materialize
from bayessparse.errors import ConfigError

__all__ = ["DEFAULT_OOD", "OOD_SETS", "check_ood", "make_ood", "ood_inputs"]

#: name -> the input kinds it applies to.
OOD_SETS: dict[str, tuple[str, ...]] = {
    "shuffled": ("signal", "image"),
    "noise": ("signal", "image", "tabular"),
    "feature-shift": ("tabular",),
    "far-shift": ("tabular",),
}

DEFAULT_OOD = {
    "mnist1d": "shuffled",
    "digits": "noise",
    "breast_cancer": "feature-shift",
    "wine": "feature-shift",
    "diabetes": "feature-shift",  # regression: the inputs can still leave the training distribution
    "synthetic": "far-shift",
    "cifar10": "noise",
    "cifar100": "noise",
    **{name: "feature-shift" for name in ("uci-concrete", "uci-energy", "uci-wine", "uci-yacht")},  # regression
}

FEATURE_SHIFT_STDS = 3.0
FAR_RANGE = (2.0, 3.0)
_STREAM_IDS = {"shuffled": 21, "noise": 22, "feature-shift": 23, "far-shift": 24}


def check_ood(name: str | None, kind: str, data_name: str) -> str:
    """The OOD set to use: ``name``, or the dataset's default when ``None``; ConfigError if it does not fit."""
    if name is None:
        name = DEFAULT_OOD.get(data_name) or ("shuffled" if kind in ("signal", "image") else "far-shift")
    if name not in OOD_SETS:
        raise ConfigError(f"unknown OOD set '{name}' (choose from: {', '.join(OOD_SETS)})")
    if kind not in OOD_SETS[name]:
        fitting = [n for n, kinds in OOD_SETS.items() if kind in kinds]
        raise ConfigError(
            f"OOD set '{name}' does not fit {kind} data '{data_name}' (choose from: {', '.join(fitting)})"
        )
    return name


def _stats(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Mean and std (population) per channel (signal / image) or per feature (tabular), broadcastable to ``x``."""
    if kind == "tabular" or x.dim() == 2:
        dims: tuple[int, ...] = (0,) if kind == "tabular" else (0, 1)
    else:
        dims = (0,) + tuple(range(2, x.dim()))
    xd = x.double()
    return xd.mean(dims, keepdim=True), xd.std(dims, keepdim=True, correction=0)


def ood_inputs(name: str, x: Tensor, kind: str, *, seed: int = 0) -> Tensor:
    """The OOD inputs built from the in-distribution batch ``x`` (same shape and dtype)."""
    if name not in OOD_SETS or kind not in OOD_SETS[name]:
        raise ValueError(f"OOD set {name!r} does not exist for {kind} inputs")
    rng = np.random.default_rng([seed, _STREAM_IDS[name]])
    n = x.shape[0]
    mean, std = _stats(x, kind)
    if name == "shuffled":
        if kind == "signal":
            perm = torch.from_numpy(rng.permutation(x.shape[-1]))
            return x[..., perm].contiguous()
        h, w = x.shape[-2:]
        perm = torch.from_numpy(rng.permutation(h * w))
        return x.reshape(n, x.shape[1], h * w)[..., perm].reshape(x.shape).contiguous()
    if name == "noise":
        eps = torch.from_numpy(rng.standard_normal(tuple(x.shape)))
        return (mean + std * eps).to(x.dtype)
    if name == "feature-shift":
        signs = torch.from_numpy(rng.choice(np.array([-1.0, 1.0]), size=x.shape[1]))
        return (x.double() + signs * FEATURE_SHIFT_STDS * std).to(x.dtype)
    # far-shift
    scale = torch.where(std > 0, std, torch.ones_like(std))
    radius = ((x.double() - mean) / scale).norm(dim=1)
    reach = torch.quantile(radius, 0.95)
    u = torch.from_numpy(rng.standard_normal((n, x.shape[1])))
    u = u / u.norm(dim=1, keepdim=True)
    r = torch.from_numpy(rng.uniform(*FAR_RANGE, size=(n, 1))) * reach
    return (mean + r * scale * u).to(x.dtype)


def make_ood(name: str, dataset: Dataset, kind: str, *, seed: int = 0) -> TensorDataset:
    """``TensorDataset(ood_inputs(name, x), -1)`` from the inputs of ``dataset`` (usually the test split)."""
    x, _ = materialize(dataset)
    x_ood = ood_inputs(name, x, kind, seed=seed)
    return TensorDataset(x_ood, torch.full((len(x_ood),), -1, dtype=torch.long))
