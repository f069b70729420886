"""The exact GP baseline: it recovers a known noise, its intervals cover, and it reproduces its diabetes NLL."""

import math

import pytest
import torch

from bayessparse.baselines.exact_gp import fit_exact_gp
from bayessparse.data import load
from bayessparse.errors import ConfigError


def sine(n, seed, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 6
    return x, torch.sin(2 * x[:, 0]) + noise * torch.randn(n, generator=g, dtype=torch.float64)


def test_it_learns_the_noise_and_its_intervals_cover():
    x, y = sine(300, 0)
    gp = fit_exact_gp(x, y, iterations=150, lr=0.1)
    assert gp.noise == pytest.approx(0.04, rel=0.3)
    scores = gp.predict(*sine(2000, 1)).scores()
    assert scores["rmse"] < 0.25 and abs(scores["coverage_90"] - 0.9) < 0.03
    # the true predictive's NLL is that of N(0, 0.2²)
    assert scores["nll"] == pytest.approx(0.5 * math.log(2 * math.pi * 0.04) + 0.5, abs=0.08)
    assert gp.parameters == 4  # constant mean, output scale, one length-scale, noise


def test_it_is_repeatable():
    x, y = sine(100, 2)
    a, b = fit_exact_gp(x, y, iterations=20), fit_exact_gp(x, y, iterations=20)
    assert a.log_marginal_likelihood == b.log_marginal_likelihood and a.noise == b.noise


def test_diabetes_split_0_reaches_its_reference_nll():
    data = load("diabetes")
    gp = fit_exact_gp(*data.train.tensors, iterations=200, lr=0.05)
    scores = gp.predict(*data.test.tensors).scores()
    assert scores["nll"] == pytest.approx(1.13, abs=0.01) and scores["rmse"] < 0.76


def test_bad_input_is_one_line():
    with pytest.raises(ConfigError, match="inputs"):
        fit_exact_gp(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ConfigError, match="iterations"):
        fit_exact_gp(torch.zeros(5, 2), torch.zeros(5), iterations=0)
