"""Seed intervals: Student-t means with 95 % half-widths, paired differences, formatting."""

import math

import numpy as np
import pytest
import scipy.stats

from bayessparse.stats import Interval, interval, paired_difference


def _scipy_interval(values, level=0.95):
    values = np.asarray(values, dtype=float)
    mean = values.mean()
    low, high = scipy.stats.t.interval(level, len(values) - 1, loc=mean, scale=scipy.stats.sem(values))
    return mean, (high - low) / 2


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_interval_matches_scipy_student_t(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        values = rng.normal(rng.uniform(-3, 3), rng.uniform(0.01, 2), size=n)
        got = interval(values.tolist())
        mean, half = _scipy_interval(values)
        assert got.n == n
        assert got.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert got.half_width == pytest.approx(half, rel=1e-10)
        assert (got.low, got.high) == pytest.approx((mean - half, mean + half), rel=1e-10, abs=1e-12)


def test_interval_other_level_matches_scipy():
    values = [0.91, 0.93, 0.92, 0.95]
    got = interval(values, level=0.9)
    assert got.half_width == pytest.approx(_scipy_interval(values, level=0.9)[1], rel=1e-10)
    assert got.half_width < interval(values).half_width


def test_interval_accepts_tuples_and_numpy_values():
    values = (np.float32(0.5), 1, 1.5)
    got = interval(values)
    assert got.mean == pytest.approx(1.0) and got.n == 3
    assert got.half_width == pytest.approx(_scipy_interval([0.5, 1.0, 1.5])[1], rel=1e-10)


def test_one_value_has_nan_half_width_and_excludes_nothing():
    got = interval([0.7])
    assert got.mean == 0.7 and got.n == 1 and math.isnan(got.half_width)
    assert not got.excludes_zero()
    assert interval([5.0]).excludes_zero() is False  # far from 0, but no width to be sure of it
    assert got.format() == "0.7000"
    assert got.format(2) == "0.70"


def test_no_values_raise():
    with pytest.raises(ValueError):
        interval([])


def test_excludes_zero():
    assert Interval(0.10, 0.05, 3).excludes_zero()
    assert Interval(-0.10, 0.05, 3).excludes_zero()
    assert not Interval(0.10, 0.15, 3).excludes_zero()
    assert not Interval(-0.10, 0.15, 3).excludes_zero()
    assert not Interval(0.10, 0.10, 3).excludes_zero()  # touches 0: not strictly one side
    assert not Interval(0.10, math.inf, 3).excludes_zero()


def test_format_and_to_dict():
    got = Interval(0.123456, 0.0123, 3)
    assert got.format() == "0.1235 ± 0.0123"
    assert got.format(2) == "0.12 ± 0.01"
    assert got.to_dict() == {"mean": 0.123456, "ci95": 0.0123, "n": 3}


def test_paired_difference_is_the_interval_of_per_seed_differences():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.02, 6), rng.normal(0.88, 0.02, 6)
    got = paired_difference(a.tolist(), b.tolist())
    expected = interval((a - b).tolist())
    assert got == expected
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_paired_difference_cancels_a_shared_seed_effect():
    rng = np.random.default_rng(1)
    n = 5
    seed_effect = rng.normal(0, 0.05, n)  # large, shared by both methods
    a = 0.90 + seed_effect + rng.normal(0, 0.002, n)
    b = 0.89 + seed_effect + rng.normal(0, 0.002, n)
    paired = paired_difference(a.tolist(), b.tolist())
    unpaired = scipy.stats.ttest_ind(a, b).confidence_interval(0.95)
    unpaired_half = (unpaired.high - unpaired.low) / 2
    assert paired.mean == pytest.approx(a.mean() - b.mean())
    assert paired.half_width < unpaired_half / 5
    assert paired.excludes_zero() and paired.low > 0  # A is better, measured with confidence
    assert unpaired.low < 0 < unpaired.high  # which the unpaired interval cannot tell


def test_paired_difference_of_one_seed():
    got = paired_difference([0.9], [0.8])
    assert got.mean == pytest.approx(0.1) and got.n == 1 and math.isnan(got.half_width)
    assert not got.excludes_zero()


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([], [1.0]), ([1.0, 2.0, 3.0], [1.0, 2.0])])
def test_paired_difference_length_mismatch(a, b):
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference(a, b)
