"""The plain PyTorch training step: masked-dense SGD under the run's method (the default engine, ``plain``).

One step is the task's negative log-likelihood of a mini-batch (:meth:`bayessparse.tasks.Task.loss`) and its
backward pass inside the method's forward context, then the :class:`~bayessparse.sparsifier.Sparsifier`'s step
(SGD under the mask, or a structure update) and the learning-rate schedule (:mod:`bayessparse.optim`). It is
the step a user's own loop takes with the drop-in API; the other engines reuse it where they need the dense
step (the sparse-kernel engine on mask-update steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from bayessparse import distributed
from bayessparse.errors import TrainingDiverged
from bayessparse.optim import lr_factor, make_optimizer

__all__ = ["PlainEngine", "plain_step"]


def plain_step(run: Any, x: Tensor, y: Tensor, total: int | None = None) -> float:
    """One masked-dense step of ``run`` on ``(x, y)``; returns the mini-batch loss. ``total``: the global
    batch's size when ``(x, y)`` is this process's part of it (a distributed run)."""
    run.optimizer.zero_grad(set_to_none=True)
    with run.sparsifier.forward():
        out = (run.net or run.model)(x)
        # a rank whose part of a short last batch is empty still joins the gradient all-reduce
        loss = run.task.loss(run.model, out, y) if len(y) else out.sum() * 0.0
        if run.world.distributed:  # this rank's share of the global batch (no extra op in one process)
            (loss * distributed.loss_weight(len(y), total or len(y), run.world)).backward()
        else:
            loss.backward()
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss became {value} at epoch {run.epoch + 1}, step {run.step}")
    step = run.step
    if run.sparsifier.step() is not None and run.world.distributed:
        distributed.check_same_masks(run.sparsifier.masks, step, run.world, run.device)
    run.scheduler.step()
    return value


class PlainEngine:
    """The ``plain`` engine: :func:`plain_step` with SGD (:func:`~bayessparse.optim.make_optimizer`) and its
    per-step schedule (:func:`~bayessparse.optim.lr_factor`). It has no state of its own."""

    #: whether a run on several processes (torchrun) can take this engine's step
    distributes = True

    def __init__(self, cfg: Any, model: nn.Module, num_data: int, steps_per_epoch: int) -> None:
        self.cfg, self.model = cfg, model
        self.optimizer: torch.optim.Optimizer = make_optimizer(model, cfg)
        self.scheduler: LambdaLR | None = LambdaLR(self.optimizer, lr_factor(cfg, steps_per_epoch))

    def bind(self, method: Any) -> None:
        """Called once the method's masks exist."""

    def step(self, run: Any, x: Tensor, y: Tensor, total: int | None = None) -> float:
        return plain_step(run, x, y, total)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        if state:
            raise ValueError(f"the plain engine has no state, got keys {sorted(state)}")
