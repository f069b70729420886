"""Numerical checks of bayessparse.uncertainty.metrics against torchmetrics, torch and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bayessparse.uncertainty import metrics as M

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError  # noqa: E402

FAST = settings(max_examples=30, deadline=None)


def dirichlet(n: int, c: int, seed: int, alpha: float = 0.5, s: int | None = None) -> torch.Tensor:
    """float32 Dirichlet(alpha) probabilities of shape (n, c), or (s, n, c) when ``s`` is given."""
    size = (n,) if s is None else (s, n)
    x = np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=size)
    return torch.from_numpy(x).float()


def labels_for(probs: torch.Tensor, seed: int) -> torch.Tensor:
    """Labels drawn from a tempered version of the predictions: miscalibrated but informative."""
    g = torch.Generator().manual_seed(seed + 1)
    p = M.predictive_mean(probs).double() ** 0.6
    return torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=g).squeeze(-1)


def tm_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    metric = MulticlassCalibrationError(num_classes=probs.shape[-1], n_bins=n_bins, norm="l1")
    return metric(probs, labels).item()


def brute_ece(probs, labels, n_bins, one_own_bin=False) -> float:
    """Loop over samples with explicit bin rule: [lo, hi), 1.0 in the last bin (or its own bin)."""
    conf, pred = probs.max(-1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype).tolist()
    bins: dict[int, list[tuple[float, float]]] = {}
    for c_t, p_t, y_t in zip(conf, pred, labels):
        c = c_t.item()
        b = next((i for i in range(n_bins) if edges[i] <= c < edges[i + 1]), n_bins if one_own_bin else n_bins - 1)
        bins.setdefault(b, []).append((c, float(p_t == y_t)))
    n = len(labels)
    return sum(len(v) / n * abs(np.mean([a for _, a in v]) - np.mean([c for c, _ in v])) for v in bins.values())


# ----------------------------------------------------------------------------- ECE


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("seed,c", [(0, 3), (1, 5), (2, 10), (3, 7)])
def test_ece_matches_torchmetrics_random(seed, c, n_bins):
    probs = dirichlet(1000, c, seed)
    labels = labels_for(probs, seed)
    ours = M.expected_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(tm_ece(probs, labels, n_bins), abs=1e-6)
    assert ours == pytest.approx(brute_ece(probs, labels, n_bins), abs=1e-9)
    assert ours > 0.01  # the test data really is miscalibrated


def edge_case_probs(n_bins: int, c: int = 4, with_one: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidences exactly on every interior bin edge (float32 linspace values), some
    strictly inside bins, and optionally some exactly 1.0 (one-hot rows)."""
    edges = torch.linspace(0, 1, n_bins + 1)
    confs = [e for e in edges[1:-1].tolist() if e > 1 / c + 1e-3]  # argmax must be class 0
    confs = confs * 3 + [0.93, 0.55, 0.71] + ([1.0] * 7 if with_one else [])
    top = torch.tensor(confs, dtype=torch.float32)
    probs = torch.cat([top[:, None], ((1 - top) / (c - 1))[:, None].expand(-1, c - 1)], dim=1)
    probs[:, 0] = top  # keep the exact edge value (the normalisation above is exact up to rounding)
    labels = torch.tensor([0 if i % 3 else 1 for i in range(len(confs))])  # 2/3 correct
    last = (top >= edges[-2]) & (top < 1)
    labels[last] = 0  # last bin below 1.0 is underconfident (all correct) ...
    if with_one:
        labels[top == 1] = torch.tensor([0, 1, 0, 1, 0, 1, 0])  # ... while the 1.0 rows are overconfident
    return probs, labels


