"""The optimizer of a run and its learning-rate schedule (Goyal et al. 2017's warm-up; cosine or step decay).

SGD with (Nesterov) momentum, weight decay on the prunable (conv / linear) weights only, never on biases or
norms; the learning rate is ``cfg.lr`` times :func:`lr_factor` of the step: a linear warm-up over
``warmup_epochs``, then ``½ (1 + cos(π τ))`` over the remaining fraction ``τ`` of training (``cosine``),
``γ^k`` after the ``k``-th milestone (``step``) or 1 (``constant``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from bayessparse.config import TrainConfig
from bayessparse.sparsity.density import prunable_weights

__all__ = ["lr_factor", "make_optimizer"]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with weight decay on the prunable (conv / linear) weights only, never on biases or norms."""
    decayed = {id(p) for p in prunable_weights(model).values()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at step ``t``: linear warm-up, then cosine / step / constant."""
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    milestones = [int(m * total) for m in cfg.step_milestones]

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))
        if cfg.lr_schedule == "step":
            return cfg.step_gamma ** sum(t >= m for m in milestones)
        return 1.0

    return factor
