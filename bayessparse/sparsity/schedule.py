"""When the sparse topology changes, and by how much (Evci et al., "Rigging the Lottery", ICML 2020).

Every ``interval`` (ΔT, default 100) optimizer steps while ``t < T_end = end_fraction * T`` (default 0.75 T), a
fraction

    f(t) = (alpha / 2) * (1 + cos(pi * t / T_end))          (alpha = 0.3 by default)

of each sparse layer's active weights is dropped and the same number regrown (``k_l = floor(f(t) * nnz_l)``).
RigL takes no optimizer step on an update step; that choice belongs to the training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bayessparse.errors import ConfigError

__all__ = ["UpdateSchedule"]


@dataclass(frozen=True)
class UpdateSchedule:
    """Cosine-annealed drop/grow schedule of RigL.

    Args:
        total_steps: ``T``, the total number of optimizer steps of the run (``>= 0``).
        interval: ``ΔT``, steps between mask updates (``>= 1``).
        alpha: initial update fraction (``0 < alpha <= 1``).
        end_fraction: ``T_end / T`` (``0 < end_fraction <= 1``); no update at or after ``T_end``.
    """

    total_steps: int
    interval: int = 100
    alpha: float = 0.3
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 0:
            raise ConfigError(f"total_steps must be an integer >= 0, got {self.total_steps!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ConfigError(f"update interval must be an integer >= 1, got {self.interval!r}")
        if not (0.0 < float(self.alpha) <= 1.0):
            raise ConfigError(f"update alpha must be in (0, 1], got {self.alpha!r}")
        if not (0.0 < float(self.end_fraction) <= 1.0):
            raise ConfigError(f"update end_fraction must be in (0, 1], got {self.end_fraction!r}")

    @property
    def t_end(self) -> int:
        """``T_end = int(end_fraction * total_steps)``: the first step at which no update happens any more."""
        return int(self.end_fraction * self.total_steps)

    def is_update_step(self, t: int) -> bool:
        """True iff ``t > 0``, ``t % interval == 0`` and ``t < T_end``."""
        return 0 < t < self.t_end and t % self.interval == 0

    def fraction(self, t: int) -> float:
        """``f(t) = alpha/2 * (1 + cos(pi * t / T_end))`` for ``t < T_end``; 0 for ``t >= T_end``."""
        t_end = self.t_end
        if t >= t_end:
            return 0.0
        return 0.5 * self.alpha * (1.0 + math.cos(math.pi * t / t_end))
