"""Calibration metrics for classifiers: accuracy, NLL, Brier score, ECE and its bins.

Pure torch functions, no training code. Every ``probs`` argument is either a tensor of class
probabilities of shape ``(N, C)`` or per-sample probabilities of shape ``(S, N, C)`` (S posterior
samples, ensemble members or MC-dropout passes); the latter are first averaged over ``S`` into
the predictive mean ``p̄(y | x) = (1/S) Σ_s p_s(y | x)``, on which every metric is defined.
``labels`` are integer class indices of shape ``(N,)``. Probabilities may be float16 or bfloat16:
they are checked with a tolerance that fits their rounding (:func:`prob_atol`), converted to float32
and renormalised to sum to 1, and every metric is computed in float32 or float64.

Binning convention (shared by the ECE and the reliability diagram, see :func:`calibration_bins`):
``n_bins`` equal-width bins with edges ``torch.linspace(0, 1, n_bins + 1)``; bin ``b`` holds the
top-label confidences in ``[edges[b], edges[b + 1])`` and the last bin is closed,
``[edges[-2], 1]``, so a confidence of exactly 1.0 falls in the last bin (the ``numpy.histogram``
convention). A confidence lying exactly on an interior edge goes to the bin on its right, like
torchmetrics (``torch.bucketize(conf, edges, right=True) - 1``) and unlike the ``(lo, hi]`` bins
written in Guo et al. (2017). The one difference from torchmetrics 1.x: torchmetrics puts
confidences equal to 1.0 in an extra, (n_bins + 1)-th bin of their own, so its ECE differs from
ours only when some confidence is exactly 1.0 (common for saturated float32 softmax outputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "predictive_mean",
    "accuracy",
    "nll",
    "nll_from_logits",
    "brier",
    "calibration_bins",
    "ece_from_bins",
    "expected_calibration_error",
    "summary",
    "prob_atol",
]

#: Tolerance on ``|Σ_c p_c − 1|`` and on entries slightly outside ``[0, 1]`` (float32 rounding); see :func:`prob_atol`.
PROB_ATOL = 1e-3


def prob_atol(dtype: torch.dtype) -> float:
    """The tolerance of the probability checks for probabilities stored as ``dtype``: ``max(PROB_ATOL, 4 eps)``.

    That is ``PROB_ATOL`` for float32 and float64, about 0.0039 for float16 and 0.031 for bfloat16
    (``eps = 2^-7``). Rounding a probability to ``dtype`` moves it by at most ``eps / 2`` of its value, so
    the row sum (taken in float64) moves by at most ``eps / 2`` whatever the number of classes; the rest
    is headroom for a softmax or a normalisation computed in that dtype. Rows summing to 0.9 fail in all four.
    """
    return max(PROB_ATOL, 4 * torch.finfo(dtype).eps)


def _check_labels(labels: Tensor, n: int, c: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the predictions, got {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c - 1}], got range [{labels.min()}, {labels.max()}]")
    return labels.long()


def _check_scores(x: Tensor, labels: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Shape, dtype and finiteness checks shared by probabilities and logits; returns (x, labels)."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() not in (2, 3) or x.shape[-2] == 0 or x.shape[-1] < 2 or (x.dim() == 3 and x.shape[0] == 0):
        raise ValueError(f"{what} must have shape (N, C) or (S, N, C) with N, S >= 1, C >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x.detach(), _check_labels(labels, x.shape[-2], x.shape[-1])


def predictive_mean(probs: Tensor) -> Tensor:
    """Predictive mean ``p̄ = (1/S) Σ_s p_s``: identity for ``(N, C)``, mean over dim 0 for ``(S, N, C)``."""
    if not isinstance(probs, Tensor) or probs.dim() not in (2, 3):
        raise ValueError(f"probs must be a tensor of shape (N, C) or (S, N, C), got {getattr(probs, 'shape', probs)}")
    return probs if probs.dim() == 2 else probs.mean(dim=0)


def _check_normalised(probs: Tensor) -> None:
    """Entries in ``[0, 1]`` and rows summing to 1 (in float64), within :func:`prob_atol` of the dtype."""
    atol = prob_atol(probs.dtype)
    if probs.min() < -atol or probs.max() > 1 + atol:
        raise ValueError("probs must lie in [0, 1] (got values outside; pass softmax outputs, not logits)")
    sums = probs.sum(-1, dtype=torch.float64)
    if not torch.allclose(sums, torch.ones((), dtype=sums.dtype, device=sums.device), atol=atol):
        raise ValueError(f"probs must sum to 1 over the class dimension (within {atol:.2g} for {probs.dtype})")


def _prepare(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``probs``/``labels`` and return the ``(N, C)`` predictive mean and int64 labels."""
    probs, labels = _check_scores(probs, labels, "probs")
    _check_normalised(probs)
    if probs.dtype not in (torch.float32, torch.float64):  # float16 / bfloat16: float32, rows renormalised
        probs = probs.float()
        probs = probs / probs.sum(-1, keepdim=True)
    return predictive_mean(probs), labels


