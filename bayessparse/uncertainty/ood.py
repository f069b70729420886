"""Out-of-distribution detection: uncertainty scores and threshold-free detection metrics.

Scores (per example, float64, natural-log units):

* :func:`max_softmax` ``max_c p̄_c`` (Hendrycks and Gimpel, ICLR 2017): high for in-distribution;
* :func:`entropy` of the predictive mean ``H[p̄] = −Σ_c p̄_c log p̄_c`` (total uncertainty);
* :func:`mutual_information` ``I = H[p̄] − (1/S) Σ_s H[p_s]`` between the label and the sample
  (epistemic part; Houlsby et al. 2011 "BALD", Depeweg et al. 2018, Malinin and Gales 2018).
  Needs per-sample probabilities ``(S, N, C)``; it is ``≥ 0`` by concavity of the entropy and 0 when
  every sample agrees (round-off below 0 is clipped to 0).

Detection metrics treat **OOD as the positive class** and expect scores where **larger means more
likely OOD** (Hendrycks, Mazeika and Dietterich, ICLR 2019, "Outlier Exposure"):

* :func:`auroc`: area under the ROC curve, ties counted one half (the Mann–Whitney statistic);
  equal to ``sklearn.metrics.roc_auc_score``.
* :func:`aupr`: average precision ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds, no
  interpolation; equal to ``sklearn.metrics.average_precision_score`` ("AUPR-Out").
* :func:`fpr_at_tpr` / :func:`fpr_at_95_tpr`: the smallest false-positive rate (fraction of
  in-distribution examples flagged as OOD) over the thresholds ``score ≥ t`` that detect at least
  95 % of the OOD examples. (Liang et al. 2018 state the same number with the roles of the two
  sets swapped; with OOD positive it is the convention of Outlier Exposure.)

:func:`ood_metrics` converts each score into that orientation (``max_softmax`` is negated) and
returns all three metrics per score. AUROC is unchanged by swapping the positive class together
with the score's sign; AUPR and FPR95 are not, so the convention matters when comparing with papers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from bayessparse.uncertainty.metrics import _check_normalised, predictive_mean

__all__ = [
    "SCORES",
    "aupr",
    "auroc",
    "detection_metrics",
    "entropy",
    "fpr_at_95_tpr",
    "fpr_at_tpr",
    "max_softmax",
    "mutual_information",
    "ood_metrics",
    "ood_scores",
    "roc_curve",
]


def _check_probs(probs: Tensor) -> Tensor:
    """Validate an ``(N, C)`` / ``(S, N, C)`` probability tensor (no labels) and return it as float64."""
    if not isinstance(probs, Tensor) or not probs.dtype.is_floating_point:
        raise ValueError(f"probs must be a floating-point tensor, got {getattr(probs, 'dtype', type(probs))}")
    empty = probs.dim() in (2, 3) and (probs.shape[-2] == 0 or (probs.dim() == 3 and probs.shape[0] == 0))
    if probs.dim() not in (2, 3) or empty or probs.shape[-1] < 2:
        raise ValueError(f"probs must have shape (N, C) or (S, N, C) with N, S >= 1, C >= 2, got {tuple(probs.shape)}")
    probs = probs.detach()
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or infinite values")
    _check_normalised(probs)  # tolerance of the input dtype (bfloat16 rounding is coarser than float32's)
    return probs.double().clamp(0.0, 1.0)


def _entropy_rows(p: Tensor) -> Tensor:
    """``−Σ_c p_c log p_c`` over the last dimension, with ``0 log 0 = 0``."""
    return torch.special.entr(p).sum(-1)


def max_softmax(probs: Tensor) -> Tensor:
    """Top-label confidence ``max_c p̄_c`` per example, shape ``(N,)``; high means in-distribution."""
    return predictive_mean(_check_probs(probs)).max(-1).values


def entropy(probs: Tensor) -> Tensor:
    """Predictive entropy ``H[p̄]`` in nats per example, shape ``(N,)``; in ``[0, log C]``."""
    return _entropy_rows(predictive_mean(_check_probs(probs)))


def mutual_information(sample_probs: Tensor) -> Tensor:
    """``I(y; θ | x) = H[p̄] − mean_s H[p_s]`` in nats per example from ``(S, N, C)`` probabilities."""
    p = _check_probs(sample_probs)
    if p.dim() != 3:
        raise ValueError(f"mutual_information needs per-sample probabilities (S, N, C), got shape {tuple(p.shape)}")
    return (_entropy_rows(p.mean(0)) - _entropy_rows(p).mean(0)).clamp_min(0.0)


#: name -> (score function, sign): ``sign * score`` is larger for inputs that look more OOD.
SCORES: dict[str, tuple[Callable[[Tensor], Tensor], float]] = {
    "max_softmax": (max_softmax, -1.0),
    "entropy": (entropy, 1.0),
    "mutual_information": (mutual_information, 1.0),
}


def _check_binary(labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    labels, scores = torch.as_tensor(labels), torch.as_tensor(scores)
    if labels.dim() != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got {tuple(labels.shape)}, {tuple(scores.shape)}"
        )
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 0 (negative, in-distribution) or 1 (positive, OOD)")
    scores = scores.detach().double().cpu()
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    labels = labels.detach().cpu().bool()
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        raise ValueError("need at least one positive and one negative example")
    return labels, scores


def roc_curve(labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fpr, tpr, thresholds)`` for the rules ``score ≥ t`` over the distinct scores, descending.

    Starts at ``t = +inf`` (nothing flagged: ``fpr = tpr = 0``) and ends with every example flagged
    (``fpr = tpr = 1``); ties in the scores move both rates in one step.
    """
    labels, scores = _check_binary(labels, scores)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    last_of_run = torch.ones_like(s, dtype=torch.bool)
    last_of_run[:-1] = s[1:] != s[:-1]  # the cumulative counts after each distinct threshold
    tp = torch.cumsum(y, 0)[last_of_run]
    fp = torch.cumsum(1.0 - y, 0)[last_of_run]
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tp / tp[-1]])
    fpr = torch.cat([zero, fp / fp[-1]])
    thresholds = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64), s[last_of_run]])
    return fpr, tpr, thresholds


