"""Intervals over seeds: the mean with its 95 % confidence interval, and paired differences.

With ``n`` seeds giving values ``x_1..x_n`` (mean ``x̄``, sample standard deviation ``s``), the
interval is Student's ``x̄ ± t_{0.975, n-1} · s / √n``. A *paired* difference between two methods
trained with the same seeds (same data order, same initial topology) takes ``d_i = a_i − b_i``
per seed first and gives the interval of ``d̄``: seed-to-seed variation shared by both methods
cancels, so the paired interval is the honest one for "is A better than B". With one seed the
half-width is undefined (``nan``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """``mean ± half_width`` over ``n`` values (``half_width`` is nan for ``n = 1``)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """The interval lies strictly on one side of 0 (a difference measured with confidence)."""
        return math.isfinite(self.half_width) and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 4) -> str:
        if not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95": self.half_width, "n": self.n}


def interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (at least one)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("interval of no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, math.nan, 1)
    half = student_t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Interval of the mean of ``a_i − b_i`` (the same seeds in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return interval([x - y for x, y in zip(a, b)], level)
