"""The rows of the UCI benchmark: what each trains, on which grid, for how long.

A row is one method under the benchmark's protocol. Its hyper-parameters come from :attr:`Row.grid`, searched
per split on the validation part (lowest validation NLL of the row's own predictive, :mod:`.fitting`); a row
whose hyper-parameters are learned (the GPs' kernels by their marginal likelihood or ELBO) has a one-point grid.

==================  =============================================================================
row                 what it trains
==================  =============================================================================
dense               the MLP (two hidden layers of 256), MAP, learned noise scale
mc-dropout          the protocol's reference: one hidden layer of 50, dropout on inputs and units,
                    rate and precision from :data:`~bayessparse.baselines.mc_dropout.DROPOUT_RATES` ×
                    :data:`~bayessparse.baselines.mc_dropout.PRECISIONS`, 1 000 passes at a test point
rigl-90 / -95       the MLP at 90 / 95 % sparsity, RigL, MAP
cigl-90 / -95       CigL at 90 / 95 %, the mixture over 32 draws of ``Z``
vcigl-90            vCigL at 90 %, the mixture over 32 draws of its learned ``q(Z)`` (the grid's points
                    of learning rate 0.003 only: an SVI step costs about three plain ones)
exact-gp            ARD RBF exact GP (:mod:`bayessparse.baselines.exact_gp`)
bayesian-ridge      Bayesian linear regression, its prior and noise precisions by evidence maximisation
                    (scikit-learn's ``BayesianRidge``; the linear reference a network must beat)
dspp / dgp          GPyTorch's DSPP and two-layer doubly stochastic deep GP
==================  =============================================================================

The network grid is learning rate × weight decay (:data:`NETWORK_GRID`); the trainer's other settings are
its defaults (SGD, Nesterov momentum 0.9, cosine schedule, batch 32) and every network trains for about
:data:`NETWORK_STEPS` steps (``epochs = ⌈steps / steps per epoch⌉``), so a small set runs more epochs.
``--quick`` keeps every row but trains each for a tenth as long on a two-point grid (:func:`budget`).
The budgets were set so that the full benchmark fits its time target on 2 cores (docs/results.md, T4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bayessparse.errors import ConfigError

__all__ = ["DEFAULT_ROWS", "NETWORK_GRID", "NETWORK_STEPS", "ROWS", "Budget", "Row", "budget", "check_rows", "epochs_for"]

#: the network rows' grid: learning rate × weight decay
NETWORK_GRID: tuple[dict[str, float], ...] = tuple(
    {"lr": lr, "weight_decay": wd} for lr in (0.003, 0.01) for wd in (1e-4, 1e-3))
#: optimizer steps of a network row (batch 32)
NETWORK_STEPS = 1500


@dataclass(frozen=True)
class Budget:
    """How long and how thoroughly a row trains: the full benchmark's or ``--quick``'s."""

    network_steps: int = NETWORK_STEPS
    network_grid: tuple[dict[str, float], ...] = NETWORK_GRID
    dropout_steps: int = 4000  # MC dropout, at most 400 epochs (Gal and Ghahramani's 10× epochs)
    dropout_samples: int = 500
    gp_iterations: int = 100  # exact GP, full-batch Adam at rate 0.1
    deep_gp_steps: int = 400  # DSPP / DGP, batch 64
    mc_samples: int = 32  # draws of Z for CigL / vCigL's mixture

    def to_dict(self) -> dict[str, Any]:
        return {"network_steps": self.network_steps, "network_grid": [dict(p) for p in self.network_grid],
                "dropout_steps": self.dropout_steps, "dropout_samples": self.dropout_samples,
                "gp_iterations": self.gp_iterations, "deep_gp_steps": self.deep_gp_steps,
                "mc_samples": self.mc_samples}


def budget(quick: bool) -> Budget:
    """The full benchmark's budget, or ``--quick``'s: a tenth of the steps and a two-point network grid."""
    if not quick:
        return Budget()
    return Budget(network_steps=150, network_grid=NETWORK_GRID[1::2], dropout_steps=400, dropout_samples=50,
                  gp_iterations=10, deep_gp_steps=40, mc_samples=8)


@dataclass(frozen=True)
class Row:
    """One row: ``kind`` is ``network`` (the trainer, ``method`` at ``sparsity``), ``mc-dropout``,
    ``exact-gp``, ``dspp`` or ``dgp``; ``mc``: predict with the mixture over ``Z``."""

    name: str
    label: str
    kind: str
    method: str = "dense"
    sparsity: float = 0.0
    mc: bool = False
    lrs: tuple[float, ...] | None = None  # a network row searching only these learning rates of the grid

    def grid(self, plan: "Budget") -> tuple[dict[str, float], ...]:
        """The points of ``plan``'s network grid this row searches."""
        return tuple(p for p in plan.network_grid if self.lrs is None or p["lr"] in self.lrs)

    @property
    def is_network(self) -> bool:
        """Trained by the project's trainer (the rows T3 speaks of, with MC dropout)."""
        return self.kind == "network"


def _net(name: str, label: str, method: str, sparsity: float = 0.0, mc: bool = False,
         lrs: tuple[float, ...] | None = None) -> Row:
    return Row(name, label, "network", method, sparsity, mc, lrs=lrs)


ROWS: dict[str, Row] = {r.name: r for r in (
    _net("dense", "dense MAP", "dense"),
    Row("mc-dropout", "dense MC dropout (50 units)", "mc-dropout"),
    _net("rigl-90", "RigL 90 %", "rigl", 0.9),
    _net("cigl-90", "CigL 90 % (MC over Z)", "cigl", 0.9, mc=True),
    _net("vcigl-90", "vCigL 90 % (MC over q(Z))", "vcigl", 0.9, mc=True, lrs=(0.003,)),  # SVI: 3× a step's cost
    _net("rigl-95", "RigL 95 %", "rigl", 0.95),
    _net("cigl-95", "CigL 95 % (MC over Z)", "cigl", 0.95, mc=True),
    Row("exact-gp", "exact GP (ARD RBF)", "exact-gp"),
    Row("bayesian-ridge", "Bayesian linear regression", "bayesian-ridge"),
    Row("dspp", "DSPP (2 layers)", "dspp"),
    Row("dgp", "deep GP (2 layers, DSVI)", "dgp"),
)}


#: the rows a benchmark runs when none are named: all but Bayesian linear regression, which ``--rows`` adds
DEFAULT_ROWS = tuple(name for name in ROWS if name != "bayesian-ridge")


def check_rows(names: list[str]) -> list[Row]:
    """The rows named, in :data:`ROWS` order; an unknown name is a one-line error naming ``--rows``."""
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise ConfigError(f"--rows: unknown row(s) {', '.join(unknown) or '(none given)'} "
                          f"(choose from: {', '.join(ROWS)})")
    return [r for n, r in ROWS.items() if n in names]


def epochs_for(steps: int, rows: int, batch_size: int) -> int:
    """Epochs of about ``steps`` optimizer steps over ``rows`` training rows in batches of ``batch_size``."""
    return max(1, math.ceil(steps / math.ceil(rows / batch_size)))
