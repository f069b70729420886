"""Adaptive ECE, classwise ECE and MCE against brute-force loops and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayessparse.uncertainty import calibration as CAL
from bayessparse.uncertainty import metrics as M

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError  # noqa: E402

FAST = settings(max_examples=30, deadline=None)


def dirichlet(n: int, c: int, seed: int, alpha: float = 0.5, s: int | None = None, dtype=torch.float32) -> torch.Tensor:
    size = (n,) if s is None else (s, n)
    x = np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=size)
    return torch.from_numpy(x).to(dtype)


def labels_for(probs: torch.Tensor, seed: int) -> torch.Tensor:
    """Labels from a tempered version of the predictions: miscalibrated but informative."""
    g = torch.Generator().manual_seed(seed + 1)
    p = M.predictive_mean(probs).double() ** 0.6
    return torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=g).squeeze(-1)


# ----------------------------------------------------------------------------- brute-force references


def brute_adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Python loops: sort by (confidence, correct), cut into n_bins groups like numpy.array_split."""
    items = []
    for row, y in zip(probs.double().tolist(), labels.tolist()):
        conf = max(row)
        pred = row.index(conf)
        items.append((conf, float(pred == y)))
    items.sort()
    n = len(items)
    total = 0.0
    for group in np.array_split(np.arange(n), n_bins):
        if len(group) == 0:
            continue
        acc = sum(items[i][1] for i in group) / len(group)
        conf = sum(items[i][0] for i in group) / len(group)
        total += len(group) / n * abs(acc - conf)
    return total


def bin_of(value: float, n_bins: int, edges: list[float]) -> int:
    """[lo, hi) bins, 1.0 in the last one."""
    return next((i for i in range(n_bins) if edges[i] <= value < edges[i + 1]), n_bins - 1)


def brute_classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    n, c = probs.shape
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype).tolist()
    rows = probs.tolist()
    total = 0.0
    for k in range(c):
        bins: dict[int, list[tuple[float, float]]] = {}
        for row, y in zip(rows, labels.tolist()):
            bins.setdefault(bin_of(row[k], n_bins, edges), []).append((row[k], float(y == k)))
        total += sum(len(v) / n * abs(np.mean([h for _, h in v]) - np.mean([p for p, _ in v])) for v in bins.values())
    return total / c


def brute_mce(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype).tolist()
    conf, pred = probs.max(-1)
    bins: dict[int, list[tuple[float, float]]] = {}
    for c_t, p_t, y_t in zip(conf.tolist(), pred.tolist(), labels.tolist()):
        bins.setdefault(bin_of(c_t, n_bins, edges), []).append((c_t, float(p_t == y_t)))
    return max(abs(np.mean([a for _, a in v]) - np.mean([c for c, _ in v])) for v in bins.values())


def no_exact_one(probs: torch.Tensor) -> torch.Tensor:
    """torchmetrics gives probability 1.0 a bin of its own; keep the reference inputs away from it."""
    assert (probs < 1).all()
    return probs


# ----------------------------------------------------------------------------- adaptive ECE


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("seed,n,c", [(0, 1000, 3), (1, 997, 10), (2, 333, 5), (3, 7, 4)])
def test_adaptive_ece_matches_brute_force(seed, n, c, n_bins):
    probs = dirichlet(n, c, seed)
    labels = labels_for(probs, seed)
    ours = CAL.adaptive_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(brute_adaptive_ece(probs, labels, n_bins), abs=1e-12)
    if n >= 300:
        assert ours > 0.01  # the data really is miscalibrated


def test_adaptive_bins_are_equal_mass():
    probs = dirichlet(103, 4, 5)
    labels = labels_for(probs, 5)
    b = CAL.adaptive_calibration_bins(probs, labels, 10)
    assert b["counts"].tolist() == [11, 11, 11] + [10] * 7  # like numpy.array_split
    assert (b["lower"] <= b["confidence"]).all() and (b["confidence"] <= b["upper"]).all()
    assert (b["upper"][:-1] <= b["lower"][1:]).all()  # sorted, non-overlapping
    conf = probs.double().max(-1).values
    assert b["lower"][0] == conf.min() and b["upper"][-1] == conf.max()
    # fewer items than bins: empty bins are ignored
    small = CAL.adaptive_calibration_bins(probs[:3], labels[:3], 5)
    assert small["counts"].tolist() == [1, 1, 1, 0, 0] and torch.isnan(small["accuracy"][3:]).all()


