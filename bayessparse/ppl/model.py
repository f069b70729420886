"""The probabilistic model behind (calibrated) sparse training, as a Pyro model.

For a network ``f(x; W, θ)`` from :mod:`models` with prunable weights ``W = (W_l)`` (every conv /
linear ``weight``) and plain parameters ``θ`` (biases, normalisation parameters)::

    Z_l ~ Bernoulli(p₀)           elementwise, site "<layer>.z" (only with a random mask, p₀ < 1)
    W_l ~ N(0, σ² I)              site "<layer>.weight", independent of Z
    y_n ~ Categorical(softmax f(x_n; Z ⊙ W, θ))          n = 1..N, in pyro.plate("data", N)
      or  Normal(f(x_n; Z ⊙ W, θ), s²)                     (likelihood="gaussian", s learned)

``θ`` are point-estimated parameters, ``pyro.param`` statements named ``<name>.<parameter>`` under
the model's own prefix ``name``, so two models in one process never share a parameter. The
Gaussian likelihood's network is a :class:`~bayessparse.likelihoods.GaussianRegressor`, whose
``log s`` is one of the ``θ`` (so the plain loop and SVI learn the same noise scale). Without a random mask (dense, static, SET, RigL, DST-EE)
there are no ``Z`` sites. The model says nothing about the mask ``M``: sparsity is a property of
the variational family (:mod:`.guide`), not of the prior.

Scale. With ``per_example=True`` (default) every site runs under ``poutine.scale(1/N)``: the
ELBO is per example, the scale of the mean cross-entropy the library's learning rates are tuned
for, so a stock ``pyro.infer.SVI`` loop works at those learning rates (with ``False``, Pyro's
total ELBO is ``N`` times larger and needs a learning rate ``N`` times smaller). The plate,
subsampled to the mini-batch, scales ``Σ_batch log p(y|·)`` by ``N/B``; the ``1/N`` turns it into
the batch mean. The prior then contributes ``(1/N)·log N(W; 0, σ²)``, whose gradient is
``-wd·W`` when ``σ² = 1/(N·wd)`` (:func:`prior_scale`): weight decay is this Gaussian prior.
``wd = 0`` is the flat prior (:class:`~.distributions.FlatPrior`).

Batch dimensions. Weights drawn with leading batch dimensions (vectorised ELBO particles,
``Predictive(parallel=True)``) run the network once per draw; the draw's batch dimensions
become the leading batch dimensions of the likelihood (:func:`run_network`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.runtime import effectful
import torch.nn.functional as F
from torch import Tensor, nn

from bayessparse.likelihoods import LOG_NOISE, GaussianRegressor
from bayessparse.ppl.distributions import BernoulliMask, FlatPrior, IsotropicNormal
from bayessparse.sparsity.density import prunable_weights

__all__ = [
    "Categorical",
    "LIKELIHOODS",
    "SparseNetModel",
    "likelihood_of",
    "network_weights",
    "prior_scale",
    "z_site",
]

LIKELIHOODS = ("categorical", "gaussian")
_names = itertools.count()


def likelihood_of(net: nn.Module) -> str:
    """``"gaussian"`` for a :class:`~bayessparse.likelihoods.GaussianRegressor`, else ``"categorical"``."""
    return "gaussian" if isinstance(net, GaussianRegressor) else "categorical"


def z_site(weight_name: str) -> str:
    """The random-mask site of a prunable weight: ``"features.0.weight" -> "features.0.z"``."""
    return f"{weight_name.rsplit('.', 1)[0]}.z" if "." in weight_name else "z"


def prior_scale(weight_decay: float, num_data: int) -> float | None:
    """``σ = 1/sqrt(N·wd)``: the prior scale whose per-example log-density has gradient ``-wd·W``.

    Returns ``None`` for ``wd = 0`` (flat prior).
    """
    if weight_decay < 0 or num_data < 1:
        raise ValueError(f"need weight_decay >= 0 and num_data >= 1; got {weight_decay}, {num_data}")
    if weight_decay == 0:
        return None
    return 1.0 / math.sqrt(num_data * weight_decay)


@effectful(type="network_weights")
def network_weights(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights the network runs with (``Z ⊙ W``), announced to the effect handlers.

    An identity with an effect: a handler's ``_pyro_post_network_weights(msg)`` sees
    ``msg["value"]`` (e.g. :class:`bayessparse.ppl.svi.DenseGradients` records their gradient,
    the dense ``∂L/∂(Z⊙W)`` RigL grows by). Traces do not record it.
    """
    return weights


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
        keep_prob: ``p₀`` of the random mask's prior ``Z ~ Bernoulli(p₀)``; 1 = no ``Z`` sites.
        likelihood: ``"categorical"`` (classification, logits) or ``"gaussian"`` (regression:
            ``y ~ N(f(x), s²)``; ``net`` is then a :class:`~bayessparse.likelihoods.GaussianRegressor`,
            whose parameter ``log_noise`` is ``log s``).
        name: prefix of the model's ``pyro.param`` names (default: ``"sparse_net"``, numbered
            from the second model of a process on).
        per_example: run every site under ``poutine.scale(1/N)`` (see the module docstring).

    ``forward(x, y=None)`` returns the network's output (logits, or the regression mean); with ``y``
    the targets are observed.
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        weight_decay: float = 0.0,
        keep_prob: float = 1.0,
        *,
        likelihood: str = "categorical",
        name: str | None = None,
        per_example: bool = True,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if likelihood == "gaussian" and not isinstance(net, GaussianRegressor):
            raise ValueError("likelihood 'gaussian' needs the network wrapped in bayessparse.likelihoods."
                             f"GaussianRegressor (which holds the noise scale), got {type(net).__name__}")
        count = next(_names)
        self.name = name if name is not None else ("sparse_net" if count == 0 else f"sparse_net_{count}")
        self.net = net
        self.num_data = int(num_data)
        self.weight_decay = float(weight_decay)
        self.keep_prob = float(keep_prob)
        self.likelihood = likelihood
        self.per_example = per_example
        self.scale = prior_scale(self.weight_decay, self.num_data)
        weights = prunable_weights(net)
        self.weight_names = list(weights)
        self.shapes = {n: w.shape for n, w in weights.items()}
        self._like = {n: (w.device, w.dtype) for n, w in weights.items()}
        prunable = {id(w) for w in weights.values()}
        self._plain = {n: p for n, p in net.named_parameters() if id(p) not in prunable}
        # One prior object per layer: a guide that samples Z from it (CigL: q(Z) = p(Z)) lets the
        # ELBO recognise the cancelling term by identity (CancellingTrace_ELBO).
        self.z_priors: dict[str, dist.TorchDistribution] = {}
        if self.keep_prob < 1.0:
            for n, w in weights.items():
                self.z_priors[n] = BernoulliMask(self.keep_prob, w.shape, device=w.device, dtype=w.dtype)
        self.weight_priors = {n: self._weight_prior(n) for n in self.weight_names}
        self._subsample: dict[tuple[int, torch.device], Tensor] = {}

    @property
    def network(self) -> nn.Module:
        # self._modules, not self.net: PyroModule would pyro.module() the whole network, prunable
        # weights included, but those are the guide's variational means, not model parameters.
        return self._modules["net"]

    def param_name(self, parameter: str) -> str:
        """The param-store name of a network parameter: ``"<name>.<parameter>"``."""
        return f"{self.name}.{parameter}"

    def _weight_prior(self, weight: str) -> dist.TorchDistribution:
        device, dtype = self._like[weight]
        if self.scale is None:
            return FlatPrior(self.shapes[weight], device=device, dtype=dtype)
        return IsotropicNormal(self.scale, self.shapes[weight], device=device, dtype=dtype)

    def elbo_scale(self) -> contextlib.AbstractContextManager:
        """``poutine.scale(1/N)`` with ``per_example``, else nothing (the guide uses the same)."""
        return poutine.scale(scale=1.0 / self.num_data) if self.per_example else contextlib.nullcontext()

    def _positions(self, size: int, device: torch.device) -> Tensor:
        key = (size, device)
        if key not in self._subsample:
            self._subsample[key] = torch.arange(size, device=device)
        return self._subsample[key]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        with self.elbo_scale():
            tensors = {n: pyro.param(self.param_name(n), p) for n, p in self._plain.items()}
            weights: dict[str, Tensor] = {}
            for n in self.weight_names:
                z = pyro.sample(z_site(n), self.z_priors[n]) if self.z_priors else None
                w = pyro.sample(n, self.weight_priors[n])
                weights[n] = w if z is None else z * w
            weights = network_weights(weights, name="network_weights")
            out = run_network(self.network, tensors, weights, self.shapes, x)
            # The mini-batch is drawn by the data stream; the plate only records that it is a
            # subsample of N and scales its log-likelihood by N / B.
            with pyro.plate("data", self.num_data, subsample=self._positions(len(x), x.device)):
                pyro.sample("obs", self._likelihood(out, tensors), obs=y)
        return out

    def _likelihood(self, out: Tensor, tensors: dict[str, Tensor]) -> dist.TorchDistribution:
        if self.likelihood == "categorical":
            return Categorical(logits=out)
        return dist.Normal(out[..., 0], tensors[LOG_NOISE].exp())

    def prior_predictive(self, x: Tensor, num_samples: int) -> Tensor:
        """``(S, B)`` draws of ``y`` for inputs ``x`` under the prior (refused for the flat prior)."""
        if self.scale is None:
            raise ValueError("a flat prior (weight_decay = 0) has no prior predictive")
        return pyro.infer.Predictive(self, num_samples=num_samples, return_sites=["obs"])(x)["obs"]

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, N={self.num_data}, weight_decay={self.weight_decay}, keep_prob={self.keep_prob}, "
                f"prior_scale={self.scale}, likelihood={self.likelihood!r}, per_example={self.per_example}")