def _top_label(p: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top-label confidence ``max_c p̄_c`` and correctness ``1[argmax_c p̄_c = y]`` (float64)."""
    conf, pred = p.max(dim=-1)
    return conf, (pred == labels).double()


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of the predictive mean: ``(1/N) Σ_n 1[argmax_c p̄_nc = y_n]``."""
    p, labels = _prepare(probs, labels)
    return _top_label(p, labels)[1].mean().item()


def nll(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Negative log-likelihood of the predictive mean: ``−(1/N) Σ_n log p̄(y_n | x_n)``.

    ``p̄(y | x)`` is clamped below at ``eps`` so that a zero probability gives a large finite
    value instead of ``inf``. For ``(S, N, C)`` input this is ``−log mean_s p_s(y | x)``, never
    the mean over samples of ``−log p_s`` (which is larger by Jensen's inequality). When logits are
    available prefer :func:`nll_from_logits`, which avoids underflow of small probabilities.
    """
    p, labels = _prepare(probs, labels)
    p_y = p.gather(-1, labels[:, None]).squeeze(-1).double()
    return -p_y.clamp_min(eps).log().mean().item()


def nll_from_logits(logits: Tensor, labels: Tensor) -> float:
    """NLL of the predictive mean computed from logits, numerically stable.

    ``log p̄(y | x) = logsumexp_s log_softmax(z_s)_y − log S`` (log-mean-exp over the ``S``
    samples of ``(S, N, C)`` logits; ``S = 1`` for ``(N, C)``), and the result is
    ``−(1/N) Σ_n log p̄(y_n | x_n)``; for ``S = 1`` it equals ``F.cross_entropy(logits, labels)``.
    """
    logits, labels = _check_scores(logits, labels, "logits")
    logp = torch.log_softmax(logits.double(), dim=-1)
    if logp.dim() == 2:
        logp = logp[None]
    log_mean = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])
    return -log_mean.gather(-1, labels[:, None]).mean().item()


def brier(probs: Tensor, labels: Tensor) -> float:
    """Brier score (Brier, 1950), multi-class form: ``(1/N) Σ_n Σ_c (p̄_nc − 1[y_n = c])²``.

    0 for a perfect one-hot prediction, ``(C − 1)/C`` for the uniform prediction, at most 2.
    """
    p, labels = _prepare(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, p.shape[-1]).double()
    return (p.double() - onehot).pow(2).sum(-1).mean().item()


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Top-label confidence bins (Naeini et al., 2015; Guo et al., 2017), the one binning routine.

    Returns a dict of tensors:
      * ``edges`` (n_bins + 1): ``torch.linspace(0, 1, n_bins + 1)`` in the confidence dtype;
      * ``counts`` (n_bins, int64): ``n_b``, samples whose confidence falls in bin ``b``;
      * ``accuracy`` (n_bins, float64): ``acc_b``, fraction correct in bin ``b`` (NaN when empty);
      * ``confidence`` (n_bins, float64): ``conf_b``, mean confidence in bin ``b`` (NaN when empty).

    Bin ``b`` is ``[edges[b], edges[b+1])``; the last bin is closed and includes 1.0 (see the
    module docstring for how this relates to torchmetrics).
    """
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, labels = _prepare(probs, labels)
    conf, correct = _top_label(p, labels)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins)
    sum_correct = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, correct)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, conf.double())
    n = counts.double()
    nan = torch.full_like(n, float("nan"))
    return {
        "edges": edges,
        "counts": counts,
        "accuracy": torch.where(counts > 0, sum_correct / n, nan),
        "confidence": torch.where(counts > 0, sum_conf / n, nan),
    }


def ece_from_bins(bins: dict[str, Tensor]) -> float:
    """``ECE = Σ_b (n_b / N) |acc_b − conf_b|`` from the output of :func:`calibration_bins`."""
    counts = bins["counts"].double()
    gap = (bins["accuracy"] - bins["confidence"]).abs().nan_to_num(0.0)
    return ((counts / counts.sum()) * gap).sum().item()


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017; Naeini et al., 2015), top-label, L1.

    ``ECE = Σ_b (n_b / N) |acc_b − conf_b|`` over ``n_bins`` equal-width confidence bins on
    ``[0, 1]`` (15 by default, 10 for the CigL tables); bins as in :func:`calibration_bins`.
    """
    return ece_from_bins(calibration_bins(probs, labels, n_bins))


def summary(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """All headline metrics in one call: ``{"accuracy", "nll", "ece", "brier"}`` as floats."""
    p, labels = _prepare(probs, labels)
    return {
        "accuracy": accuracy(p, labels),
        "nll": nll(p, labels),
        "ece": expected_calibration_error(p, labels, n_bins),
        "brier": brier(p, labels),
    }
