"""The width multiplier every model here shares: ``c -> max(1, round(c * width))``.

``width`` scales channel counts (convolutions) and hidden units (MLP); it never changes depth,
strides, kernel sizes, the input channels (taken from the input shape) or the number of classes.
``width = 1.0`` leaves every count unchanged, so the models built are exactly the default ones
(same parameters, and the same initial weights for the same torch seed). Python's ``round``
rounds halves to even (``round(2.5) == 2``).
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_width", "scale_width"]


def check_width(width: float) -> float:
    """``width`` as a float if it is a finite real number > 0 (not a bool); ``ValueError`` otherwise."""
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(float(width))
        or float(width) <= 0
    ):
        raise ValueError(f"width must be > 0, got {width!r} (a finite multiplier of the channel/hidden widths)")
    return float(width)


def scale_width(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: a channel or hidden-unit count scaled by ``width``."""
    return max(1, round(int(channels) * check_width(width)))
