"""Variance recalibration and split-conformal intervals on synthetic data whose noise is known."""

import math

import pytest
import torch

from bayessparse.uncertainty.recalibration import conformal_coverage, conformal_quantiles, fit_variance_scale
from bayessparse.uncertainty.regression import interval_coverage


def noisy(n, noise, seed):
    """``y = sin(x) + noise · ε``; the predictor knows the mean and claims a noise of 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 6
    y = torch.sin(x) + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.sin(x), torch.ones(n, dtype=torch.float64), y


@pytest.mark.parametrize("noise", [0.3, 2.0])
def test_recalibration_recovers_the_true_variance_and_the_coverage(noise):
    mean, variance, y_val = noisy(4000, noise, 0)
    c2 = fit_variance_scale(mean, variance, y_val)
    assert c2 == pytest.approx(float(((y_val - mean) ** 2).mean()), rel=1e-6)  # the closed form for one Gaussian
    assert c2 == pytest.approx(noise**2, rel=0.06)
    mean_t, variance_t, y_test = noisy(20000, noise, 1)
    before = interval_coverage(mean_t, variance_t, y_test)[0.9]
    after = interval_coverage(mean_t, c2 * variance_t, y_test)[0.9]
    assert abs(after - 0.9) < 0.01
    assert (before > 0.99) if noise < 1 else (before < 0.65)  # the claimed noise of 1 was wrong both ways


def test_recalibration_of_a_mixture_maximises_the_validation_likelihood():
    mean, variance, y = noisy(2000, 0.5, 2)
    means = torch.stack([mean - 0.2, mean + 0.2])  # two equal-weight components
    variances = torch.stack([variance, variance]) * 0.1
    from bayessparse.uncertainty.regression import gaussian_mixture_nll

    c2 = fit_variance_scale(means, variances, y)
    best = gaussian_mixture_nll(means, c2 * variances, y)
    for factor in (0.9, 1.1):
        assert gaussian_mixture_nll(means, factor * c2 * variances, y) > best


def test_split_conformal_covers_at_least_the_level_whatever_the_model():
    # a badly wrong model (claimed noise 1, true 2.5): conformal intervals still cover their level
    hits = {0.5: [], 0.9: [], 0.95: []}
    for seed in range(40):
        mean_v, variance_v, y_v = noisy(200, 2.5, 100 + seed)
        mean_t, variance_t, y_t = noisy(200, 2.5, 200 + seed)
        q = conformal_quantiles(mean_v, variance_v, y_v)
        for a, c in conformal_coverage(mean_t, variance_t, y_t, q).items():
            hits[a].append(c)
    for a, values in hits.items():
        average = sum(values) / len(values)
        assert a - 0.01 <= average <= a + 1 / 201 + 0.02, (a, average)


def test_conformal_quantile_is_the_rank_the_guarantee_needs():
    mean = torch.zeros(9, dtype=torch.float64)
    y = torch.arange(1, 10, dtype=torch.float64)  # scores 1..9 with unit variance
    q = conformal_quantiles(mean, torch.ones(9, dtype=torch.float64), y, levels=(0.5, 0.9, 0.95))
    assert q[0.5] == 5.0  # ceil(10 · 0.5) = 5th smallest
    assert q[0.9] == 9.0  # ceil(10 · 0.9) = 9th
    assert math.isinf(q[0.95])  # ceil(10 · 0.95) = 10 > 9 points
    with pytest.raises(ValueError):
        conformal_quantiles(mean, torch.ones(9, dtype=torch.float64), y, levels=(1.0,))
