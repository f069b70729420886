"""The rows of the calibration study: a training method, config changes, and how the run predicts.

Several rows share a training: ``rigl+ts`` temperature-scales the ``rigl`` runs, and ``rigl+mcdp``
averages ``S`` draws of ``Z`` over the ``rigl+wdp`` runs (the CigL paper's MC-DP baseline: the
same per-step random mask, test-time Monte Carlo instead of weight averaging).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

@dataclass(frozen=True)
class Row:
    label: str
    method: str
    changes: dict[str, Any] = field(default_factory=dict)
    predict: str = "model"  # "model", "ts" (temperature scaled) or "mc" (Monte Carlo over Z): bayessparse.workflows.predictors
    about: str = ""


ROWS: dict[str, Row] = {
    "dense": Row("dense", "dense", about="dense training"),
    "static": Row("static", "static", about="fixed random ERK topology"),
    "set": Row("SET", "set", about="magnitude drop, random grow"),
    "rigl": Row("RigL", "rigl", about="magnitude drop, gradient grow"),
    "rigl+ts": Row("RigL + TS", "rigl", predict="ts", about="RigL, temperature scaled on the validation split"),
    "rigl+wdp": Row("RigL + W-DP", "rigl-wdp",
                    about="RigL with CigL's per-step random mask; the deterministic p·W at test time"),
    "rigl+mcdp": Row("RigL + MC-DP", "rigl-wdp", predict="mc",
                     about="the W-DP runs, test-time mean over S draws of Z"),
    "dst-ee": Row("DST-EE", "dst-ee", about="gradient grow plus an exploration bonus"),
    "cigl": Row("CigL", "cigl", about="RigL's M, per-step Z, mask-based weight averaging"),
    "cigl-noz": Row("CigL w/o Z", "cigl", {"drop_rate": 0.0}, about="ablation: weight averaging without Z"),
    "cigl-pa": Row("CigL w/o WA", "cigl-pa", about="ablation: the snapshots' predictions averaged, not their weights"),
    "vcigl": Row("vCigL", "vcigl", about="beyond the paper: keep probabilities learned by SVI, averaged network"),
    "vcigl+mc": Row("vCigL + MC", "vcigl", predict="mc",
                    about="the vCigL runs, test-time mean over S draws of the learned q(Z)"),
}
