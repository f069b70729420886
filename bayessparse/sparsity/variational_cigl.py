"""Variational CigL (``vcigl``): RigL's topology, a random mask whose keep probabilities are learned.

Beyond the paper. CigL (Lei et al., ICLR 2023) draws ``Z ~ Bernoulli(p)`` with a fixed drop rate
that has to be tuned. Here ``Z`` has a prior ``Bernoulli(p₀)`` and a variational factor
``q(Z) = RelaxedBernoulliStraightThrough(τ, sigmoid θ)`` on the active weights of ``M`` (Concrete
dropout, Gal, Hron & Kendall, NeurIPS 2017), with ``θ`` per layer or per output unit, fitted by
SVI with the rest of the guide (:class:`bayessparse.ppl.guide.SparseGuide`, ``keep="learned"``).
Per example, the objective is

    E_q[log p(y | x, Z ⊙ W)]  −  (1/N)·Σ_{kept} U²/(2σ²)  −  (1/N)·Σ_{M=1} KL(Bern(sigmoid θ) ‖ Bern(p₀))

(point-mass family; with the Gaussian family the middle term is the Gaussian divergence of the
kept weights). The middle term's expectation over ``Z`` is ``sigmoid(θ)·wd·‖M⊙U‖²/2``: the prior
precision follows the keep probability, which is what stops ``θ`` from simply growing to keep every
weight. ``p₀ = 0.5`` makes the last term ``log 2 − H(q)``, Concrete dropout's entropy term.

``M`` moves by RigL drop / grow; Pyro draws ``Z`` (the run needs ``--engine pyro``, the default for
this method). Outputs: the averaged deterministic network -- once per epoch after ``T*`` a snapshot
of ``E_q[Z ⊙ W] = sigmoid(θ)·M⊙U`` enters an equal-weight average, whose BatchNorm statistics are
re-estimated (as CigL's) -- and, from the saved run, the Monte-Carlo predictive over ``q``
(:func:`bayessparse.ppl.predictive.predictive_probs`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.growth import GradientGrow
from bayessparse.sparsity.training import SparseTraining


class VariationalCigL(SparseTraining):
    """RigL + learned keep probabilities of the random mask; trained by the Pyro engine.

    Args (beyond :class:`SparseTraining`):
        guide: ``"map"`` or ``"gaussian"``: ``q(W | Z)`` on the kept weights.
        keep_prior: ``p₀`` of the prior ``Z ~ Bernoulli(p₀)``.
        keep_init: initial learned keep probability (``None``: ``keep_prior``).
        keep_shape: ``"layer"`` or ``"unit"``.
        keep_temperature: ``τ`` of the relaxed Bernoulli.
        averaging_start: ``T* / T`` (as CigL's).
    """

    def __init__(self, *args: Any, guide: str = "map", keep_prior: float = 0.98, keep_init: float | None = None,
                 keep_shape: str = "layer", keep_temperature: float = 0.1, averaging_start: float = 0.8,
                 **kwargs: Any) -> None:
        kwargs.setdefault("grow", GradientGrow())
        super().__init__(*args, **kwargs)
        #: what the Pyro engine builds the guide from (SparseGuide's arguments, and the prior's p₀)
        self.variational = dict(family=guide, keep="learned", keep_shape=keep_shape, temperature=keep_temperature,
                                keep_init=keep_init, prior_keep=keep_prior)
        self.averaging_start = averaging_start
        self.guide: Any = None
        self._scope: Callable[[], Any] | None = None

    def setup(self, model: nn.Module, optimizer: Any, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(model, optimizer, total_steps, steps_per_epoch)
        self.model = model
        self.averaging_step = max(int(self.averaging_start * total_steps), self.schedule.t_end)
        self.average = AveragedModel(model, use_buffers=False)

    def attach_guide(self, guide: Any, scope: Callable[[], Any]) -> None:
        """Called by the Pyro engine: the guide whose keep probabilities the averaged output uses."""
        self.guide, self._scope = guide, scope

    def forward(self, model: nn.Module) -> Any:
        raise RuntimeError("vcigl is trained by the Pyro engine (engine: pyro), which draws its random mask")

    @torch.no_grad()
    def expected_network(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with prunable weights ``E_q[Z ⊙ W] = sigmoid(θ)·M⊙U``."""
        if self.guide is None:
            raise RuntimeError("vcigl has no guide: it is trained by the Pyro engine")
        with self._scope():
            expected = self.guide.expected_weights()
        net = copy.deepcopy(model)
        for name, w in prunable_weights(net).items():
            w.copy_(expected[name])
        return net

    def end_of_epoch(self, epoch: int, step: int) -> None:
        if step >= self.averaging_step:
            self.average.update_parameters(self.expected_network(self.model))

    def _averaged(self, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        net = copy.deepcopy(self.average.module)
        recalibrate(net)
        return net.eval()

    def final_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        if int(self.average.n_averaged) == 0:  # only if training stopped before its last epoch
            self.average.update_parameters(self.expected_network(model))
        return self._averaged(recalibrate)

    def current_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        """The running average once averaging has begun, else ``E_q[Z ⊙ W]``; BatchNorm re-estimated."""
        if int(self.average.n_averaged):
            return self._averaged(recalibrate)
        net = self.expected_network(model)
        recalibrate(net)
        return net.eval()

    def summary(self) -> dict[str, Any]:
        """The learned keep probabilities: per layer (mean over units), and their mean over layers."""
        if self.guide is None:
            return {}
        with self._scope():
            keep = {name: float(p.mean()) for name, p in self.guide.keep_probabilities().items()}
        return {"keep_probabilities": keep, "keep_probability": sum(keep.values()) / len(keep)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.average.load_state_dict(state["average"])
