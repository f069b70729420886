"""Temperature scaling: recovers a known temperature, never hurts the validation NLL, handles (S, N, C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bayessparse.uncertainty import metrics as M
from bayessparse.uncertainty.temperature import (
    DEFAULT_BOUNDS,
    apply_temperature,
    fit_temperature,
    predictive_logits,
    temperature_nll,
)


def calibrated(n: int, c: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z): calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g)
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(-1)
    return z, y


@pytest.mark.parametrize("seed,c", [(0, 10), (1, 3)])
def test_recovers_overconfidence_factor_three(seed, c):
    z, y = calibrated(20000, c, seed)
    hot = 3.0 * z  # over-confident by a factor 3
    t = fit_temperature(hot, y)
    assert t == pytest.approx(3.0, rel=0.05)
    before, after = M.nll_from_logits(hot, y), M.nll(apply_temperature(hot, t), y)
    assert after < before - 0.1
    assert after == pytest.approx(temperature_nll(hot, y, t), rel=1e-6)
    ece_before = M.expected_calibration_error(hot.softmax(-1), y)
    assert M.expected_calibration_error(apply_temperature(hot, t), y) < 0.5 * ece_before


def test_calibrated_logits_give_t_near_one_and_underconfident_below_one():
    z, y = calibrated(20000, 5, 2)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.05)
    assert fit_temperature(z / 2, y) == pytest.approx(0.5, rel=0.05)


def test_temperature_is_the_nll_minimiser():
    z, y = calibrated(3000, 4, 3)
    z = 2.5 * z
    t = fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.5), np.log(6.0), 400))
    best = grid[np.argmin([temperature_nll(z, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)
    assert temperature_nll(z, y, t) <= min(temperature_nll(z, y, g) for g in grid) + 1e-9


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(2, 6), st.floats(0.01, 30.0), st.integers(0, 2**16))
def test_never_increases_validation_nll(n, c, scale, seed):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    t = fit_temperature(z, y)
    assert DEFAULT_BOUNDS[0] <= t <= DEFAULT_BOUNDS[1]
    assert temperature_nll(z, y, t) <= temperature_nll(z, y, 1.0) + 1e-12


def test_separable_validation_set_is_clipped():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, -1.0]])
    y = torch.tensor([0, 1, 0])
    t = fit_temperature(z, y)
    # the NLL keeps falling as T -> 0; LBFGS stops once it is flat (NLL ~ 1e-11), never below the bound
    assert DEFAULT_BOUNDS[0] <= t < 0.25
    assert temperature_nll(z, y, t) < 1e-8
    assert fit_temperature(z, y, bounds=(0.5, 2.0)) == 0.5
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 3.0))


def test_accuracy_unchanged_and_identity_at_one():
    z, y = calibrated(500, 6, 4)
    for t in (0.3, 1.0, 4.0):
        assert torch.equal(apply_temperature(z, t).argmax(-1), z.argmax(-1))
    assert torch.allclose(apply_temperature(z, 1.0), z.softmax(-1))
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(z, 0.0)


def test_per_sample_logits_are_fitted_on_the_log_predictive_mean():
    g = torch.Generator().manual_seed(5)
    z = 3 * torch.randn(4, 2000, 5, generator=g)  # S = 4 disagreeing samples
    y = torch.multinomial(z.softmax(-1).mean(0), 1, generator=g).squeeze(-1)
    zbar = predictive_logits(z)
    assert torch.allclose(zbar.softmax(-1), z.double().softmax(-1).mean(0), atol=1e-12)
    t = fit_temperature(z, y)
    assert t == pytest.approx(fit_temperature(z.softmax(-1).mean(0).log(), y), rel=1e-4)
    assert t == pytest.approx(1.0, rel=0.1)  # labels come from the predictive mean: calibrated
    assert torch.allclose(apply_temperature(z, t), (zbar / t).softmax(-1))
    # S = 1 is ordinary temperature scaling
    assert fit_temperature(z[:1], y) == pytest.approx(fit_temperature(z[0], y), rel=1e-6)
    assert temperature_nll(z, y, 1.0) == pytest.approx(M.nll_from_logits(z, y), rel=1e-9)
    assert F.cross_entropy(zbar, y).item() == pytest.approx(M.nll(z.softmax(-1), y), rel=1e-5)
