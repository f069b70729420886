"""OOD scores and detection metrics (vs sklearn, scipy and brute force) and the OOD sets of bayessparse.data.ood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from bayessparse.data import DATASETS
from bayessparse.data.corruptions import input_kind
from bayessparse.data.ood import DEFAULT_OOD, FEATURE_SHIFT_STDS, OOD_SETS, check_ood, make_ood, ood_inputs
from bayessparse.errors import ConfigError
from bayessparse.uncertainty import ood as O

FAST = settings(max_examples=40, deadline=None)


def dirichlet(n: int, c: int, seed: int, alpha: float = 0.5, s: int | None = None) -> torch.Tensor:
    size = (n,) if s is None else (s, n)
    return torch.from_numpy(np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=size))


def binary_problem(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 0.8 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # many exactly equal scores across both classes
    return torch.from_numpy(labels), torch.from_numpy(scores)


def brute_fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> float:
    """Sweep every threshold (each distinct score and +inf), rule: flagged iff score >= t."""
    best = 1.0
    for t in list(np.unique(scores)) + [np.inf]:
        flagged = scores >= t
        tpr = flagged[labels == 1].mean()
        fpr = flagged[labels == 0].mean()
        if tpr >= level:
            best = min(best, fpr)
    return float(best)


# ----------------------------------------------------------------------------- detection metrics


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_aupr_match_sklearn(seed, ties):
    labels, scores = binary_problem(seed, ties=ties)
    assert O.auroc(labels, scores) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert O.aupr(labels, scores) == pytest.approx(average_precision_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert 0.6 < O.auroc(labels, scores) < 0.9  # an informative but imperfect detector


@pytest.mark.parametrize("seed", [0, 3])
def test_roc_curve_matches_sklearn(seed):
    labels, scores = binary_problem(seed, n=150, ties=True)
    fpr, tpr, thr = O.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels.numpy(), scores.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr.numpy()[1:], sk_thr[1:])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_fpr95_matches_threshold_sweep(seed, ties):
    labels, scores = binary_problem(seed, n=300, ties=ties)
    ours = O.fpr_at_95_tpr(labels, scores)
    assert ours == pytest.approx(brute_fpr_at_tpr(labels.numpy(), scores.numpy()), abs=1e-12)
    assert 0.0 < ours < 1.0
    assert O.fpr_at_tpr(labels, scores, 0.5) == pytest.approx(
        brute_fpr_at_tpr(labels.numpy(), scores.numpy(), 0.5), abs=1e-12)


@FAST
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40))
def test_detection_metrics_property_vs_references(pairs):
    labels = np.array([p[0] for p in pairs])
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    scores = np.array([float(p[1]) for p in pairs])
    lt, st_ = torch.from_numpy(labels), torch.from_numpy(scores)
    assert O.auroc(lt, st_) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert O.aupr(lt, st_) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert O.fpr_at_95_tpr(lt, st_) == pytest.approx(brute_fpr_at_tpr(labels, scores), abs=1e-12)


def test_perfect_and_reversed_separation():
    labels = torch.tensor([0] * 50 + [1] * 30)
    scores = torch.cat([torch.linspace(0, 1, 50), torch.linspace(2, 3, 30)]).double()
    assert O.auroc(labels, scores) == 1.0
    assert O.aupr(labels, scores) == 1.0
    assert O.fpr_at_95_tpr(labels, scores) == 0.0
    assert O.auroc(labels, -scores) == 0.0
    assert O.fpr_at_95_tpr(labels, -scores) == 1.0
    assert O.aupr(labels, -scores) == pytest.approx(average_precision_score(labels.numpy(), -scores.numpy()))
    constant = torch.zeros(80, dtype=torch.float64)
    assert O.auroc(labels, constant) == 0.5  # one big tie counts one half
    assert O.aupr(labels, constant) == pytest.approx(30 / 80)


def test_detection_rejects_bad_input():
    with pytest.raises(ValueError, match="positive and one negative"):
        O.auroc(torch.ones(5), torch.randn(5))
    with pytest.raises(ValueError, match="0 .*or 1"):
        O.auroc(torch.tensor([0, 2]), torch.randn(2))
    with pytest.raises(ValueError, match="same length"):
        O.aupr(torch.tensor([0, 1]), torch.randn(3))
    with pytest.raises(ValueError, match="NaN"):
        O.fpr_at_95_tpr(torch.tensor([0, 1]), torch.tensor([0.0, float("nan")]))


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("seed,c", [(0, 2), (1, 10)])
def test_entropy_and_max_softmax(seed, c):
    probs = dirichlet(200, c, seed)
    ref = scipy_entropy(probs.numpy(), axis=-1)  # natural log
    np.testing.assert_allclose(O.entropy(probs).numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(O.max_softmax(probs).numpy(), probs.max(-1).values.numpy())
    samples = dirichlet(200, c, seed, s=4)
    np.testing.assert_allclose(O.entropy(samples).numpy(), scipy_entropy(samples.mean(0).numpy(), axis=-1), rtol=1e-10)
    uniform = torch.full((3, c), 1.0 / c, dtype=torch.float64)
    np.testing.assert_allclose(O.entropy(uniform).numpy(), math.log(c))
    assert O.entropy(torch.eye(c, dtype=torch.float64)).abs().max() == 0.0  # 0 log 0 = 0


@pytest.mark.parametrize("seed,s,c", [(0, 5, 3), (1, 2, 10)])
def test_mutual_information_is_entropy_of_mean_minus_mean_entropy(seed, s, c):
    samples = dirichlet(300, c, seed, s=s)
    brute = scipy_entropy(samples.mean(0).numpy(), axis=-1) - np.mean(
        [scipy_entropy(samples[i].numpy(), axis=-1) for i in range(s)], axis=0)
    mi = O.mutual_information(samples)
    np.testing.assert_allclose(mi.numpy(), brute, rtol=1e-9, atol=1e-12)
    assert (mi >= 0).all() and mi.mean() > 0.05
    same = dirichlet(300, c, seed)[None].expand(s, -1, -1)
    assert O.mutual_information(same).abs().max() < 1e-12
    assert (O.mutual_information(same) >= 0).all()
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        O.mutual_information(samples[0])


@FAST
@given(st.integers(1, 6), st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**16))
def test_mutual_information_bounds(s, n, c, seed):
    samples = dirichlet(n, c, seed, alpha=0.3, s=s)
    mi = O.mutual_information(samples)
    assert (mi >= 0).all()
    assert (mi <= O.entropy(samples) + 1e-12).all()
    assert (mi <= math.log(c) + 1e-12).all()


def test_ood_metrics_orientation_and_keys():
    confident = dirichlet(300, 5, 0, alpha=0.05)  # in-distribution: peaked
    vague = dirichlet(200, 5, 1, alpha=50.0)  # OOD: near uniform
    result = O.ood_metrics(confident, vague)
    assert set(result) == {"max_softmax", "entropy"}
    for m in result.values():
        assert set(m) == {"auroc", "aupr", "fpr95"}
        assert m["auroc"] > 0.99 and m["aupr"] > 0.98 and m["fpr95"] < 0.05
    labels = torch.cat([torch.zeros(300), torch.ones(200)]).long()
    msp = torch.cat([confident.max(-1).values, vague.max(-1).values])
    assert result["max_softmax"]["auroc"] == pytest.approx(roc_auc_score(labels, -msp), abs=1e-12)
    assert result["max_softmax"]["aupr"] == pytest.approx(average_precision_score(labels, -msp), abs=1e-12)
    # swapped roles: the detector is perfectly wrong
    assert O.ood_metrics(vague, confident)["entropy"]["auroc"] < 0.01


def test_ood_metrics_mutual_information_needs_samples():
    in_s, out_s = dirichlet(100, 4, 0, s=3), dirichlet(80, 4, 1, alpha=0.2, s=3)
    assert set(O.ood_metrics(in_s, out_s)) == {"max_softmax", "entropy", "mutual_information"}
    assert set(O.ood_metrics(in_s.mean(0), out_s)) == {"max_softmax", "entropy"}
    mi = O.ood_metrics(in_s, out_s)["mutual_information"]
    scores = torch.cat([O.mutual_information(in_s), O.mutual_information(out_s)])
    labels = torch.cat([torch.zeros(100), torch.ones(80)]).long()
    assert mi["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # (S, N, C) for max_softmax / entropy equals its mean
    assert O.ood_metrics(in_s, out_s)["entropy"] == O.ood_metrics(in_s.mean(0), out_s.mean(0))["entropy"]
    with pytest.raises(ValueError, match="class counts"):
        O.ood_metrics(in_s, dirichlet(10, 5, 2))


# ----------------------------------------------------------------------------- OOD sets


def test_default_ood_covers_every_dataset_and_fits_its_kind():
    shapes = {"mnist1d": (40,), "digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
    assert set(DEFAULT_OOD) == set(DATASETS)
    for name in DATASETS:
        kind = input_kind(name, shapes.get(name, (5,)))
        assert check_ood(None, kind, name) == DEFAULT_OOD[name]
    assert DEFAULT_OOD["mnist1d"] == "shuffled" and DEFAULT_OOD["digits"] == "noise"
    assert DEFAULT_OOD["synthetic"] == "far-shift" and DEFAULT_OOD["wine"] == "feature-shift"


@pytest.mark.parametrize("name,kind,needle", [("imagenet", "image", "unknown OOD set 'imagenet'"),
                                              ("feature-shift", "image", "does not fit"),
                                              ("shuffled", "tabular", "does not fit")])
def test_check_ood_errors(name, kind, needle):
    with pytest.raises(ConfigError, match=needle):
        check_ood(name, kind, "somedata")


def test_shuffled_signal_and_image():
    g = torch.Generator().manual_seed(0)
    x = torch.cumsum(torch.randn(50, 40, generator=g), dim=1)  # smooth-ish signals
    out = ood_inputs("shuffled", x, "signal", seed=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    perm = [int((x[0] == v).nonzero()[0]) for v in out[0]]  # positions of row 0's values
    assert torch.equal(out, x[:, perm])  # the same permutation for every example
    assert sorted(perm) == list(range(40)) and perm != list(range(40))
    assert torch.equal(ood_inputs("shuffled", x, "signal", seed=3), out)
    assert not torch.equal(ood_inputs("shuffled", x, "signal", seed=4), out)
    img = torch.randn(20, 3, 8, 8, generator=g)
    o = ood_inputs("shuffled", img, "image")
    flat_in, flat_out = img.reshape(20, 3, 64), o.reshape(20, 3, 64)
    pix = [int((flat_in[0, 0] == v).nonzero()[0]) for v in flat_out[0, 0]]
    assert torch.equal(flat_out, flat_in[:, :, pix])  # pixels moved with their channels


def test_noise_matches_statistics():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(400, 3, 8, 8, generator=g) * torch.tensor([1.0, 2.0, 0.5]).reshape(1, 3, 1, 1) + \
        torch.tensor([0.0, 1.0, -2.0]).reshape(1, 3, 1, 1)
    out = ood_inputs("noise", img, "image", seed=0)
    assert out.shape == img.shape and out.dtype == img.dtype
    np.testing.assert_allclose(out.mean((0, 2, 3)).numpy(), img.mean((0, 2, 3)).numpy(), atol=0.03)
    np.testing.assert_allclose(out.std((0, 2, 3)).numpy(), img.std((0, 2, 3)).numpy(), rtol=0.03)
    tab = torch.randn(2000, 4, generator=g) * torch.tensor([1.0, 3.0, 0.2, 1.0])
    out = ood_inputs("noise", tab, "tabular")
    np.testing.assert_allclose(out.std(0).numpy(), tab.std(0).numpy(), rtol=0.05)


def test_feature_shift_and_far_shift():
    g = torch.Generator().manual_seed(2)
    tab = torch.randn(500, 6, generator=g, dtype=torch.float64) * 2 + 1
    shifted = ood_inputs("feature-shift", tab, "tabular", seed=0)
    delta = shifted - tab
    assert torch.allclose(delta, delta[:1].expand_as(delta))  # one shift per feature
    np.testing.assert_allclose(delta[0].abs().numpy(), FEATURE_SHIFT_STDS * tab.std(0, correction=0).numpy())
    far = ood_inputs("far-shift", tab, "tabular", seed=0)
    mu, sd = tab.mean(0), tab.std(0, correction=0)
    r_in = ((tab - mu) / sd).norm(dim=1)
    r_out = ((far - mu) / sd).norm(dim=1)
    q95 = torch.quantile(r_in, 0.95)
    assert r_out.min() >= 2 * q95 - 1e-9 and r_out.max() <= 3 * q95 + 1e-9


def test_make_ood_dataset():
    from torch.utils.data import TensorDataset

    x = torch.randn(30, 1, 8, 8)
    ds = make_ood("noise", TensorDataset(x, torch.zeros(30, dtype=torch.long)), "image", seed=1)
    xo, yo = ds.tensors
    assert xo.shape == x.shape and xo.dtype == torch.float32 and (yo == -1).all()
    assert set(OOD_SETS) == {"shuffled", "noise", "feature-shift", "far-shift"}


@pytest.mark.parametrize("bad,needle", [(torch.randn(5, 3) * 4, "logits"), (torch.full((4,), 0.25), "shape"),
                                        (torch.full((2, 3), 0.5), "sum to 1"), (torch.ones(2, 3, dtype=torch.long), "floating")])
def test_scores_validate_probabilities(bad, needle):
    for fn in (O.max_softmax, O.entropy):
        with pytest.raises(ValueError, match=needle):
            fn(bad)
    with pytest.raises(ValueError, match=needle):
        O.ood_metrics(bad, dirichlet(4, 3, 0))
