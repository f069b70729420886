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


def top_label_items(probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float]]:
    """(confidence, correct) of every example, in input order, as Python floats."""
    items = []
    for row, y in zip(probs.double().tolist(), labels.tolist()):
        conf = max(row)
        items.append((conf, float(row.index(conf) == y)))
    return items


def ece_of_groups(groups: list[list[tuple[float, float]]], n: int) -> float:
    return sum(len(g) / n * abs(sum(a for _, a in g) / len(g) - sum(c for c, _ in g) / len(g)) for g in groups if g)


def brute_adaptive_groups(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> list[list[tuple[float, float]]]:
    """Python loops: sort by confidence only, take numpy.array_split's cut points, then push every
    cut that falls between two equal confidences forward until it no longer does."""
    items = sorted(top_label_items(probs, labels), key=lambda t: t[0])
    n = len(items)
    cuts = np.cumsum([len(g) for g in np.array_split(np.arange(n), n_bins)])[:-1].tolist()
    moved = []
    for k in cuts:
        while 0 < k < n and items[k - 1][0] == items[k][0]:
            k += 1
        moved.append(k)
    bounds = [0, *moved, n]
    return [items[bounds[b]:bounds[b + 1]] for b in range(n_bins)]


def brute_adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    return ece_of_groups(brute_adaptive_groups(probs, labels, n_bins), len(labels))


def equal_mass_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """The plain equal-mass definition (ties split like any other items): numpy.array_split of the
    sorted confidences. Only meaningful without ties, where it must agree with the tie-aware rule."""
    items = sorted(top_label_items(probs, labels))
    return ece_of_groups([[items[i] for i in g] for g in np.array_split(np.arange(len(items)), n_bins)], len(items))


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
    """Equal confidences crossing a bin boundary: the whole tie run stays in one bin, in any order.

    (Before the fix the five-and-five cut split the six 0.7s, which were ordered incorrect-first to
    stay order independent; the hand value below is now the one for unsplit tie runs.)
    """
    probs = torch.tensor([[0.7, 0.3]] * 6 + [[0.9, 0.1]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    ref = CAL.adaptive_calibration_error(probs, labels, 2)
    assert CAL.adaptive_calibration_bins(probs, labels, 2)["counts"].tolist() == [6, 4]
    # bin 1: the six 0.7s, 3 of 6 correct; bin 2: the four 0.9s, 3 of 4 correct
    hand = 0.6 * abs(3 / 6 - 0.7) + 0.4 * abs(3 / 4 - 0.9)
    assert ref == pytest.approx(hand, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        perm = torch.randperm(10, generator=g)
        assert CAL.adaptive_calibration_error(probs[perm], labels[perm], 2) == pytest.approx(ref, abs=1e-15)


@pytest.mark.parametrize("n_bins", [1, 2, 10, 15, 2000])
@pytest.mark.parametrize("c,conf", [(2, 0.6), (3, 0.5), (10, 0.25)])
def test_adaptive_ece_of_calibrated_constant_predictor_is_zero(c, conf, n_bins):
    """Same confidence on every example, right on a fraction conf of them: perfectly calibrated.

    Splitting the single tie run into equal-mass bins (incorrect items first) made pure bins and an
    adaptive ECE between 0.25 and 0.5 for these inputs; the run must stay in one bin, giving 0.
    """
    n, n_right = 1000, round(1000 * conf)
    row = [conf] + [(1 - conf) / (c - 1)] * (c - 1)  # class 0 is the prediction
    probs = torch.tensor([row] * n, dtype=torch.float64)
    labels = torch.ones(n, dtype=torch.long)
    labels[torch.randperm(n, generator=torch.Generator().manual_seed(c))[:n_right]] = 0
    assert CAL.adaptive_calibration_error(probs, labels, n_bins) == pytest.approx(0.0, abs=1e-12)
    counts = CAL.adaptive_calibration_bins(probs, labels, n_bins)["counts"]
    assert counts.tolist() == [n] + [0] * (n_bins - 1)
    # the old value, for contrast, is far from 0 whenever the run is cut
    if n_bins > 1:
        assert equal_mass_ece(probs, labels, n_bins) > 0.2


def test_adaptive_tie_run_spanning_several_bins_is_one_bin():
    """A run of 50 equal confidences that would cover equal-mass bins 3 to 7 (of 10) becomes one bin."""
    g = torch.Generator().manual_seed(0)
    low = 0.5 + 0.25 * torch.rand(20, generator=g, dtype=torch.float64)  # distinct, < 0.8
    high = 0.85 + 0.1 * torch.rand(30, generator=g, dtype=torch.float64)  # distinct, > 0.8
    conf = torch.cat([low, torch.full((50,), 0.8, dtype=torch.float64), high])
    probs = torch.stack([conf, 1 - conf], 1)
    labels = (torch.rand(100, generator=g) > conf).long()
    perm = torch.randperm(100, generator=g)
    for p, y in ((probs, labels), (probs[perm], labels[perm])):
        b = CAL.adaptive_calibration_bins(p, y, 10)
        # equal-mass cuts at 10, 20, ..., 90; those at 30-60 fall inside the run (items 20-69) and
        # move to its end (70); the cut at 20 sits just before the run and stays.
        assert b["counts"].tolist() == [10, 10, 50, 0, 0, 0, 0, 10, 10, 10]
        assert b["lower"][2] == 0.8 and b["upper"][2] == 0.8 and b["confidence"][2].item() == pytest.approx(0.8)
        assert torch.isnan(b["accuracy"][3:7]).all() and torch.isnan(b["lower"][3:7]).all()
        assert not torch.isnan(b["accuracy"][[0, 1, 2, 7, 8, 9]]).any()
        assert CAL.adaptive_calibration_error(p, y, 10) == pytest.approx(brute_adaptive_ece(p, y, 10), abs=1e-12)
    # a run at the top end swallows the last bins; a run at the bottom end pushes the first cut
    top = torch.cat([low[:5], torch.full((10,), 0.9, dtype=torch.float64)])
    b = CAL.adaptive_calibration_bins(torch.stack([top, 1 - top], 1), torch.zeros(15, dtype=torch.long), 5)
    assert b["counts"].tolist() == [3, 12, 0, 0, 0]  # run = items 5-14, starts in bin 1
    bottom = torch.cat([torch.full((10,), 0.55, dtype=torch.float64), high[:5]])
    b = CAL.adaptive_calibration_bins(torch.stack([bottom, 1 - bottom], 1), torch.zeros(15, dtype=torch.long), 5)
    assert b["counts"].tolist() == [10, 0, 0, 2, 3]  # cuts 3, 6, 9 -> 10; cut 12 stays


@FAST
@given(st.integers(1, 200), st.integers(2, 6), st.integers(0, 2**16), st.integers(1, 25))
def test_adaptive_ece_without_ties_is_plain_equal_mass(n, c, seed, n_bins):
    """Distinct confidences: the tie rule never fires, so bins are exactly numpy.array_split's."""
    probs = dirichlet(n, c, seed, alpha=1.0, dtype=torch.float64)
    labels = labels_for(probs, seed)
    conf = probs.max(-1).values
    assert conf.unique().numel() == n  # no ties (continuous draws)
    assert CAL.adaptive_calibration_error(probs, labels, n_bins) == pytest.approx(
        equal_mass_ece(probs, labels, n_bins), abs=1e-12)
    counts = CAL.adaptive_calibration_bins(probs, labels, n_bins)["counts"].tolist()
    assert counts == [len(g) for g in np.array_split(np.arange(n), n_bins)]


@FAST
@given(st.integers(1, 120), st.integers(1, 6), st.integers(0, 2**16), st.integers(1, 20))
def test_adaptive_ece_is_permutation_invariant_with_many_ties(n, levels, seed, n_bins):
    """Confidences from a few levels (many ties): the value is the tie-aware reference's, and
    exactly the same for every order of the examples (bin contents depend only on the values)."""
    rng = np.random.default_rng(seed)
    values = rng.choice(np.linspace(0.5, 0.95, 10), size=levels, replace=False)
    conf = torch.from_numpy(values[rng.integers(0, levels, n)])
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.from_numpy(rng.integers(0, 2, n))
    ref = CAL.adaptive_calibration_error(probs, labels, n_bins)
    assert ref == pytest.approx(brute_adaptive_ece(probs, labels, n_bins), abs=1e-12)
    counts = CAL.adaptive_calibration_bins(probs, labels, n_bins)["counts"]
    for _ in range(3):
        perm = torch.from_numpy(rng.permutation(n))
        assert CAL.adaptive_calibration_error(probs[perm], labels[perm], n_bins) == ref
        assert torch.equal(CAL.adaptive_calibration_bins(probs[perm], labels[perm], n_bins)["counts"], counts)


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
