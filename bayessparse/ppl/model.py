"""The probabilistic model behind (calibrated) sparse training, as a Pyro model.

For a network ``f(x; W, θ)`` from :mod:`models` with prunable weights ``W = (W_l)`` (every conv /
linear ``weight``) and plain parameters ``θ`` (biases, normalisation parameters)::

    Z_l ~ Bernoulli(p)            elementwise, one site "<layer>.z" per prunable layer (CigL only)
    W_l ~ N(0, σ² I)              one site "<layer>.weight" per prunable layer
    y_n ~ Categorical(softmax f(x_n; Z ⊙ W, θ))     n = 1..N, in pyro.plate("data", N)

``θ`` are point-estimated model parameters (``pyro.param`` statements named ``net.<name>``, no
prior, no decay), exactly like the plain loop's undecayed parameter group. Without a random mask
(``keep_prob = 1``: dense, static, SET, RigL, DST-EE) there are no ``Z`` sites.

Scales (see docs/theory.md). The plain loop minimises ``mean CE + (wd/2)·‖W‖²`` with SGD. The SVI
engine runs this model and its guide under ``poutine.scale(1/N)``, so the ELBO is per example:
the plate, subsampled to the mini-batch (``subsample=`` the batch's positions, the batch itself
is drawn by the data stream), scales ``Σ_batch log p(y|·)`` by ``N/B`` and the ``1/N`` turns
it into the batch-mean log-likelihood; the prior then contributes ``(1/N)·log N(W; 0, σ²)``,
whose gradient is ``-wd·W`` when

    σ² = 1 / (p · N · wd)          (:func:`prior_scale`)

For ``p = 1`` this is the usual "weight decay is a Gaussian prior" correspondence. With a random
mask the precision carries the keep probability ``p``: by Gal & Ghahramani's dropout argument
(used by CigL, Lei et al. ICLR 2023 §4) the prior ``N(0, 1/(N·wd))`` on the *network* weights
``Z ⊙ W`` gives, averaged over ``Z``, ``E_Z[-log N(Z⊙W; 0, 1/(N·wd))] = -log N(W; 0, σ²) +
const`` with the σ above. ``wd = 0`` means a flat, improper prior (``ImproperUniform``; no prior
term at all, and no prior predictive).

Estimator of the prior term with a random mask (``prior_estimator``): ``"thinned"`` (default)
evaluates ``Σ_ij log N(W_ij; 0, σ²)`` on the coordinates the step's ``Z`` keeps, weighted by
``1/p`` -- an unbiased Horvitz--Thompson estimate, the same device as the plate's ``N/B``
subsampling of the likelihood. Its gradient ``-wd·Z⊙W`` is CigL's update (only kept weights are
decayed), which makes the SVI engine reproduce the plain loop. ``"exact"`` uses the whole sum
(gradient ``-p·wd·W``, same expectation, no variance).

Extension beyond the paper (``relaxed_temperature=τ``): ``Z_l`` gets a relaxed prior,
``RelaxedBernoulliStraightThrough(τ, p)`` (hard 0/1 values forward, Concrete gradients
backward; Maddison et al. / Jang et al. 2017), so that a guide with a *learnable* keep
probability per layer (``SparseGuide(learn_keep=True)``) can be fitted by reparameterised
gradients against a matching relaxed prior. Since ``Z`` is then drawn from ``q``, not from the
prior, the prior term uses the ``"exact"`` estimator. Not part of CigL and not used by the
training engine.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from pyro.poutine.runtime import effectful
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bayessparse.sparsity.density import prunable_weights

__all__ = [
    "Categorical",
    "IsotropicNormal",
    "SparseNetModel",
    "network_weights",
    "param_site",
    "prior_scale",
    "z_site",
]

PRIOR_ESTIMATORS = ("thinned", "exact")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def z_site(weight_name: str) -> str:
    """The random-mask site of a prunable weight: ``"features.0.weight" -> "features.0.z"``."""
    return f"{weight_name.rsplit('.', 1)[0]}.z" if "." in weight_name else "z"


def param_site(name: str) -> str:
    """The param-store name of a network parameter: ``"features.0.weight" -> "net.features.0.weight"``.

    Every network parameter has exactly one such name: prunable weights are the guide's
    variational means ``U``, all others the model's plain parameters ``θ``.
    """
    return f"net.{name}"


def prior_scale(weight_decay: float, num_data: int, keep_prob: float = 1.0) -> float | None:
    """``σ = 1/sqrt(p·N·wd)``: the prior scale whose per-example ELBO reproduces weight decay ``wd``.

    Returns ``None`` for ``wd = 0`` (flat prior).
    """
    if weight_decay < 0 or num_data < 1 or not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"need wd >= 0, N >= 1, 0 < p <= 1; got {weight_decay}, {num_data}, {keep_prob}")
    if weight_decay == 0:
        return None
    return 1.0 / math.sqrt(keep_prob * num_data * weight_decay)


@effectful(type="network_weights")
def network_weights(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights the network runs with (``Z ⊙ W``), announced to the effect handlers.

    An identity with an effect: a handler's ``_pyro_post_network_weights(msg)`` sees
    ``msg["value"]`` (e.g. :class:`bayessparse.ppl.svi.DenseGradients` records their gradient,
    the dense ``∂L/∂(Z⊙W)`` RigL grows by). Traces do not record it.
    """
    return weights


