"""Uncertainty quantification: calibration metrics and reliability diagrams.

The metrics (:mod:`bayessparse.uncertainty.metrics`) are re-exported here; the plotting helpers
live in :mod:`bayessparse.uncertainty.reliability` (imported on demand, it pulls in matplotlib).
"""

from bayessparse.uncertainty.metrics import (
    accuracy,
    brier,
    calibration_bins,
    ece_from_bins,
    expected_calibration_error,
    nll,
    nll_from_logits,
    predictive_mean,
    summary,
)

__all__ = [
    "accuracy",
    "brier",
    "calibration_bins",
    "ece_from_bins",
    "expected_calibration_error",
    "nll",
    "nll_from_logits",
    "predictive_mean",
    "summary",
]
