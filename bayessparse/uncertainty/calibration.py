"""The ECE family beyond the top-label, equal-width ECE: adaptive (equal-mass) ECE, classwise ECE, MCE.

Same input conventions as :mod:`bayessparse.uncertainty.metrics`: ``probs`` is ``(N, C)`` or
per-sample ``(S, N, C)`` (averaged over ``S`` into the predictive mean ``p̄`` first), ``labels``
is ``(N,)`` integer; every result is a Python float in ``[0, 1]``.

* **MCE** (maximum calibration error; Naeini, Cooper and Hauskrecht, AAAI 2015):
  ``max_b |acc_b − conf_b|`` over the *non-empty* equal-width top-label bins of
  :func:`~bayessparse.uncertainty.metrics.calibration_bins` (same edges and edge rules as the ECE).
  It equals torchmetrics' ``MulticlassCalibrationError(norm="max")`` except for the 1.0-bin
  convention described in :mod:`~bayessparse.uncertainty.metrics`.
* **Adaptive ECE** (equal-mass bins; Nguyen and O'Connor, EMNLP 2015; Nixon et al., CVPR-W 2019;
  "AdaECE" in Mukhoti et al., NeurIPS 2020): the top-label ECE ``Σ_b (n_b/N) |acc_b − conf_b|``
  with bins that each hold (about) the same number of predictions instead of the same width.
  Predictions are sorted by confidence and the ``n_bins − 1`` equal-mass cut points are computed as
  for ``numpy.array_split`` (group sizes differ by at most one, the first ``N mod n_bins`` groups
  get the extra item). A run of *exactly* equal confidences is never split: a cut that falls inside
  such a run (between two equal confidences) is moved forward to the end of that run, so the whole
  run joins the bin in which it starts. Without ties this is exactly the equal-mass split; with
  ties, bins can be uneven, and several cuts inside one run collapse onto its end and leave empty
  bins (as do ``N < n_bins``); empty bins are ignored. Bin membership then depends only on the
  confidence values, so the value does not depend on the order of the examples, and a perfectly
  calibrated constant predictor (every confidence ``c``, a fraction ``c`` correct) scores 0 instead
  of the large error of bins made "pure" by cutting through its single tie run.
* **Classwise ECE** (Kull et al., NeurIPS 2019; "static calibration error", SCE, in Nixon et al.
  2019): every class ``k`` is calibrated separately as a one-vs-rest problem with confidence
  ``p̄_k(x)`` (for *all* N examples, not only those predicted as ``k``) and outcome ``1[y = k]``,
  binned into the usual equal-width bins:
  ``cwECE = (1/C) Σ_k Σ_b (n_bk / N) |freq_bk − conf_bk|``, where ``freq_bk`` is the fraction of
  bin ``b`` (of class ``k``) whose label is ``k``. Each class term is exactly torchmetrics'
  ``BinaryCalibrationError(norm="l1")`` of ``(p̄_k, 1[y = k])`` (up to the 1.0-bin convention), so
  the classwise ECE is the mean over classes of that binary metric.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayessparse.uncertainty.metrics import _prepare, _top_label, calibration_bins, ece_from_bins

__all__ = [
    "adaptive_calibration_bins",
    "adaptive_calibration_error",
    "classwise_calibration_error",
    "maximum_calibration_error",
    "mce_from_bins",
]


def _check_n_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def mce_from_bins(bins: dict[str, Tensor]) -> float:
    """``MCE = max_b |acc_b − conf_b|`` over the non-empty bins of a ``calibration_bins``-style dict."""
    keep = bins["counts"] > 0
    return (bins["accuracy"][keep] - bins["confidence"][keep]).abs().max().item()


def maximum_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error (Naeini et al., 2015): the worst gap over non-empty equal-width bins."""
    return mce_from_bins(calibration_bins(probs, labels, n_bins))


