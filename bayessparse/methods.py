"""The registry of training methods selectable with ``--method``.

A method is built from the run's config, its model and the run's random generator (all of a
method's randomness goes through that generator, whose state the checkpoint saves). Adding a
method is one entry here; a new dynamic-sparse method is usually just a new grow criterion.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from bayessparse.config import TrainConfig
from bayessparse.errors import ConfigError
from bayessparse.method import TrainingMethod
from bayessparse.sparsity.cigl import CigL
from bayessparse.sparsity.growth import GradientGrow, RandomGrow, UCBGrow
from bayessparse.sparsity.prediction_average import CigLPredictionAverage
from bayessparse.sparsity.training import SparseTraining
from bayessparse.sparsity.variational_cigl import VariationalCigL

MethodFactory = Callable[[TrainConfig, nn.Module, torch.Generator], TrainingMethod]


def _sparse(cfg: TrainConfig, generator: torch.Generator) -> dict[str, Any]:
    """The constructor arguments every sparse method shares."""
    return dict(
        name=cfg.method, sparsity=cfg.sparsity, layer_density=cfg.layer_density, generator=generator,
        interval=cfg.update_interval, alpha=cfg.update_alpha, end_fraction=cfg.update_end,
        dense_first=cfg.dense_first,
    )


METHODS: dict[str, MethodFactory] = {
    "dense": lambda cfg, model, g: TrainingMethod(),
    "static": lambda cfg, model, g: SparseTraining(**_sparse(cfg, g)),
    "set": lambda cfg, model, g: SparseTraining(**_sparse(cfg, g), grow=RandomGrow()),
    "rigl": lambda cfg, model, g: SparseTraining(**_sparse(cfg, g), grow=GradientGrow()),
    "dst-ee": lambda cfg, model, g: SparseTraining(**_sparse(cfg, g), grow=UCBGrow(c=cfg.explore_c)),
    "cigl": lambda cfg, model, g: CigL(**_sparse(cfg, g), drop_rate=cfg.drop_rate, averaging_start=cfg.averaging_start,
                                       fused=cfg.fused_mask),  # granted by the Sparsifier where the kernel runs
    # CigL's baselines and ablation (Lei et al. 2023, §5). RigL + weight dropout: CigL's per-step Z, no
    # averaging (the one "snapshot" is the last epoch: the deterministic p·W, BatchNorm re-estimated).
    "rigl-wdp": lambda cfg, model, g: CigL(**_sparse(cfg, g), drop_rate=cfg.drop_rate, averaging_start=1.0),
    "cigl-pa": lambda cfg, model, g: CigLPredictionAverage(
        **_sparse(cfg, g), drop_rate=cfg.drop_rate, averaging_start=cfg.averaging_start),
    # Beyond the paper: CigL whose keep probabilities are learned by SVI (trained by the Pyro engine).
    "vcigl": lambda cfg, model, g: VariationalCigL(
        **_sparse(cfg, g), guide=cfg.guide, keep_prior=cfg.keep_prior, keep_init=cfg.keep_init,
        keep_shape=cfg.keep_shape, keep_temperature=cfg.keep_temperature, averaging_start=cfg.averaging_start),
}


def build_method(cfg: TrainConfig, model: nn.Module, generator: torch.Generator) -> TrainingMethod:
    check_method(cfg.method)
    return METHODS[cfg.method](cfg, model, generator)


def check_method(name: str) -> None:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (choose from: {', '.join(METHODS)})")