class IsotropicNormal(TorchDistribution):
    """``N(0, σ² I)`` over one whole weight tensor (``event_shape`` = the weight's shape).

    Same density as ``Normal(0, σ).expand(shape).to_event(len(shape))``, but ``log_prob`` is one
    reduction (``-‖w‖²/2σ² - n·(log σ + ½ log 2π)``) instead of a dozen elementwise passes over
    millions of weights.

    With ``keep`` (the step's random mask ``Z``, 0/1, shaped like the weight) and ``keep_prob``
    ``p``, ``log_prob`` is the unbiased estimate ``(1/p)·Σ_{ij: Z_ij = 1} log N(w_ij; 0, σ²)`` of
    the full log-density: the coordinates are Bernoulli(p)-subsampled by ``Z`` and reweighted
    (Horvitz--Thompson), as a subsampled plate reweights the data by ``N/B``. Sampling is
    unaffected by ``keep``.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        scale: float,
        shape: torch.Size | tuple[int, ...],
        *,
        keep: Tensor | None = None,
        keep_prob: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        validate_args: bool | None = None,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.keep = keep
        self.keep_prob = float(keep_prob)
        self._device = keep.device if keep is not None else torch.device(device or "cpu")
        self._dtype = dtype
        super().__init__(torch.Size(), torch.Size(shape), validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.event_shape, device=self._device, dtype=self._dtype)

    @property
    def variance(self) -> Tensor:
        return torch.full(self.event_shape, self.scale**2, device=self._device, dtype=self._dtype)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, device=self._device, dtype=self._dtype) * self.scale

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dims = tuple(range(-len(self.event_shape), 0))
        if self.keep is None:
            flat, count = value, float(math.prod(self.event_shape))
        else:
            flat, count = value * self.keep, self.keep.sum(dims).to(value.dtype)
        if value.dim() == len(self.event_shape):  # the common case: one reduction pass
            squares = torch.dot(flat.reshape(-1), flat.reshape(-1))
        else:
            squares = flat.pow(2).sum(dims)
        log_p = -0.5 * squares / self.scale**2 - count * (math.log(self.scale) + _HALF_LOG_2PI)
        return log_p / self.keep_prob if self.keep is not None else log_p

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> "IsotropicNormal":
        if tuple(batch_shape) != ():
            raise NotImplementedError("IsotropicNormal has no batch dimensions")
        return self


class Categorical(dist.Categorical):
    """``dist.Categorical(logits=...)`` whose ``log_prob`` runs torch's fused log-softmax + NLL kernel.

    Same values as ``dist.Categorical`` (up to rounding), but computed by the kernel of
    ``F.cross_entropy`` -- the plain loop's loss -- so the two engines' likelihood gradients agree
    to the last bit (the Pyro formulation ``logits - logsumexp(logits)`` then ``gather`` rounds
    differently, and networks with max-pooling / ReLU kinks amplify last-bit differences).
    """

    def __init__(self, logits: Tensor, validate_args: bool | None = None) -> None:
        super().__init__(logits=logits, validate_args=validate_args)
        self._unnormalised = logits

    def log_prob(self, value: Tensor) -> Tensor:
        logits = self.__dict__.get("_unnormalised")
        if logits is None or logits.dim() != 2 or value.shape != logits.shape[:1]:
            return super().log_prob(value)  # expanded / batched beyond (B, C): the generic path
        if self._validate_args:
            self._validate_sample(value)
        return -F.cross_entropy(logits, value.long(), reduction="none")

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> dist.Categorical:
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return dist.Categorical(logits=self.logits).expand(batch_shape, _instance)


class SparseNetModel(PyroModule):
    """The model ``p(y, W, Z | x; θ)`` around a network (see the module docstring).

    Args:
        net: any network of :mod:`models`; its prunable weights are the latent ``W`` (their
            values here are ignored: the guide provides them), its other parameters ``θ``.
        num_data: ``N``, the size of the training set (the plate's size).
        weight_decay: ``wd``; sets the prior scale (:func:`prior_scale`), 0 = flat prior.
        keep_prob: ``p`` of the random mask ``Z``; 1 = no ``Z`` sites.
        prior_estimator: ``"thinned"`` or ``"exact"`` (only matters for ``p < 1``); default
            ``"thinned"``, or ``"exact"`` with a relaxed ``Z``.
        relaxed_temperature: extension -- a relaxed (Concrete, straight-through) ``Z`` prior of this
            temperature instead of the Bernoulli.

    ``forward(x, y=None)`` returns the logits; with ``y`` the labels are observed.
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        weight_decay: float,
        keep_prob: float = 1.0,
        prior_estimator: str | None = None,
        relaxed_temperature: float | None = None,
    ) -> None:
        super().__init__()
        relaxed = relaxed_temperature is not None
        prior_estimator = prior_estimator or ("exact" if relaxed else "thinned")
        if prior_estimator not in PRIOR_ESTIMATORS:
            raise ValueError(f"prior_estimator must be one of {PRIOR_ESTIMATORS}, got {prior_estimator!r}")
        if relaxed and (prior_estimator != "exact" or not relaxed_temperature > 0 or keep_prob >= 1.0):
            raise ValueError("a relaxed Z needs keep_prob < 1, a temperature > 0 and the 'exact' prior estimator")
        self.relaxed_temperature = float(relaxed_temperature) if relaxed else None
        self.net = net
        self.num_data = int(num_data)
        self.weight_decay = float(weight_decay)
        self.keep_prob = float(keep_prob)
        self.prior_estimator = prior_estimator
        self.scale = prior_scale(self.weight_decay, self.num_data, self.keep_prob)
        weights = prunable_weights(net)
        self.weight_names = list(weights)
        self.shapes = {name: w.shape for name, w in weights.items()}
        self._like = {name: (w.device, w.dtype) for name, w in weights.items()}
        prunable = {id(w) for w in weights.values()}
        self._plain = {n: p for n, p in net.named_parameters() if id(p) not in prunable}
        # One distribution object per layer, shared with the guide: q(Z) *is* p(Z), which
        # CancellingTrace_ELBO recognises by identity (no per-weight log-probs for Z).
        self.z_priors: dict[str, TorchDistribution] = {}
        if self.keep_prob < 1.0:
            for name, w in weights.items():
                probs = torch.tensor(self.keep_prob, device=w.device, dtype=w.dtype)
                if relaxed:
                    temperature = torch.tensor(self.relaxed_temperature, device=w.device, dtype=w.dtype)
                    prior = dist.RelaxedBernoulliStraightThrough(temperature, probs=probs)
                else:
                    prior = dist.Bernoulli(probs=probs)
                self.z_priors[name] = prior.expand(w.shape).to_event(w.dim())
        self._subsample: dict[tuple[int, torch.device], Tensor] = {}

    @property
    def network(self) -> nn.Module:
        # self._modules, not self.net: PyroModule would pyro.module() the whole network, prunable
        # weights included, but those are the guide's variational means, not model parameters.
        return self._modules["net"]

    def weight_prior(self, name: str, z: Tensor | None) -> TorchDistribution:
        """The prior of the weight site ``name`` (given the step's ``Z`` for the thinned estimator)."""
        shape = self.shapes[name]
        if self.scale is None:
            return dist.ImproperUniform(constraints.real, torch.Size(), shape)
        keep = z if (z is not None and self.prior_estimator == "thinned") else None
        device, dtype = self._like[name]
        return IsotropicNormal(self.scale, shape, keep=keep, keep_prob=self.keep_prob if keep is not None else 1.0,
                               device=device, dtype=dtype)

    def _positions(self, size: int, device: torch.device) -> Tensor:
        key = (size, device)
        if key not in self._subsample:
            self._subsample[key] = torch.arange(size, device=device)
        return self._subsample[key]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        net = self.network
        tensors: dict[str, Tensor] = {}
        for name, p in self._plain.items():
            tensors[name] = pyro.param(param_site(name), p)
        weights: dict[str, Tensor] = {}
        for name in self.weight_names:
            z = pyro.sample(z_site(name), self.z_priors[name]) if self.z_priors else None
            w = pyro.sample(name, self.weight_prior(name, z))
            weights[name] = w if z is None else z * w
        tensors.update(network_weights(weights, name="network_weights"))
        logits = functional_call(net, tensors, (x,))
        # The mini-batch is drawn by the data stream; the plate only records that it is a
        # subsample of N and scales its log-likelihood by N / B.
        with pyro.plate("data", self.num_data, subsample=self._positions(len(x), x.device)):
            pyro.sample("obs", Categorical(logits=logits), obs=y)
        return logits

    def extra_repr(self) -> str:
        return (f"N={self.num_data}, weight_decay={self.weight_decay}, keep_prob={self.keep_prob}, "
                f"prior_scale={self.scale}, prior_estimator={self.prior_estimator!r}")