def adaptive_calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Equal-mass top-label bins that never split a run of equal confidences.

    Confidences are sorted, the ``n_bins − 1`` cut points of ``numpy.array_split`` are computed
    (sizes ``N // n_bins`` or one more), and every cut that falls between two *exactly* equal
    confidences is moved forward to the end of their tie run, so a whole run of equal confidences
    always lands in one bin (the bin in which the run starts). Without ties the bins are exactly
    the equal-mass ones. The rule only looks at the sorted confidence values, so the bins do not
    depend on the order of the examples (see also the module docstring).

    Returns the keys :func:`~bayessparse.uncertainty.metrics.ece_from_bins` reads, in the same
    format as :func:`~bayessparse.uncertainty.metrics.calibration_bins`, plus ``lower`` / ``upper``:
      * ``counts`` (n_bins, int64): items per bin; ``N // n_bins`` or one more unless a cut was moved
        past a tie run (a larger bin, a smaller next one, and 0 for bins whose cuts collapsed onto the
        same run end) or ``N < n_bins`` (trailing empty bins);
      * ``accuracy`` / ``confidence`` (n_bins, float64): fraction correct / mean confidence (NaN when empty);
      * ``lower`` / ``upper`` (n_bins, float64): smallest / largest confidence in the bin (NaN when empty).
    """
    _check_n_bins(n_bins)
    p, labels = _prepare(probs, labels)
    conf, correct = _top_label(p, labels)
    conf = conf.double()
    n = conf.numel()  # >= 1 (checked by _prepare)
    order = torch.sort(conf, stable=True).indices
    conf, correct = conf[order], correct[order]
    # Equal-mass cut points (like numpy.array_split): bin b is conf[bounds[b]:bounds[b + 1]].
    sizes = torch.full((n_bins,), n // n_bins, dtype=torch.long, device=conf.device)
    sizes[: n % n_bins] += 1
    cuts = torch.cumsum(sizes, 0)[:-1]
    # A cut at k (0 < k < n) lies between conf[k - 1] and conf[k]; move it to the end of the tie run
    # of conf[k - 1] (a no-op when conf[k - 1] < conf[k]). Cuts stay sorted since conf is sorted.
    run_end = torch.searchsorted(conf, conf[(cuts - 1).clamp(0, n - 1)], right=True)
    cuts = torch.where((cuts > 0) & (cuts < n), run_end, cuts)
    edge = torch.tensor([n], dtype=torch.long, device=conf.device)
    bounds = torch.cat([torch.zeros_like(edge), cuts, edge])
    sizes = bounds.diff()
    idx = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    sum_conf = zeros.clone().index_add_(0, idx, conf)
    sum_correct = zeros.clone().index_add_(0, idx, correct)
    nan = torch.full((n_bins,), float("nan"), dtype=torch.float64, device=conf.device)
    nonempty = sizes > 0
    lower = torch.where(nonempty, conf[bounds[:-1].clamp(max=n - 1)], nan)
    upper = torch.where(nonempty, conf[(bounds[1:] - 1).clamp(min=0)], nan)
    return {
        "counts": sizes,
        "accuracy": torch.where(nonempty, sum_correct / sizes, nan),
        "confidence": torch.where(nonempty, sum_conf / sizes, nan),
        "lower": lower,
        "upper": upper,
    }


def adaptive_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) ECE: ``Σ_b (n_b/N) |acc_b − conf_b|`` over :func:`adaptive_calibration_bins`."""
    return ece_from_bins(adaptive_calibration_bins(probs, labels, n_bins))


def classwise_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., 2019): the mean over classes of the one-vs-rest ECE of ``p̄_k``.

    Bins are the equal-width bins of :func:`~bayessparse.uncertainty.metrics.calibration_bins`
    (``[lo, hi)``, interior edges to the right, probability 1.0 in the last bin), applied to the
    class-``k`` probability of every example; see the module docstring for the formula.
    """
    _check_n_bins(n_bins)
    p, labels = _prepare(probs, labels)
    n, c = p.shape
    edges = torch.linspace(0, 1, n_bins + 1, dtype=p.dtype, device=p.device)
    idx = (torch.bucketize(p, edges, right=True) - 1).clamp(0, n_bins - 1)  # (N, C) bin of every p̄_nk
    flat = (idx + n_bins * torch.arange(c, device=p.device)).reshape(-1)  # one bin set per class
    hit = torch.nn.functional.one_hot(labels, c).double().reshape(-1)
    sum_conf = torch.zeros(c * n_bins, dtype=torch.float64, device=p.device).index_add_(0, flat, p.double().reshape(-1))
    sum_hit = torch.zeros(c * n_bins, dtype=torch.float64, device=p.device).index_add_(0, flat, hit)
    gap = (sum_hit - sum_conf).abs()  # n_bk |freq_bk − conf_bk|, zero for empty bins
    return (gap.sum() / (n * c)).item()
