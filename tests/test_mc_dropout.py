"""Dense MC dropout on a grid: the validation-chosen precision finds a known noise, and its intervals cover."""

import pytest
import torch

from bayessparse.baselines.mc_dropout import fit_grid
from bayessparse.errors import ConfigError


def sine(n, seed, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 6 - 3
    return x, torch.sin(2 * x[:, 0]) + noise * torch.randn(n, generator=g, dtype=torch.float64)


def test_the_chosen_precision_matches_the_noise_and_the_intervals_cover():
    (x, y), (xv, yv), (xt, yt) = sine(400, 0), sine(200, 1), sine(2000, 2)
    grid = fit_grid(x, y, rates=(0.01, 0.05), precisions=(1.0, 2.0, 4.0, 8.0, 16.0), epochs=150, seed=0)
    assert len(grid.rates) == 10 and grid.rates.tolist()[:5] == [0.01] * 5
    val = grid.predict(xv, yv, samples=100)
    best = min(range(10), key=lambda g: val[g].scores()["nll"])
    assert float(grid.precisions[best]) in (2.0, 4.0, 8.0)  # the true noise precision is 1 / 0.25 = 4
    test = grid.predict(xt, yt, samples=200)[best]
    assert torch.all(test.variances == 1 / grid.precisions[best])
    scores = test.scores()
    assert 0.83 <= scores["coverage_90"] <= 0.95 and scores["rmse"] < 0.6


def test_the_grid_is_repeatable_and_scale_only_changes_units():
    x, y = sine(100, 3)
    a, b = fit_grid(x, y, epochs=3, seed=1), fit_grid(x, y, epochs=3, seed=1)
    assert torch.equal(a.net.w1, b.net.w1)
    plain, scaled = a.predict(x, y, samples=10)[0].scores(), a.predict(x, y, scale=(5.0, 3.0), samples=10)[0].scores()
    assert scaled["rmse"] == pytest.approx(3 * plain["rmse"]) and scaled["coverage_90"] == plain["coverage_90"]
    assert a.tau(0, (5.0, 3.0)) == pytest.approx(float(a.precisions[0]) / 9)


def test_bad_grids_are_refused():
    x, y = sine(10, 4)
    with pytest.raises(ConfigError, match="rates"):
        fit_grid(x, y, rates=(1.0,))
    with pytest.raises(ConfigError, match="inputs"):
        fit_grid(x[:, 0], y)
