"""Mask-based weight averaging (CigL, Lei et al., ICLR 2023, §3.2).

Once the topology ``M`` has stopped moving and training passed ``T*``, a snapshot of the
weights is added to an equal-weight running average once per epoch (as in SWA, Izmailov et al.
2018, whose :class:`torch.optim.swa_utils.AveragedModel` keeps the average). The output is one
sparse network ``W_CigL`` that stands in for the posterior mean of ``Z ⊙ M ⊙ U``; its
BatchNorm statistics are re-estimated on the training set (SWA's ``update_bn``).

Two snapshot rules, both averaging the weights the random mask lets through:

* ``"sampled"`` (the official code): each snapshot is ``Z ⊙ W`` with a fresh ``Z``.
* ``"expected"`` (default): each snapshot is ``E_Z[Z ⊙ W] = p·W``. The same expectation as
  ``"sampled"`` without its Monte-Carlo noise; with few snapshots the sampled average zeroes
  weights that happened to be dropped in every snapshot (a fraction ``(1-p)^n`` of them), so
  the averaged model would lose part of ``M``. ``"expected"`` keeps the support exactly ``M``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.random_mask import RandomMask

SNAPSHOTS = ("expected", "sampled")


class MaskedWeightAverage:
    """Equal-weight average of randomly-masked weight snapshots."""

    def __init__(self, model: nn.Module, random_mask: RandomMask, snapshot: str = "expected") -> None:
        if snapshot not in SNAPSHOTS:
            raise ValueError(f"snapshot must be one of {SNAPSHOTS}, got {snapshot!r}")
        self.random_mask = random_mask
        self.snapshot = snapshot
        self.average = AveragedModel(model, use_buffers=False)

    @property
    def count(self) -> int:
        return int(self.average.n_averaged)

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        """Add the current model's masked weights to the average."""
        if self.snapshot == "sampled":
            self.random_mask.thin_()
            self.average.update_parameters(model)
            self.random_mask.restore_()
        else:  # mean(p·W_i) = p·mean(W_i): average W, scale once in averaged_model
            self.average.update_parameters(model)

    def averaged_model(self, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        """A copy of the averaged network with re-estimated BatchNorm statistics."""
        model = copy.deepcopy(self.average.module)
        if self.snapshot == "expected":
            with torch.no_grad():
                torch._foreach_mul_(list(prunable_weights(model).values()), self.random_mask.keep)
        recalibrate(model)
        return model.eval()

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
