"""Sparse training as a :class:`~bayessparse.method.TrainingMethod`: static masks or dynamic ones.

``SparseTraining(grow=None)`` is static sparse training (the random initial topology is kept);
with a grow criterion it is dynamic sparse training, whose mask moves on the RigL schedule
(:class:`~bayessparse.sparsity.schedule.UpdateSchedule`), dropping by magnitude and growing by
the criterion: :class:`~bayessparse.sparsity.growth.RandomGrow` gives SET (Mocanu et al., 2018),
:class:`~bayessparse.sparsity.growth.GradientGrow` RigL (Evci et al., 2020) and
:class:`~bayessparse.sparsity.growth.UCBGrow` DST-EE (Huang et al., 2023).

Between updates the only cost over dense training is ``grad *= M`` before each optimizer step:
with weights, gradients and momentum zero at pruned positions, SGD keeps them exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bayessparse.method import TrainingMethod
from bayessparse.sparsity.density import layer_densities, prunable_weights
from bayessparse.sparsity.dst import MaskUpdater
from bayessparse.sparsity.growth import MagnitudeDrop
from bayessparse.sparsity.masks import MaskSet
from bayessparse.sparsity.schedule import UpdateSchedule


class SparseTraining(TrainingMethod):
    """Training under a deterministic mask ``M`` that a grow criterion may move.

    Args:
        name: the method's name (``static``, ``set``, ``rigl``, ``dst-ee``, ...).
        sparsity: target fraction of zero prunable weights.
        layer_density: ``"erk"`` or ``"uniform"`` distribution of the density over layers.
        generator: the run's generator (initial topology, tie breaks, random growth).
        grow: a grow criterion, or ``None`` for a static mask.
        interval, alpha, end_fraction: the update schedule (ΔT, α, T_end / T).
        dense_first: with ``uniform``, keep the first prunable layer dense.
    """

    def __init__(
        self,
        name: str,
        sparsity: float,
        layer_density: str,
        generator: torch.Generator,
        grow: Any = None,
        interval: int = 100,
        alpha: float = 0.3,
        end_fraction: float = 0.75,
        dense_first: bool = False,
    ) -> None:
        self.name = name
        self.sparsity = sparsity
        self.layer_density = layer_density
        self.dense_first = dense_first
        self.generator = generator
        self.grow = grow
        self.interval, self.alpha, self.end_fraction = interval, alpha, end_fraction
        self.masks: MaskSet | None = None
        self.updater: MaskUpdater | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> None:
        shapes = {name: w.shape for name, w in prunable_weights(model).items()}
        densities = layer_densities(self.layer_density, shapes, 1.0 - self.sparsity, dense_first=self.dense_first)
        self.masks = MaskSet(model, densities, self.generator)
        self.schedule = UpdateSchedule(total_steps, self.interval, self.alpha, self.end_fraction)
        if self.grow is not None:
            self.updater = MaskUpdater(self.masks, self.schedule, MagnitudeDrop(), self.grow, self.generator)

    def wants_update(self, step: int) -> bool:
        return self.updater is not None and self.schedule.is_update_step(step)

    def update(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        return self.updater.update(step, optimizer)

    def before_optimizer_step(self) -> None:
        self.masks.mask_grads_()

    def state_dict(self) -> dict[str, Any]:
        state = {"masks": self.masks.state_dict()}
        if self.updater is not None:
            state["updater"] = self.updater.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"])
        if self.updater is not None:
            self.updater.load_state_dict(state["updater"])
