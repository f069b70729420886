"""CigL's ablation "without weight averaging": average the snapshots' predictions instead of their weights.

Lei et al. (ICLR 2023, §5, ablations) contrast mask-based *weight* averaging with averaging the
*predictions* of the same snapshots. With snapshots ``W_1..W_K`` (one per epoch after ``T*``,
exactly those CigL averages) the two outputs are

    weight averaging      p(y | x) = softmax f(x; p·(1/K) Σ_k W_k)                (one network)
    prediction averaging  p(y | x) = (1/K) Σ_k softmax f(x; p·W_k)                (K networks)

each snapshot with its own re-estimated BatchNorm statistics. Prediction averaging costs ``K``
networks at test time; weight averaging is CigL's claim that one network does as well.

:class:`SnapshotEnsemble` is the K-network predictor as one ``nn.Module`` whose output is the
log of the averaged probabilities, ``log (1/K) Σ_k softmax f_k(x)``, so every consumer of logits
(``predict_probs``, temperature scaling, the run folder) reads the prediction average unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bayessparse.sparsity.cigl import CigL, expected_network


class SnapshotEnsemble(nn.Module):
    """``forward(x) = log (1/K) Σ_k softmax(member_k(x))``: a prediction average as a single module."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a SnapshotEnsemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(m(x), dim=-1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


class CigLPredictionAverage(CigL):
    """CigL whose output is the prediction average of its snapshots (see the module docstring).

    Training is CigL's, step for step (the same random draws, so the same weights for the same
    seed); only the epoch-end bookkeeping differs: each snapshot is kept whole instead of being
    folded into a running weight average.
    """

    regression = False  # its output averages the snapshots' class probabilities

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(model, optimizer, total_steps, steps_per_epoch)
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def end_of_epoch(self, epoch: int, step: int) -> None:
        if step >= self.averaging_step:
            self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def _ensemble(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> SnapshotEnsemble:
        members = []
        for state in self.snapshots:
            net = copy.deepcopy(model)
            net.load_state_dict(state)
            members.append(expected_network(net, self.random_mask.keep, recalibrate))
        return SnapshotEnsemble(members).eval()

    def final_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        if not self.snapshots:  # only if training stopped before its last epoch
            self.end_of_epoch(0, self.averaging_step)
        return self._ensemble(model, recalibrate)

    def current_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        if self.snapshots:
            return self._ensemble(model, recalibrate)
        return expected_network(model, self.random_mask.keep, recalibrate)

    def evaluated_structure(self, model: nn.Module) -> nn.Module:
        return SnapshotEnsemble([copy.deepcopy(model) for _ in range(max(1, len(self.snapshots)))])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.snapshots = list(state["snapshots"])