@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_bin_edges_match_torchmetrics(n_bins):
    """Interior edges go to the bin on their right, exactly like torchmetrics (bucketize right=True)."""
    probs, labels = edge_case_probs(n_bins, with_one=False)
    bins = M.calibration_bins(probs, labels, n_bins)
    edges = torch.linspace(0, 1, n_bins + 1)
    conf = probs.max(-1).values
    on_edge = torch.isin(conf, edges)
    assert on_edge.sum() >= n_bins  # really exercising the edges
    expected_idx = torch.searchsorted(edges, conf, right=True) - 1
    assert torch.equal(bins["counts"], torch.bincount(expected_idx, minlength=n_bins))
    assert M.expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        tm_ece(probs, labels, n_bins), abs=1e-6
    )


@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_confidence_one_in_last_bin(n_bins):
    """Confidence exactly 1.0 lands in the last of our n_bins bins (ALGORITHMS.md). torchmetrics 1.x
    instead gives 1.0 an extra (n_bins+1)-th bin of its own; we check both conventions exactly."""
    probs, labels = edge_case_probs(n_bins, with_one=True)
    bins = M.calibration_bins(probs, labels, n_bins)
    conf = probs.max(-1).values
    assert bins["counts"].sum() == len(labels)
    assert bins["counts"][-1] == ((conf >= bins["edges"][-2]) & (conf <= 1)).sum()
    ours = M.expected_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(brute_ece(probs, labels, n_bins), abs=1e-9)
    theirs = tm_ece(probs, labels, n_bins)
    assert theirs == pytest.approx(brute_ece(probs, labels, n_bins, one_own_bin=True), abs=1e-6)
    assert abs(theirs - ours) > 5e-3  # the two conventions really differ on this input


def test_ece_confidence_one_only_agrees_with_torchmetrics_when_last_bin_is_pure():
    # All confident samples exactly 1.0: merging into the last bin or not makes no difference.
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 2, 0, 1])
    assert M.expected_calibration_error(probs, labels, 10) == pytest.approx(tm_ece(probs, labels, 10), abs=1e-7)
    # 0.5 correct (gap .5), 1.0 correct (0), 1.0 wrong (1), 0.6 wrong (.6) -> last bin {1,1}: |0.5-1| * 2/4
    assert M.expected_calibration_error(probs, labels, 10) == pytest.approx((0.5 + 2 * 0.5 + 0.6) / 4)


def test_calibration_bins_contents():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.45, 0.55], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 1, 0])
    b = M.calibration_bins(probs, labels, n_bins=5)  # edges 0, .2, .4, .6, .8, 1
    assert b["edges"].shape == (6,)
    assert b["counts"].tolist() == [0, 0, 2, 1, 1]
    assert torch.isnan(b["accuracy"][:2]).all() and torch.isnan(b["confidence"][:2]).all()
    assert b["accuracy"][2:].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert b["confidence"][2:].tolist() == pytest.approx([0.55, 0.7, 0.95])
    assert M.ece_from_bins(b) == pytest.approx((2 * 0.05 + 0.3 + 0.05) / 4)


def test_ece_float64_and_sample_input():
    probs = dirichlet(500, 6, 11, s=4)
    labels = labels_for(probs, 11)
    e32 = M.expected_calibration_error(probs, labels)
    e64 = M.expected_calibration_error(probs.double(), labels)
    assert e32 == pytest.approx(e64, abs=1e-6)
    assert e32 == pytest.approx(tm_ece(probs.mean(0), labels, 15), abs=1e-6)


# ----------------------------------------------------------------------------- accuracy, NLL, Brier


@pytest.mark.parametrize("seed,c", [(0, 3), (1, 10)])
def test_accuracy_matches_torchmetrics(seed, c):
    probs = dirichlet(1000, c, seed)
    labels = labels_for(probs, seed)
    ref = MulticlassAccuracy(num_classes=c, average="micro")(probs, labels).item()
    assert M.accuracy(probs, labels) == pytest.approx(ref, abs=1e-7)


