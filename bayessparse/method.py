"""The hooks a training method plugs into the training step.

The trainer (:mod:`bayessparse.train`) runs one loop for every method. A step is::

    with method.forward(model):          # e.g. CigL thins the weights by a random mask Z
        loss = cross_entropy(model(x), y)
        loss.backward()
    if method.wants_update(t):           # e.g. RigL: drop/grow on the dense gradient,
        method.update(t, optimizer)      #   and no optimizer step on this step
    else:
        method.before_optimizer_step()   # e.g. mask the gradients so pruned weights stay 0
        optimizer.step()
        method.after_optimizer_step()

:class:`TrainingMethod` itself is plain dense training: every hook does nothing. A sparse
method overrides the hooks it needs and nothing else; the trainer never asks which method it
runs.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import nn


class TrainingMethod:
    """Dense training; the base class of every method."""

    name = "dense"
    #: whether the evaluated model can be a regressor (a method whose output averages class probabilities cannot)
    regression = True

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> None:
        """Called once, after the model and optimizer exist and before any step (and before a resume)."""

    @contextlib.contextmanager
    def forward(self, model: nn.Module) -> Iterator[None]:
        """Context around the forward and backward pass of a step."""
        yield

    def wants_update(self, step: int) -> bool:
        """Whether ``step`` is a structure-update step (no optimizer step is taken on it)."""
        return False

    def update(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Move the structure, using the gradients of the current mini-batch."""
        return {}

    def before_optimizer_step(self) -> None:
        """Called after the backward pass, before ``optimizer.step()``."""

    def after_optimizer_step(self) -> None:
        """Called right after ``optimizer.step()``."""

    def end_of_epoch(self, epoch: int, step: int) -> None:
        """Called after each epoch (``epoch`` counts from 1, ``step`` is the global step)."""

    def final_model(self, model: nn.Module, recalibrate: Any) -> nn.Module:
        """The model to evaluate after training.

        ``recalibrate(model)`` re-estimates BatchNorm statistics on the training data; methods
        that build a new set of weights (CigL's weight average) call it on that model.
        """
        return model

    def current_model(self, model: nn.Module, recalibrate: Any) -> nn.Module:
        """The model the run would output if training stopped now (measured after every epoch).

        The default is the training network itself. Methods whose :meth:`final_model` is built
        from the weights (CigL: ``p·W`` or the running average, with re-estimated BatchNorm) build
        the same thing here, so the per-epoch validation history measures what the run outputs.
        """
        return model

    def evaluated_structure(self, model: nn.Module) -> nn.Module:
        """An (untrained) copy of the evaluated model's structure, to load a saved ``final_model`` into."""
        return copy.deepcopy(model)

    def summary(self) -> dict[str, Any]:
        """Method-specific numbers for the run's ``metrics.json`` (e.g. learned keep probabilities)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' has no state, got keys {sorted(state)}")
