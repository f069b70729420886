"""Regression metrics of Gaussian-mixture predictive distributions: RMSE, NLL and interval coverage.

A probabilistic regressor predicts, for input ``x_n``, a mixture of ``S`` Gaussians

    p(y | x_n) = Σ_s w_s N(y; μ_sn, σ²_sn),    w_s ≥ 0,  Σ_s w_s = 1,

from ``S`` posterior samples (a deep GP's draws of its hidden layers, ensemble members, MC-dropout
passes: equal weights ``w_s = 1/S``) or ``S`` quadrature sites with learned weights (a DSPP, Jankowiak
et al., 2020, *Deep Sigma Point Processes*). ``S = 1`` is a single Gaussian. Every function takes
``means`` and ``variances`` of shape ``(S, N)`` (or ``(N,)`` for one Gaussian), targets ``y`` of shape
``(N,)`` and optional ``log_weights`` of shape ``(S,)`` (``log w_s`` up to a constant: they are
normalised here; ``None`` is uniform). The variances are those of ``y``, observation noise included.
Everything is computed in float64.

- NLL: ``−(1/N) Σ_n log Σ_s w_s N(y_n; μ_sn, σ²_sn)``, a log-sum-exp over the components (the log of
  the mixture density, never the mean of the components' log densities, which is larger by Jensen).
- Coverage of level ``α``: the fraction of targets inside the central ``α`` interval
  ``[F⁻¹((1 − α)/2), F⁻¹((1 + α)/2)]`` of their predictive mixture, whose CDF is
  ``F(y) = Σ_s w_s Φ((y − μ_s) / σ_s)``. ``F`` is continuous and strictly increasing, so ``y`` lies in
  that interval exactly when its probability integral transform satisfies ``|F(y) − 1/2| ≤ α/2``: the
  coverage is computed from ``F(y)`` in closed form, with no quantile search and no sampling. A calibrated
  predictor covers about ``α`` (Gneiting, Balabdaoui and Raftery, 2007, *Probabilistic forecasts,
  calibration and sharpness*).
- RMSE of the predictive mean ``μ̄_n = Σ_s w_s μ_sn``: ``sqrt((1/N) Σ_n (μ̄_n − y_n)²)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "LEVELS",
    "gaussian_mixture_nll",
    "interval_coverage",
    "mixture_cdf",
    "mixture_moments",
    "regression_summary",
    "rmse",
]

#: The central-interval levels of :func:`regression_summary` (keys ``coverage_50``, ``coverage_90``, ``coverage_95``).
LEVELS = (0.5, 0.9, 0.95)


def _components(
    means: Tensor, variances: Tensor, y: Tensor, log_weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validated float64 ``(S, N)`` means and variances, ``(N,)`` targets and normalised ``(S, 1)`` log weights."""
    for name, t in (("means", means), ("variances", variances), ("y", y)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    means, variances = means.detach().double(), variances.detach().double()
    means, variances = (means[None], variances[None]) if means.dim() == 1 else (means, variances)
    if means.dim() != 2 or means.shape[1] == 0 or variances.shape != means.shape or y.shape != means.shape[1:]:
        raise ValueError(f"means and variances must have shape (S, N) or (N,) and y (N,), got "
                         f"{tuple(means.shape)}, {tuple(variances.shape)}, {tuple(y.shape)}")
    if not (variances > 0).all():
        raise ValueError("variances must be positive")
    if log_weights is None:
        log_w = torch.full((means.shape[0],), -math.log(means.shape[0]), dtype=torch.float64)
    else:
        if not isinstance(log_weights, Tensor) or log_weights.shape != means.shape[:1]:
            raise ValueError(f"log_weights must be a tensor of shape ({means.shape[0]},)")
        log_w = log_weights.detach().double()
        log_w = log_w - torch.logsumexp(log_w, 0)
    return means, variances, y.detach().double(), log_w[:, None]


def mixture_moments(means: Tensor, variances: Tensor, log_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean ``Σ_s w_s μ_s`` and variance ``Σ_s w_s (σ²_s + μ_s²) − μ̄²`` of each mixture, both ``(N,)``."""
    m, v, _, log_w = _components(means, variances, means.new_zeros(means.shape[-1]), log_weights)
    w = log_w.exp()
    mean = (w * m).sum(0)
    return mean, ((w * (v + m.square())).sum(0) - mean.square()).clamp_min(0)


def gaussian_mixture_nll(means: Tensor, variances: Tensor, y: Tensor, log_weights: Tensor | None = None) -> float:
    """``−(1/N) Σ_n log Σ_s w_s N(y_n; μ_sn, σ²_sn)`` (log-mean-exp over samples for uniform weights)."""
    m, v, y, log_w = _components(means, variances, y, log_weights)
    log_normal = -0.5 * (math.log(2 * math.pi) + v.log() + (y - m).square() / v)
    return -torch.logsumexp(log_w + log_normal, dim=0).mean().item()


def mixture_cdf(means: Tensor, variances: Tensor, y: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """The probability integral transform ``F_n(y_n) = Σ_s w_s Φ((y_n − μ_sn) / σ_sn)``, float64 ``(N,)``."""
    m, v, y, log_w = _components(means, variances, y, log_weights)
    phi = 0.5 * torch.special.erfc(-(y - m) / (v.sqrt() * math.sqrt(2)))
    return (log_w.exp() * phi).sum(0)


def interval_coverage(
    means: Tensor, variances: Tensor, y: Tensor, levels: Sequence[float] = LEVELS, log_weights: Tensor | None = None
) -> dict[float, float]:
    """``{α: fraction of n with |F_n(y_n) − 1/2| ≤ α/2}``: coverage of the central ``α`` intervals."""
    if not levels or any(not 0 < float(a) < 1 for a in levels):
        raise ValueError(f"levels must be numbers in (0, 1), got {levels!r}")
    distance = (mixture_cdf(means, variances, y, log_weights) - 0.5).abs()
    return {float(a): (distance <= float(a) / 2).double().mean().item() for a in levels}


def rmse(mean: Tensor, y: Tensor) -> float:
    """Root mean squared error ``sqrt((1/N) Σ_n (mean_n − y_n)²)`` of a point prediction ``(N,)``."""
    if not isinstance(mean, Tensor) or not isinstance(y, Tensor) or mean.shape != y.shape or mean.dim() != 1:
        raise ValueError(f"mean and y must be tensors of the same shape (N,), got "
                         f"{getattr(mean, 'shape', mean)} and {getattr(y, 'shape', y)}")
    return (mean.detach().double() - y.detach().double()).square().mean().sqrt().item()


def regression_summary(
    means: Tensor, variances: Tensor, y: Tensor, log_weights: Tensor | None = None, levels: Sequence[float] = LEVELS
) -> dict[str, float]:
    """``{"rmse", "nll", "coverage_50", "coverage_90", "coverage_95"}`` (one coverage key per level, in percent)."""
    mean, _ = mixture_moments(means, variances, log_weights)
    out = {"rmse": rmse(mean, y.double()), "nll": gaussian_mixture_nll(means, variances, y, log_weights)}
    coverage = interval_coverage(means, variances, y, levels, log_weights)
    out.update({f"coverage_{round(100 * a)}": c for a, c in coverage.items()})
    return out