@pytest.mark.parametrize("seed,c", [(0, 3), (4, 10)])
def test_nll_matches_torch(seed, c):
    probs = dirichlet(1000, c, seed, alpha=1.0)
    labels = labels_for(probs, seed)
    ref = F.nll_loss(probs.double().log(), labels).item()
    assert M.nll(probs, labels) == pytest.approx(ref, rel=1e-6)


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    value = M.nll(probs, labels, eps=1e-12)
    assert math.isfinite(value)
    assert value == pytest.approx((-math.log(1e-12) - math.log(0.5)) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_nll_from_logits_single_sample_is_cross_entropy(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(800, 7, generator=g)
    labels = torch.randint(0, 7, (800,), generator=g)
    ref = F.cross_entropy(logits.double(), labels).item()
    assert M.nll_from_logits(logits, labels) == pytest.approx(ref, rel=1e-9)
    assert M.nll_from_logits(logits, labels) == pytest.approx(M.nll(logits.softmax(-1), labels), rel=1e-5)


def test_nll_from_logits_is_log_mean_exp_not_mean_log():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(5, 300, 4, generator=g)  # S=5 disagreeing samples
    labels = torch.randint(0, 4, (300,), generator=g)
    brute = -torch.log(logits.double().softmax(-1).mean(0)[torch.arange(300), labels]).mean().item()
    ours = M.nll_from_logits(logits, labels)
    assert ours == pytest.approx(brute, rel=1e-10)
    assert ours == pytest.approx(M.nll(logits.softmax(-1), labels), rel=1e-5)
    mean_of_log = torch.stack([F.cross_entropy(z.double(), labels) for z in logits]).mean().item()
    assert mean_of_log > ours + 0.1  # Jensen: the wrong definition is strictly (and here much) larger


def test_nll_from_logits_extreme_values_stable():
    logits = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]])  # S=2, N=1: p̄ = (0.5, 0.5)
    assert M.nll_from_logits(logits, torch.tensor([0])) == pytest.approx(math.log(2))


@pytest.mark.parametrize("seed,c", [(0, 3), (5, 8)])
def test_brier_brute_force(seed, c):
    probs = dirichlet(200, c, seed)
    labels = labels_for(probs, seed)
    total = 0.0
    for p, y in zip(probs.double().tolist(), labels.tolist()):
        total += sum((pc - (1.0 if k == y else 0.0)) ** 2 for k, pc in enumerate(p))
    assert M.brier(probs, labels) == pytest.approx(total / len(labels), rel=1e-9)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_brier_hand_values(c):
    labels = torch.arange(c) % c
    assert M.brier(F.one_hot(labels, c).float(), labels) == 0.0
    assert M.brier(torch.full((c, c), 1 / c), labels) == pytest.approx((c - 1) / c)
    wrong = F.one_hot((labels + 1) % c, c).float()
    assert M.brier(wrong, labels) == pytest.approx(2.0)


