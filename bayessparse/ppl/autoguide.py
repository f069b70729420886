"""An AutoGuide path that respects ``M``: Pyro's AutoGuides over the active weights only.

An AutoGuide (``AutoNormal``, ``AutoDelta``, ``AutoLowRankMultivariateNormal``, ...) over the
whole-tensor weight sites of :class:`~.model.SparseNetModel` would give every position a free
location, so its draws would be dense. :func:`active_model` reparameterises the model
(``poutine.reparam`` with :class:`ActiveWeights`) so that each weight site ``"<layer>.weight"``
becomes::

    W_M ~ p(W) restricted to the nnz active positions of M     site "<layer>.weight_active", shape (nnz,)
    W   = scatter(W_M) into zeros                                the original site, now deterministic

An AutoGuide on that model learns ``loc`` / ``scale`` for the active weights only, and every
weight it implies is exactly 0 where ``M = 0``. :class:`MaskedAutoGuide` builds one.

The model this fits is the sparse BNN with a *fixed* structure: prior ``p(W_M) ⊗ δ₀(W_¬M)``.
Against :class:`~.guide.SparseGuide`'s formulation (``q = δ(0)`` on the pruned positions of a
prior that covers them) the ELBO differs by the constant ``Σ_{M = 0} log p(0)``.

* ``M`` is fixed. :class:`ActiveWeights` reads the active positions once, when the model is
  built; the AutoGuide's parameters are indexed by position in that set, which a structure
  update would reassign. Train the structure with :class:`~.guide.SparseGuide` (RigL) and hand
  the final ``M`` here -- or, after ``M`` moved, build a new active model and guide
  (:func:`init_to_network` starts them at the current means ``U``).
* ``Z`` (``keep_prob < 1``): the discrete sites are hidden from the AutoGuide
  (``poutine.block``) and :class:`MaskedAutoGuide` samples them from the prior, ``q(Z) = p(Z)``
  (CigL's random mask).
* Scale: AutoGuides ignore the model's ``poutine.scale(1/N)``; :class:`MaskedAutoGuide` runs its
  AutoGuide under ``model.elbo_scale()`` so that ``log q`` is weighted like ``log p``.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide, AutoNormal, init_to_feasible
from pyro.infer.reparam.reparam import Reparam
from pyro.nn import PyroModule
from torch import Tensor

from bayessparse.ppl.distributions import FlatPrior, IsotropicNormal
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.sparsity.masks import MaskSet

__all__ = ["ActiveModel", "ActiveWeights", "MaskedAutoGuide", "active_model", "init_to_network"]

ACTIVE_SUFFIX = "_active"


class ActiveWeights(Reparam):
    """``W = scatter(W_M)``, ``W_M ~ p`` restricted to the active positions of ``mask`` (read once).

    ``p`` is the site's :class:`IsotropicNormal` (``N(0, σ² I)`` on ``nnz`` coordinates) or
    :class:`FlatPrior`. A value given to the original site (conditioning, initialisation) is
    inverted: ``W_M = W[M]``.
    """

    def __init__(self, mask: Tensor) -> None:
        self.shape = mask.shape
        self.index = mask.reshape(-1).nonzero().squeeze(-1)
        self.active = mask.reshape(-1) != 0
        self.dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()

    @property
    def nnz(self) -> int:
        return len(self.index)

    def scatter(self, active: Tensor) -> Tensor:
        """Full weights ``(*batch, *shape)`` from active values ``(*batch, nnz)``, 0 elsewhere."""
        flat = active.new_zeros(active.shape[:-1] + (self.active.numel(),)).index_copy(-1, self.index, active)
        return flat.reshape(active.shape[:-1] + self.shape)

    def gather(self, weight: Tensor) -> Tensor:
        """Active values ``(*batch, nnz)`` of full weights ``(*batch, *shape)``."""
        return weight.reshape(weight.shape[: weight.dim() - len(self.shape)] + (-1,))[..., self.index]

    def prior(self, fn: Any) -> dist.TorchDistribution:
        """``fn`` on the active coordinates."""
        like = dict(device=self.index.device, dtype=self.dtype)
        if isinstance(fn, IsotropicNormal):
            return IsotropicNormal(fn.scale, (self.nnz,), fn.batch_shape, **like)
        if isinstance(fn, FlatPrior):
            return FlatPrior((self.nnz,), fn.batch_shape, **like)
        raise NotImplementedError(f"ActiveWeights restricts IsotropicNormal / FlatPrior weight priors, not {fn}")

    def apply(self, msg: dict) -> dict:
        name, value = msg["name"], msg["value"]
        active = pyro.sample(name + ACTIVE_SUFFIX, self.prior(msg["fn"]),
                             obs=None if value is None else self.gather(value),
                             infer={"is_observed": msg["is_observed"]})
        sparse = value is not None and not bool(value.reshape(-1, self.active.numel())[:, ~self.active].any())
        weight = value if sparse else self.scatter(active)  # keep a given sparse value (no re-init warning)
        return {"fn": dist.Delta(weight, event_dim=len(self.shape)).mask(False), "value": weight, "is_observed": True}


class ActiveModel:
    """A :class:`SparseNetModel` whose weight sites live on the active positions of ``masks``.

    Callable like the model (``model(x, y=None)`` returns the network output), with the same
    ``likelihood``, so :func:`~.predictive.predictive` works on it.
    """

    def __init__(self, model: SparseNetModel, masks: MaskSet | None) -> None:
        self.bayes = model
        self.likelihood = model.likelihood
        self.reparams = {n: ActiveWeights(_mask(model, masks, n)) for n in model.weight_names}
        self._fn = poutine.reparam(model, config=self.reparams)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    @staticmethod
    def site(weight: str) -> str:
        """The latent site of weight ``weight``: ``"<weight>_active"``."""
        return weight + ACTIVE_SUFFIX

    def weights(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Full weights from a dict holding the active sites' values (e.g. an AutoGuide's draw)."""
        return {n: r.scatter(values[self.site(n)]) for n, r in self.reparams.items()}