def auroc(labels: Tensor, scores: Tensor) -> float:
    """Area under the ROC curve (trapezoidal over the distinct thresholds; ties count one half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return torch.trapezoid(tpr, fpr).item()


def aupr(labels: Tensor, scores: Tensor) -> float:
    """Average precision ``Σ_k (R_k − R_{k−1}) P_k`` with the positive class 1 (sklearn's definition)."""
    labels, scores = _check_binary(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    n_pos = float(labels.sum())
    n_neg = float(labels.numel()) - n_pos
    tp, fp = tpr[1:] * n_pos, fpr[1:] * n_neg
    precision = tp / (tp + fp)
    recall_step = tpr[1:] - tpr[:-1]
    return (recall_step * precision).sum().item()


def fpr_at_tpr(labels: Tensor, scores: Tensor, tpr_level: float = 0.95) -> float:
    """Smallest FPR over the thresholds ``score ≥ t`` whose TPR is at least ``tpr_level``."""
    if not 0.0 < tpr_level <= 1.0:
        raise ValueError(f"tpr_level must lie in (0, 1], got {tpr_level}")
    fpr, tpr, _ = roc_curve(labels, scores)
    reached = tpr >= tpr_level - 1e-12  # tpr and fpr are non-decreasing: the first hit has the smallest fpr
    return fpr[reached][0].item()


def fpr_at_95_tpr(labels: Tensor, scores: Tensor) -> float:
    """FPR at 95 % TPR (see :func:`fpr_at_tpr`)."""
    return fpr_at_tpr(labels, scores, 0.95)


def detection_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """``{"auroc", "aupr", "fpr95"}`` with OOD (``scores_out``) positive and larger scores more OOD."""
    scores_in = torch.as_tensor(scores_in).double().reshape(-1)
    scores_out = torch.as_tensor(scores_out).double().reshape(-1)
    scores = torch.cat([scores_in, scores_out])
    labels = torch.cat([torch.zeros(len(scores_in)), torch.ones(len(scores_out))]).long()
    return {"auroc": auroc(labels, scores), "aupr": aupr(labels, scores), "fpr95": fpr_at_95_tpr(labels, scores)}


def ood_scores(probs: Tensor, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """Raw scores (``max_softmax``, ``entropy`` and, for ``(S, N, C)`` input, ``mutual_information``)."""
    probs = _check_probs(probs)
    if names is None:
        names = tuple(n for n in SCORES if n != "mutual_information" or probs.dim() == 3)
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise ValueError(f"unknown OOD score {unknown[0]!r} (choose from: {', '.join(SCORES)})")
    return {name: SCORES[name][0](probs) for name in names}


def ood_metrics(
    in_probs: Tensor, out_probs: Tensor, scores: tuple[str, ...] | None = None
) -> dict[str, dict[str, float]]:
    """Detection of ``out_probs`` (OOD, positive) among ``in_probs`` per score.

    Both are ``(N, C)`` or ``(S, N, C)`` (the number of examples may differ). By default the
    scores are ``max_softmax`` and ``entropy``, plus ``mutual_information`` when both inputs are
    per-sample. Returns ``{score: {"auroc", "aupr", "fpr95"}}`` (see the module docstring).
    """
    in_probs, out_probs = _check_probs(in_probs), _check_probs(out_probs)
    if in_probs.shape[-1] != out_probs.shape[-1]:
        raise ValueError(
            f"in and out probabilities have different class counts: {in_probs.shape[-1]} vs {out_probs.shape[-1]}"
        )
    if scores is None:
        per_sample = in_probs.dim() == 3 and out_probs.dim() == 3
        scores = tuple(n for n in SCORES if n != "mutual_information" or per_sample)
    s_in, s_out = ood_scores(in_probs, scores), ood_scores(out_probs, scores)
    return {name: detection_metrics(SCORES[name][1] * s_in[name], SCORES[name][1] * s_out[name]) for name in scores}