def test_summary_keys_and_values():
    probs = dirichlet(300, 5, 9, s=3)
    labels = labels_for(probs, 9)
    s = M.summary(probs, labels, n_bins=10)
    assert set(s) == {"accuracy", "nll", "ece", "brier"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["ece"] == M.expected_calibration_error(probs, labels, 10)
    assert s["nll"] == pytest.approx(M.nll(probs.mean(0), labels))


def test_predictive_mean():
    probs = dirichlet(10, 3, 0, s=4)
    assert torch.equal(M.predictive_mean(probs[0]), probs[0])
    assert torch.allclose(M.predictive_mean(probs), probs.mean(0))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "probs,labels,match",
    [
        (torch.full((4, 3), 1 / 3), torch.zeros(5, dtype=torch.long), "shape"),
        (torch.full((4,), 0.25), torch.zeros(4, dtype=torch.long), "shape"),
        (torch.full((4, 3), 1 / 3), torch.zeros(4), "integer"),
        (torch.full((4, 3), 1 / 3), torch.full((4,), 3), r"\[0, 2\]"),
        (torch.full((4, 3), 1 / 3), torch.full((4,), -1), r"\[0, 2\]"),
        (torch.randn(4, 3) * 5, torch.zeros(4, dtype=torch.long), "logits"),
        (torch.full((4, 3), 0.5), torch.zeros(4, dtype=torch.long), "sum to 1"),
        (torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, dtype=torch.long), "NaN"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), "floating"),
        (torch.empty(0, 3), torch.zeros(0, dtype=torch.long), "N, S >= 1"),
    ],
)
def test_invalid_inputs_raise_value_error(probs, labels, match):
    for fn in (M.accuracy, M.nll, M.brier, M.expected_calibration_error, M.summary):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_invalid_n_bins_and_logits():
    probs, labels = torch.full((4, 3), 1 / 3), torch.zeros(4, dtype=torch.long)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_bins"):
            M.expected_calibration_error(probs, labels, bad)
    with pytest.raises(ValueError, match="shape"):
        M.nll_from_logits(torch.randn(2, 4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        M.nll_from_logits(torch.tensor([[float("inf"), 0.0]]), torch.zeros(1, dtype=torch.long))


# ----------------------------------------------------------------------------- properties (hypothesis)


@st.composite
def prob_arrays(draw):
    n = draw(st.integers(1, 40))
    c = draw(st.integers(2, 6))
    raw = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0, 1, allow_subnormal=False)))
    raw[raw.sum(1) == 0, 0] = 1.0  # rows of zeros become one-hot (confidence exactly 1.0)
    probs = torch.from_numpy(raw / raw.sum(1, keepdims=True))
    labels = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return probs, labels


@FAST
@given(prob_arrays(), st.integers(1, 20))
def test_ece_in_unit_interval(data, n_bins):
    probs, labels = data
    ece = M.expected_calibration_error(probs, labels, n_bins)
    assert 0.0 <= ece <= 1.0
    bins = M.calibration_bins(probs, labels, n_bins)
    assert bins["counts"].sum() == len(labels)
    assert M.brier(probs, labels) <= 2.0 + 1e-12


@FAST
@given(
    st.lists(st.tuples(st.integers(2, 12), st.integers(0, 12)), min_size=1, max_size=6),
    st.integers(2, 6),
    st.sampled_from([5, 10, 15]),
)
def test_ece_zero_when_perfectly_calibrated(levels, c, n_bins):
    """Groups of m samples with confidence k/m of which exactly k are correct -> ECE = 0 (each bin's
    accuracy is the count-weighted mean of group accuracies = mean of group confidences)."""
    rows, labels = [], []
    for m, k in levels:
        k = min(max(k, 1), m)
        conf = k / m
        if conf <= 1 / c:  # argmax must be class 0 unambiguously
            continue
        rest = (1 - conf) / (c - 1)
        rows += [[conf] + [rest] * (c - 1)] * m
        labels += [0] * k + [1] * (m - k)
    if not rows:
        rows, labels = [[1.0] + [0.0] * (c - 1)], [0]
    probs = torch.tensor(rows, dtype=torch.float64)
    ece = M.expected_calibration_error(probs, torch.tensor(labels), n_bins)
    assert ece == pytest.approx(0.0, abs=1e-12)


@FAST
@given(st.integers(1, 5), st.integers(1, 60), st.integers(2, 8), st.integers(0, 2**16), st.sampled_from([10, 15]))
def test_sample_input_equals_its_mean(s, n, c, seed, n_bins):
    probs = dirichlet(n, c, seed, s=s)
    labels = labels_for(probs, seed)
    mean = probs.mean(0)
    assert M.accuracy(probs, labels) == M.accuracy(mean, labels)
    assert M.expected_calibration_error(probs, labels, n_bins) == M.expected_calibration_error(mean, labels, n_bins)
    assert M.brier(probs, labels) == M.brier(mean, labels)
    assert M.nll(probs, labels) == M.nll(mean, labels)