def active_model(model: SparseNetModel, masks: MaskSet | None) -> ActiveModel:
    """``model`` reparameterised onto the active positions of ``masks`` (``None``: dense)."""
    return ActiveModel(model, masks)


def _mask(model: SparseNetModel, masks: MaskSet | None, name: str) -> Tensor:
    if masks is None:
        return torch.ones(model.shapes[name])
    return masks.masks[name].detach().clone()


def init_to_network(active: ActiveModel, fallback: Callable = init_to_feasible) -> Callable[[dict], Tensor]:
    """An ``init_loc_fn``: the network's current weights ``U`` on the active positions, else ``fallback``."""
    weights = {n: w for n, w in zip(active.bayes.weight_names, _network_weights(active.bayes))}

    def init(site: dict) -> Tensor:
        name = site["name"]
        if name in active.reparams:  # the original site: U ⊙ M
            return active.reparams[name].scatter(active.reparams[name].gather(weights[name].detach()))
        if name.endswith(ACTIVE_SUFFIX) and name[: -len(ACTIVE_SUFFIX)] in active.reparams:
            weight = name[: -len(ACTIVE_SUFFIX)]
            return active.reparams[weight].gather(weights[weight].detach()).clone()
        return fallback(site)

    return init


def _network_weights(model: SparseNetModel) -> list[Tensor]:
    params = dict(model.network.named_parameters())
    return [params[n] for n in model.weight_names]


class MaskedAutoGuide(PyroModule):
    """An AutoGuide over the active weights of ``masks``, plus ``q(Z) = p(Z)`` for a random mask.

    Args:
        model: the :class:`SparseNetModel` (not reparameterised; :attr:`model` is the
            :class:`ActiveModel` to train and predict with).
        masks: the fixed structure ``M`` (``None``: dense).
        autoguide: an AutoGuide class, e.g. ``AutoNormal`` (default), ``AutoDelta``,
            ``AutoLowRankMultivariateNormal``; ``**kwargs`` go to it (``init_loc_fn`` defaults to
            :func:`init_to_network`; a small ``init_scale``, e.g. ``1e-2``, suits network weights).

    Use ``SVI(guide.model, guide, optim, Trace_ELBO())`` and
    ``predictive(guide.model, guide, x, num_samples)``.
    """

    def __init__(self, model: SparseNetModel, masks: MaskSet | None, autoguide: type[AutoGuide] = AutoNormal,
                 **kwargs: Any) -> None:
        super().__init__(name=f"{model.name}.autoguide")
        self.model_ref = [active_model(model, masks)]  # a list: not part of the guide's state
        self.z_names = [z_site(n) for n in model.weight_names] if model.z_priors else []
        kwargs.setdefault("init_loc_fn", init_to_network(self.model))
        self.auto = autoguide(poutine.block(self.model, hide=self.z_names), **kwargs)

    @property
    def model(self) -> ActiveModel:
        return self.model_ref[0]

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        bayes = self.model.bayes
        with bayes.elbo_scale():
            draw = dict(self.auto(*args, **kwargs))
            for name, z in zip(bayes.weight_names, self.z_names):
                draw[z] = pyro.sample(z, bayes.z_priors[name])
        return draw

    @torch.no_grad()
    def sample_weights(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """One draw of the full weights ``W`` (exactly 0 where ``M = 0``), without ``Z``."""
        return self.model.weights(self.auto(*args, **kwargs))
