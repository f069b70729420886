"""The structured guide: the deterministic mask ``M`` is the structure of the variational family.

For every prunable layer ``l``, with variational means ``U_l`` (the network's own weights,
``pyro.param`` statements named ``net.<name>``) and the layer's mask ``M_l``::

    q(W_l) = δ(W_l − M_l ⊙ U_l)                      point mass (default)
    q(W_l) = N(W_l; M_l ⊙ U_l, s² I)                 ``scale=s``: the hierarchical family
    q(Z_l) = Bernoulli(p)  =  p(Z_l)                  the model's own prior object (CigL only)

The point mass is the ``s → 0`` limit of CigL's hierarchical family (Lei et al., ICLR 2023 §4:
``q(W | Z, U, M) = Z·N(M⊙U, s²) + (1−Z)·N(0, s²)``; here the network sees ``Z ⊙ W``, so the
dropped component is exactly 0 rather than ``N(0, s²)``). The mode of ``q(M | U) ∝ exp(M ⊙ |U|)``
under the sparsity constraint is the top-``|U|`` set, and ``M`` moves by magnitude drop and
gradient growth on the DST schedule: :meth:`SparseGuide.update_structure` hands the dense
gradient to the run's method, whose :class:`~bayessparse.sparsity.dst.MaskUpdater` applies the
criteria of :mod:`bayessparse.sparsity` (there is no second implementation of drop / grow).

Because ``W = M ⊙ U`` is a product in the autograd graph, ``∂L/∂U = M ⊙ ∂L/∂W``: pruned means
receive exactly zero gradient, so they stay zero under SGD without any gradient masking.

Extension beyond the paper (``learn_keep=True``, with a model built with
``relaxed_temperature``): ``q(Z_l) = RelaxedBernoulliStraightThrough(τ, sigmoid(θ_l))`` with a
learnable keep logit ``θ_l`` per layer (param ``keep_logit.<layer>``, initialised at the prior's
``p``), fitted by reparameterised (straight-through Concrete) gradients; its ``log q − log p``
is then a genuine per-weight term of the ELBO.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from bayessparse.method import TrainingMethod
from bayessparse.ppl.model import SparseNetModel, param_site, z_site
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet

__all__ = ["SparseGuide"]


class SparseGuide(PyroModule):
    """``q(W, Z)`` over the sites of a :class:`~bayessparse.ppl.model.SparseNetModel`.

    Args:
        model: the model; the guide shares its network (``U`` = its prunable weights) and its
            ``Z`` prior objects.
        masks: the deterministic masks ``M`` (a method's :class:`MaskSet`); ``None`` = dense.
        scale: ``None`` for the point mass, else the fixed scale ``s`` of the hierarchical family.
        learn_keep: extension -- a learnable relaxed keep probability per layer (the model must have
            a relaxed ``Z`` prior).

    The guide takes (and ignores) the model's arguments.
    """

    def __init__(self, model: SparseNetModel, masks: MaskSet | None = None, scale: float | None = None,
                 learn_keep: bool = False) -> None:
        super().__init__()
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be None or > 0, got {scale}")
        if learn_keep and model.relaxed_temperature is None:
            raise ValueError("learn_keep needs a model with a relaxed Z prior (relaxed_temperature)")
        self.learn_keep = learn_keep
        self.keep_prob = model.keep_prob
        self.temperature = model.relaxed_temperature
        self.weight_names = list(model.weight_names)
        self.means = prunable_weights(model.network)
        self.z_priors = model.z_priors
        self.masks = masks
        self.scale = scale

    def mask(self, name: str) -> Tensor | None:
        """``M`` of layer ``name``; ``None`` where the layer is dense (no multiplication needed)."""
        if self.masks is None or name in self.masks.dense:
            return None
        return self.masks.masks[name]

    @torch.no_grad()
    def location(self, name: str) -> Tensor:
        """``M ⊙ U`` of layer ``name`` (the point mass; the Gaussian's mean), without gradient."""
        u, m = self.means[name], self.mask(name)
        return u.detach().clone() if m is None else u.detach() * m

    def forward(self, *args: Any, **kwargs: Any) -> None:
        for name in self.weight_names:
            u = pyro.param(param_site(name), self.means[name])
            m = self.mask(name)
            loc = u if m is None else u * m
            if self.scale is None:
                pyro.sample(name, dist.Delta(loc, event_dim=loc.dim()))
            else:
                pyro.sample(name, dist.Normal(loc, self.scale).to_event(loc.dim()))
            if self.learn_keep:
                pyro.sample(z_site(name), self.keep_distribution(name, u))
            elif self.z_priors:
                pyro.sample(z_site(name), self.z_priors[name])

    def keep_distribution(self, name: str, like: Tensor) -> dist.TorchDistribution:
        """Extension: ``q(Z)`` with the learnable keep logit of layer ``name``."""
        layer = name.rsplit(".", 1)[0]
        init = torch.tensor(math.log(self.keep_prob / (1 - self.keep_prob)), device=like.device, dtype=like.dtype)
        logit = pyro.param(f"keep_logit.{layer}", init)
        temperature = torch.tensor(self.temperature, device=like.device, dtype=like.dtype)
        relaxed = dist.RelaxedBernoulliStraightThrough(temperature, logits=logit)
        return relaxed.expand(like.shape).to_event(like.dim())

    @torch.no_grad()
    def update_structure(
        self, method: TrainingMethod, step: int, grads: Mapping[str, Tensor], optimizer: Any
    ) -> dict[str, Any]:
        """Move ``M`` at a structure-update step of ``method``'s schedule.

        ``grads`` are the dense gradients ``∂L/∂(Z⊙W)`` of the step (what RigL grows by; the
        plain loop has them in ``weight.grad`` on update steps). They are written to ``U.grad``,
        where the method's :class:`~bayessparse.sparsity.dst.MaskUpdater` reads them, and the
        method drops and grows (zeroing the changed means and their momentum in ``optimizer``).
        """
        for name, grad in grads.items():
            self.means[name].grad = grad.detach()
        return method.update(step, optimizer)

    def extra_repr(self) -> str:
        kind = "point mass" if self.scale is None else f"Normal(scale={self.scale})"
        return f"W = M ⊙ U ({kind}), {len(self.weight_names)} layers, Z sites: {bool(self.z_priors)}"
