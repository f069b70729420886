"""Post-hoc fixes of a regressor's predictive intervals, fitted on the validation split only.

Two fixes of a Gaussian-mixture predictive ``p(y | x) = Σ_s w_s N(y; μ_s(x), σ²_s(x))`` (the shapes and
conventions of :mod:`bayessparse.uncertainty.regression`):

- **Variance recalibration** (the regression twin of temperature scaling; Kuleshov, Fenner and Ermon,
  ICML 2018, recalibrate the CDF, here one scale suffices): every component's variance is multiplied by one
  factor ``c²`` chosen to maximise the validation log-likelihood, ``c² = argmax Σ_n log Σ_s w_s N(y_n; μ_sn,
  c²σ²_sn)``. For one Gaussian it has the closed form ``c² = mean_n (y_n − μ_n)² / σ²_n``. The means, hence
  the RMSE, do not change.
- **Split-conformal intervals** (Papadopoulos et al. 2002; Lei et al., JASA 2018, normalised residuals):
  with the predictive mean ``μ̄`` and standard deviation ``σ̄`` of the mixture and the validation scores
  ``r_n = |y_n − μ̄_n| / σ̄_n``, the level-``α`` interval is ``μ̄ ± q_α σ̄`` where ``q_α`` is the
  ``⌈(n + 1) α⌉``-th smallest of the ``n`` scores. If validation and test points are exchangeable, a test
  target falls inside with probability at least ``α`` (and below ``α + 1/(n + 1)`` without ties), whatever
  the model. Intervals only: no density, so no NLL.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from bayessparse.uncertainty.regression import LEVELS, gaussian_mixture_nll, mixture_moments

__all__ = ["conformal_coverage", "conformal_quantiles", "fit_variance_scale"]


def fit_variance_scale(means: Tensor, variances: Tensor, y: Tensor, log_weights: Tensor | None = None) -> float:
    """The factor ``c²`` on every predictive variance that maximises the log-likelihood of ``y`` (validation)."""
    def nll(log_c2: float) -> float:
        return gaussian_mixture_nll(means, variances * math.exp(log_c2), y, log_weights)

    result = minimize_scalar(nll, bounds=(-20.0, 20.0), method="bounded", options={"xatol": 1e-10})
    return float(math.exp(result.x))


def conformal_quantiles(means: Tensor, variances: Tensor, y: Tensor, levels: Sequence[float] = LEVELS,
                        log_weights: Tensor | None = None) -> dict[float, float]:
    """``{α: q_α}`` from the normalised validation residuals (module docstring); ``inf`` when
    ``⌈(n + 1) α⌉ > n`` (too few validation points for that level)."""
    if not levels or any(not 0 < float(a) < 1 for a in levels):
        raise ValueError(f"levels must be numbers in (0, 1), got {levels!r}")
    mean, variance = mixture_moments(means, variances, log_weights)
    scores = torch.sort((y.double() - mean).abs() / variance.sqrt()).values
    n = len(scores)
    out = {}
    for a in levels:
        k = math.ceil((n + 1) * float(a))
        out[float(a)] = float(scores[k - 1]) if k <= n else math.inf
    return out


def conformal_coverage(means: Tensor, variances: Tensor, y: Tensor, quantiles: dict[float, float],
                       log_weights: Tensor | None = None) -> dict[float, float]:
    """``{α: fraction of targets inside μ̄ ± q_α σ̄}`` (test)."""
    mean, variance = mixture_moments(means, variances, log_weights)
    scores = (y.double() - mean).abs() / variance.sqrt()
    return {a: (scores <= q).double().mean().item() for a, q in quantiles.items()}
