"""Temperature scaling (Guo, Pleiss, Sun and Weinberger, ICML 2017): the post-hoc calibration baseline.

One scalar ``T > 0`` divides the logits, ``p(y | x) = softmax(z(x) / T)``; it is fitted on the
validation split by minimising the NLL, and leaves the predicted class (hence accuracy) unchanged.
``T > 1`` softens over-confident predictions.

Fitting: ``torch.optim.LBFGS`` (strong-Wolfe line search) on ``log T`` in float64, starting at
``T = 1``. The NLL is convex in ``β = 1/T`` (``logsumexp`` of functions linear in ``β``), hence
unimodal in ``log T``, so the local minimum LBFGS finds is the global one. The result is clipped
to ``bounds`` (default ``[0.05, 20]``): on a validation set that the model classifies perfectly
the NLL keeps falling as ``T → 0`` and the unclipped optimum would be degenerate. The fitted value
never has a higher validation NLL than ``T = 1`` (if numerical trouble made it so, ``1.0`` is
returned instead).

Per-sample logits ``(S, N, C)`` (MC samples, ensemble members): the temperature is applied to the
*log of the predictive mean*, ``z̄ = log (1/S) Σ_s softmax(z_s)`` (log-mean-exp of the
log-softmaxes, :func:`predictive_logits`), i.e. ``p_T ∝ p̄^{1/T}``; the same scalar is not pushed
into every sample, which would change the predictive mean in a different, sample-dependent way.
For ``S = 1`` this is ordinary temperature scaling (``log_softmax(z)`` differs from ``z`` by a
per-row constant that the softmax ignores).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bayessparse.uncertainty.metrics import _check_scores

__all__ = ["DEFAULT_BOUNDS", "apply_temperature", "fit_temperature", "predictive_logits", "temperature_nll"]

DEFAULT_BOUNDS = (0.05, 20.0)


def predictive_logits(logits: Tensor) -> Tensor:
    """``(N, C)`` logits of the predictive mean: ``logits`` itself for ``(N, C)``; for ``(S, N, C)``
    ``log (1/S) Σ_s softmax(z_s)`` (float64), whose softmax is the predictive mean."""
    if logits.dim() == 2:
        return logits
    logp = torch.log_softmax(logits.double(), dim=-1)
    return torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])


def temperature_nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean NLL of ``softmax(z̄ / T)`` (float64), the objective :func:`fit_temperature` minimises."""
    logits, labels = _check_scores(logits, labels, "logits")
    z = predictive_logits(logits).double()
    return F.cross_entropy(z / float(temperature), labels).item()


def fit_temperature(
    logits: Tensor, labels: Tensor, *, bounds: tuple[float, float] = DEFAULT_BOUNDS, max_iter: int = 100
) -> float:
    """The temperature ``T`` minimising the validation NLL of ``softmax(z̄ / T)``.

    Args:
        logits: validation logits ``(N, C)``, or per-sample ``(S, N, C)`` (fitted on the log of
            the predictive mean, see the module docstring).
        labels: ``(N,)`` integer labels.
        bounds: the fitted value is clipped to ``[low, high]``.
        max_iter: LBFGS iterations.
    """
    low, high = bounds
    if not 0.0 < low <= 1.0 <= high:
        raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high, got {bounds}")
    logits, labels = _check_scores(logits, labels, "logits")
    z = predictive_logits(logits).double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = log_t.detach().item()
    temperature = min(max(math.exp(value), low), high) if math.isfinite(value) else 1.0
    with torch.no_grad():
        if F.cross_entropy(z / temperature, labels) > F.cross_entropy(z, labels):
            return 1.0
    return temperature


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Calibrated probabilities ``softmax(z̄ / T)``, shape ``(N, C)`` (``z̄`` as in :func:`predictive_logits`)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = predictive_logits(logits)
    return torch.softmax(z / temperature, dim=-1)