def run_network(net: nn.Module, tensors: dict[str, Tensor], weights: dict[str, Tensor],
                shapes: dict[str, torch.Size], x: Tensor) -> Tensor:
    """``f(x)`` with ``tensors`` and ``weights`` in place of the network's parameters, once per draw.

    Weights with leading batch dimensions ``(*b, 1)`` (``1``: the data plate's slot, as Pyro lays
    out a site outside the plate) or ``(*b,)`` give an output ``(*b, B, ...)``: the network runs
    once per draw (BatchNorm in training mode then updates its running statistics once per draw,
    as it would in separate steps).
    """
    if all(w.dim() == len(shapes[n]) for n, w in weights.items()):  # one draw: the training step
        with substituted(net, {**tensors, **weights}):
            return net(x)
    batch = torch.Size()
    for n, w in weights.items():
        batch = torch.broadcast_shapes(batch, w.shape[: w.dim() - len(shapes[n])])
    flat = {n: w.expand(batch + shapes[n]).reshape(-1, *shapes[n]) for n, w in weights.items()}
    outs = []
    for i in range(math.prod(batch)):
        with substituted(net, {**tensors, **{n: w[i] for n, w in flat.items()}}):
            outs.append(net(x))
    # (*b, 1): the 1 is the data plate's slot (a site outside the plate); Predictive(parallel=True) has none
    outer = batch[:-1] if batch[-1] == 1 else batch
    return torch.stack(outs).reshape(*outer, *outs[0].shape)


@contextlib.contextmanager
def substituted(net: nn.Module, tensors: dict[str, Tensor]) -> Any:
    """Run ``net`` with ``tensors`` (by parameter name) in place of its parameters, restored on exit.

    The tensors go into the modules' parameter slots for the duration, so the forward builds its
    graph on them (the guide's ``Z ⊙ W`` and Pyro's params). Unlike ``torch.func.functional_call``
    this also works under ``torch.jit.trace`` (``pyro.infer.JitTrace_ELBO``), and it is cheaper.
    """
    slots = []
    for name, tensor in tensors.items():
        owner, _, attr = name.rpartition(".")
        module = net.get_submodule(owner) if owner else net
        original = module._parameters[attr]
        if original is not tensor:  # the plain parameters θ are the param store's own tensors: nothing to swap
            slots.append((module, attr, original))
            module._parameters[attr] = tensor
    try:
        yield
    finally:
        for module, attr, original in slots:
            module._parameters[attr] = original