def test_adaptive_equals_ece_when_equal_width_bins_hold_equal_mass():
    """k points inside every equal-width bin: equal-mass and equal-width bins coincide."""
    n_bins, k = 10, 7
    g = torch.Generator().manual_seed(0)
    centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
    conf = (centres[:, None] + 0.04 * (torch.rand(n_bins, k, generator=g, dtype=torch.float64) - 0.5)).reshape(-1)
    conf = conf[conf > 0.5]  # binary: top-label confidence is at least 0.5 -> the upper five bins
    probs = torch.stack([conf, 1 - conf], 1)
    labels = (torch.rand(len(conf), generator=g) > conf).long()  # correct with probability conf
    ece = M.expected_calibration_error(probs, labels, n_bins)
    assert CAL.adaptive_calibration_error(probs, labels, n_bins // 2) == pytest.approx(ece, abs=1e-12)
    assert ece > 0  # not trivially zero


def test_adaptive_ece_ties_do_not_depend_on_order():
    """Equal confidences crossing a bin boundary: sorted incorrect-first, so any permutation gives the same value."""
    probs = torch.tensor([[0.7, 0.3]] * 6 + [[0.9, 0.1]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    ref = CAL.adaptive_calibration_error(probs, labels, 2)
    # bin 1: 0.7 x 5 with the 3 incorrect first (acc 2/5); bin 2: one correct 0.7 + four 0.9 (3 of 4 correct)
    hand = 0.5 * abs(2 / 5 - 0.7) + 0.5 * abs(4 / 5 - (0.7 + 4 * 0.9) / 5)
    assert ref == pytest.approx(hand, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        perm = torch.randperm(10, generator=g)
        assert CAL.adaptive_calibration_error(probs[perm], labels[perm], 2) == pytest.approx(ref, abs=1e-15)


# ----------------------------------------------------------------------------- classwise ECE


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("seed,c", [(0, 2), (1, 3), (2, 10)])
def test_classwise_ece_matches_brute_force_and_torchmetrics(seed, c, n_bins):
    probs = no_exact_one(dirichlet(600, c, seed, alpha=1.0))
    labels = labels_for(probs, seed)
    ours = CAL.classwise_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(brute_classwise_ece(probs, labels, n_bins), abs=1e-9)
    # torchmetrics has no classwise ECE; its binary ECE of (p_k, 1[y = k]) is exactly one class term.
    per_class = [BinaryCalibrationError(n_bins=n_bins, norm="l1")(probs[:, k], (labels == k).long()).item()
                 for k in range(c)]
    assert ours == pytest.approx(float(np.mean(per_class)), abs=1e-6)
    assert ours > 0.005


def test_classwise_ece_hand_value():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # class 0: bins [.9] (hit 1) and [.6] (hit 0): (|1 - .9| + |0 - .6|)/2 = .35
    # class 1: bins [.1] (hit 0) and [.4] (hit 1): (|0 - .1| + |1 - .4|)/2 = .35
    assert CAL.classwise_calibration_error(probs, labels, 10) == pytest.approx(0.35)


# ----------------------------------------------------------------------------- MCE


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("seed,c", [(0, 3), (1, 10), (4, 5)])
def test_mce_matches_brute_force_and_torchmetrics(seed, c, n_bins):
    probs = no_exact_one(dirichlet(500, c, seed, alpha=1.0))
    labels = labels_for(probs, seed)
    ours = CAL.maximum_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(brute_mce(probs, labels, n_bins), abs=1e-12)
    tm = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="max")(probs, labels).item()
    assert ours == pytest.approx(tm, abs=1e-6)
    assert ours >= M.expected_calibration_error(probs, labels, n_bins)


def test_mce_ignores_empty_bins():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.45, 0.55], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 1, 0])
    # bins of width .2: [.4,.6) -> {.55 wrong, .55 right}: |.5-.55|; [.6,.8) -> |1-.7|; [.8,1] -> |1-.95|
    assert CAL.maximum_calibration_error(probs, labels, 5) == pytest.approx(0.3)


# ----------------------------------------------------------------------------- shared properties


@FAST
@given(st.integers(1, 5), st.integers(1, 60), st.integers(2, 8), st.integers(0, 2**16), st.sampled_from([5, 10, 15]))
def test_sample_input_equals_its_mean(s, n, c, seed, n_bins):
    probs = dirichlet(n, c, seed, s=s)
    labels = labels_for(probs, seed)
    mean = probs.mean(0)
    for fn in (CAL.adaptive_calibration_error, CAL.classwise_calibration_error, CAL.maximum_calibration_error):
        value = fn(probs, labels, n_bins)
        assert value == fn(mean, labels, n_bins)
        assert 0.0 <= value <= 1.0


@FAST
@given(st.integers(1, 80), st.integers(2, 6), st.integers(0, 2**16), st.integers(1, 20))
def test_perfect_one_hot_predictions_are_calibrated(n, c, seed, n_bins):
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, c, size=n))
    probs = torch.nn.functional.one_hot(labels, c).double()
    assert CAL.adaptive_calibration_error(probs, labels, n_bins) == 0.0
    assert CAL.classwise_calibration_error(probs, labels, n_bins) == 0.0
    assert CAL.maximum_calibration_error(probs, labels, n_bins) == 0.0


@pytest.mark.parametrize("fn", [CAL.adaptive_calibration_error, CAL.classwise_calibration_error,
                                CAL.maximum_calibration_error])
def test_invalid_inputs_raise(fn):
    probs, labels = torch.full((4, 3), 1 / 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        fn(probs, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        fn(torch.randn(4, 3) * 5, labels)
    with pytest.raises(ValueError, match="n_bins"):
        fn(probs, labels, 0)
