"""``SparseBNN``: a (calibrated) dynamic sparse Bayesian network in a few lines, TyXe-style.

::

    bnn = SparseBNN(net, sparsity=0.9, keep="learned", drop_rate=0.01)   # prior p0 = 0.99, learned q(Z)
    bnn.fit(train_set, epochs=10, lr=3e-3)
    probs = bnn.predict(x_test, num_samples=32)     # (N, C) posterior-predictive probabilities
    bnn.evaluate(test_set)                         # {"accuracy", "nll", "ece", "brier"}

The ingredients are this package's (:mod:`.model`, :mod:`.guide`, :mod:`bayessparse.sparsity`);
the training loop is a stock :class:`pyro.infer.SVI` loop (see ``experiments/stock_svi.py``).

Model (:class:`~.model.SparseNetModel`, per example, ``N`` = ``num_data``)::

    W ~ N(0, σ²),  σ² = 1/(N·wd)        (wd = 0: flat prior)
    Z ~ Bernoulli(p₀),  p₀ = 1 - drop_rate   (no Z for drop_rate = 0)
    y | x ~ Categorical(softmax f(x; Z⊙W))   or   N(f(x; Z⊙W), s²)  (s learned)

Guide (:class:`~.guide.SparseGuide`), with ``M`` the deterministic mask of ``method``::

    q(W | Z) = δ(U) (guide="map")  or  N(U, diag σ_q²) (guide="gaussian")  on the kept active weights,
               δ(0) or N(0, diag σ_q²) on the dropped ones, δ(0) where M = 0
    q(Z)     = p(Z) (keep="prior")  or  RelaxedBernoulliST(sigmoid θ) on M = 1 (keep="learned")

``fit`` maximises the per-example ELBO ``E_q[log p(y|x, Z⊙W)] - KL(q ‖ p)/N`` by SVI; every
``interval`` steps (RigL schedule) ``M`` drops the smallest ``|U|`` and grows by the dense
gradient ``∂L/∂(Z⊙W)``. ``predict`` is the Monte-Carlo posterior predictive
``p(y | x) ≈ (1/S) Σ_s p(y | x, W_s, Z_s)``, ``(W_s, Z_s) ~ q``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from bayessparse.batches import batches, num_batches
from bayessparse.likelihoods import GaussianRegressor
from bayessparse.ppl.guide import FAMILIES, KEEPS, SparseGuide
from bayessparse.ppl.model import LIKELIHOODS, SparseNetModel
from bayessparse.ppl.predictive import predictive
from bayessparse.ppl.svi import DenseGradients
from bayessparse.sparsity.growth import GradientGrow, RandomGrow
from bayessparse.sparsity.training import SparseTraining
from bayessparse.uncertainty import summary

__all__ = ["METHODS", "SparseBNN", "structured_step"]

#: name -> grow criterion factory (``None``: static sparse training, ``M`` never moves).
METHODS: dict[str, Callable[[], Any] | None] = {"static": None, "set": RandomGrow, "rigl": GradientGrow}


def structured_step(svi: SVI, guide: SparseGuide, method: SparseTraining, t: int,
                    *args: Any) -> tuple[float, dict | None]:
    """Step ``t`` of a stock SVI loop with structure updates; returns the loss and the update's stats.

    On an update step of ``method``'s schedule the loss and gradients are computed under
    :class:`DenseGradients` (``∂L/∂(Z⊙W)``), ``M`` moves (``guide.update_structure``; its stats are
    returned), the gradients are cleared and no optimizer step is taken (RigL). Otherwise it is
    ``svi.step`` (stats ``None``).
    """
    if not method.wants_update(t):
        return svi.step(*args), None
    with DenseGradients() as dense:
        loss = svi.loss_and_grads(svi.model, svi.guide, *args)
    stats = guide.update_structure(method, t, dense.grads, svi.optim)
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None
    return loss, stats


class SparseBNN:
    """A network with a sparse variational posterior; see the module docstring for the math.

    Args:
        net: a network (e.g. from :mod:`models`); its prunable weights are ``W``, the rest are
            point-estimated. It is trained in place (its weights become the means ``U``). With the
            Gaussian likelihood it is wrapped in a :class:`~bayessparse.likelihoods.GaussianRegressor`
            (``self.net``), which holds ``log s``.
        sparsity: fraction of pruned weights, in ``[0, 1)`` (``0``: dense, no ``M``).
        likelihood: ``"categorical"`` (logits) or ``"gaussian"`` (one output, learned noise).
        guide: ``"map"`` or ``"gaussian"``: ``q(W | Z)`` on the kept weights.
        keep: ``"prior"`` or ``"learned"``: ``q(Z)``.
        drop_rate: ``1 - p₀``, in ``[0, 1)``; ``keep="learned"`` needs it ``> 0``.
        keep_init: initial learned keep probability (default ``p₀``).
        num_data: ``N`` (default: the size of the first ``fit``'s data).
        weight_decay: ``wd`` (prior precision ``N·wd``).
        method: ``"rigl"``, ``"set"`` or ``"static"``; ``interval``, ``alpha``, ``end_fraction``:
            its schedule; ``layer_density``: ``"erk"`` or ``"uniform"``.
        noise_scale: initial ``s`` of the Gaussian likelihood (standardise the targets).
        seed: seeds the masks, their updates and the data order (Pyro's draws use torch's RNG).

    All Pyro parameters live in a param store of the instance's own.
    """

    def __init__(self, net: nn.Module, sparsity: float = 0.9, *, likelihood: str = "categorical",
                 guide: str = "map", keep: str = "prior", drop_rate: float = 0.0, keep_init: float | None = None,
                 num_data: int | None = None, weight_decay: float = 5e-4, method: str = "rigl",
                 layer_density: str = "erk", interval: int = 100, alpha: float = 0.3, end_fraction: float = 0.75,
                 noise_scale: float = 1.0, seed: int = 0) -> None:
        _check(0.0 <= sparsity < 1.0, "sparsity", "in [0, 1)", sparsity)
        _check(likelihood in LIKELIHOODS, "likelihood", f"one of {LIKELIHOODS}", likelihood)
        _check(guide in FAMILIES, "guide", f"one of {FAMILIES}", guide)
        _check(keep in KEEPS, "keep", f"one of {KEEPS}", keep)
        _check(0.0 <= drop_rate < 1.0, "drop_rate", "in [0, 1)", drop_rate)
        _check(keep == "prior" or drop_rate > 0, "drop_rate", "> 0 for keep='learned' (a random mask)", drop_rate)
        _check(method in METHODS, "method", f"one of {tuple(METHODS)}", method)
        _check(num_data is None or (isinstance(num_data, int) and num_data >= 1), "num_data", "an int >= 1",
               num_data)
        _check(weight_decay >= 0, "weight_decay", ">= 0", weight_decay)
        _check(isinstance(interval, int) and interval >= 1, "interval", "an int >= 1", interval)
        _check(likelihood != "gaussian" or (math.isfinite(noise_scale) and noise_scale > 0), "noise_scale",
               "a finite number > 0", noise_scale)
        net = GaussianRegressor(net, float(noise_scale)) if likelihood == "gaussian" else net
        self.net, self.sparsity, self.likelihood = net, float(sparsity), likelihood
        self.family, self.keep, self.keep_prob, self.keep_init = guide, keep, 1.0 - drop_rate, keep_init
        self.num_data, self.weight_decay = num_data, float(weight_decay)
        self.method_name, self.layer_density = method, layer_density
        self.schedule = dict(interval=interval, alpha=alpha, end_fraction=end_fraction)
        self.generator = torch.Generator().manual_seed(seed)
        self.store: dict[str, Any] = {"params": {}, "constraints": {}}
        self.model: SparseNetModel | None = None
        self.guide: SparseGuide | None = None
        self.method: SparseTraining | None = None
        self.svi: SVI | None = None
        self.step = 0
        #: the stats of every structure update (``MaskUpdater.update``): step, fraction, positions changed
        self.updates: list[dict] = []

    def scope(self) -> Any:
        """This instance's param store (``pyro.get_param_store().scope``)."""
        return pyro.get_param_store().scope(self.store)

    @property
    def masks(self) -> Any:
        """The deterministic masks ``M`` (a :class:`MaskSet`; ``None`` before ``fit`` or when dense)."""
        return None if self.method is None else self.method.masks

    def _build(self, num_data: int, total_steps: int, steps_per_epoch: int) -> None:
        """Masks and schedule (for ``total_steps``), model and guide: once, at the first ``fit``."""
        grow = METHODS[self.method_name]
        if self.sparsity > 0:
            self.method = SparseTraining(self.method_name, self.sparsity, self.layer_density, self.generator,
                                         grow=None if grow is None else grow(), **self.schedule)
            self.method.setup(self.net, None, total_steps, steps_per_epoch)
        self.num_data = self.num_data or num_data
        self.model = SparseNetModel(self.net, self.num_data, self.weight_decay, self.keep_prob,
                                    likelihood=self.likelihood)
        self.guide = SparseGuide(self.model, self.masks, family=self.family, keep=self.keep,
                                 keep_init=self.keep_init)

    def fit(self, data: Dataset | tuple[Tensor, Tensor], epochs: int, *, lr: float = 3e-3, batch_size: int = 128,
            optim: pyro.optim.PyroOptim | None = None, progress: bool = False) -> list[float]:
        """Train by SVI (``Trace_ELBO``, ``optim`` or ``ClippedAdam(lr)``); returns the mean loss per epoch.

        The first call fixes ``N``, the masks and the structure schedule (over its ``epochs``);
        later calls continue from there (the schedule has ended, so ``M`` stays) with the same
        optimizer and its state, unless ``optim`` is given. The loss is the negative per-example
        ELBO; with ``guide="map"`` it includes the point mass's constant ``-log p`` of the weights.
        """
        dataset = _dataset(data)
        _check(isinstance(epochs, int) and epochs >= 1, "epochs", "an int >= 1", epochs)
        _check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", "an int >= 1", batch_size)
        _check(lr > 0, "lr", "> 0", lr)
        per_epoch = num_batches(dataset, batch_size)
        if self.model is None:
            self._build(len(dataset), epochs * per_epoch, per_epoch)
        if optim is None:
            optim = self.svi.optim if self.svi is not None else pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0})
        self.svi = SVI(self.model, self.guide, optim, Trace_ELBO())
        history = []
        self.net.train()
        with self.scope():
            for epoch in range(epochs):
                losses = [self._step(x, y) for x, y in batches(dataset, batch_size, shuffle=True,
                                                              generator=self.generator, device=self._device())]
                history.append(sum(losses) / len(losses))
                if progress:
                    print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
        return history

    def _step(self, x: Tensor, y: Tensor) -> float:
        y = y.to(torch.get_default_dtype()) if self.likelihood == "gaussian" else y
        if self.method is None:
            loss = self.svi.step(x, y)
        else:
            loss, stats = structured_step(self.svi, self.guide, self.method, self.step, x, y)
            if stats is not None:
                self.updates.append(stats)
        self.step += 1
        return loss

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def predict(self, x: Tensor, num_samples: int = 32, *, aggregate: bool = True, seed: int | None = 0) -> Any:
        """Posterior predictive at inputs ``x`` from ``S = num_samples`` draws of ``q``.

        Classification: ``(N, C)`` probabilities ``(1/S) Σ_s softmax f(x; Z_s⊙W_s)`` (``aggregate=False``:
        the ``(S, N, C)`` draws). Regression: ``(mean, std)``, each ``(N,)``, of the mixture
        ``(1/S) Σ_s N(μ_s, s²)``: ``mean = μ̄``, ``std² = s² + (1/S) Σ_s (μ_s - μ̄)²`` (``aggregate=False``:
        the ``(S, N)`` means ``μ_s``).
        """
        draws = self._draws(x, num_samples, seed)
        if not aggregate:
            return draws
        if self.likelihood == "categorical":
            return draws.mean(0)
        mean = draws.mean(0)
        return mean, (self.noise() ** 2 + draws.var(0, unbiased=False)).sqrt()

    def _draws(self, x: Tensor, num_samples: int, seed: int | None) -> Tensor:
        if self.model is None:
            raise RuntimeError("SparseBNN: call fit before predict / evaluate")
        mode = self.net.training
        self.net.eval()
        try:
            with self.scope():
                out = predictive(self.model, self.guide, x.to(self._device()), num_samples, seed=seed)
        finally:
            self.net.train(mode)
        return out if self.likelihood == "categorical" else out.reshape(num_samples, len(x))

    def noise(self) -> Tensor:
        """The learned noise scale ``s`` of the Gaussian likelihood."""
        if self.likelihood != "gaussian" or self.model is None:
            raise RuntimeError("SparseBNN: only a fitted Gaussian likelihood has a noise scale")
        return self.net.noise_scale.detach().cpu()

    def evaluate(self, data: Dataset | tuple[Tensor, Tensor], num_samples: int = 32, *,
                 seed: int | None = 0) -> dict[str, float]:
        """Metrics of the posterior predictive on ``data``.

        Classification: ``accuracy``, ``nll`` (``-mean log p̄(y|x)``), ``ece`` (15 bins), ``brier``.
        Regression: ``rmse`` of ``μ̄`` and ``nll = -mean_n log (1/S) Σ_s N(y_n; μ_sn, s²)``.
        """
        x, y = _dataset(data).tensors[:2]
        draws = self._draws(x, num_samples, seed)
        if self.likelihood == "categorical":
            return summary(draws, y.long())
        y = y.to(draws.dtype).reshape(1, -1)
        log_p = torch.distributions.Normal(draws, self.noise()).log_prob(y)
        nll = -(torch.logsumexp(log_p, 0) - math.log(num_samples)).mean()
        return {"rmse": float((draws.mean(0) - y[0]).pow(2).mean().sqrt()), "nll": float(nll)}


def _dataset(data: Any) -> TensorDataset:
    """``data`` as a ``TensorDataset`` of ``(x, y)``: a TensorDataset or an ``(x, y)`` pair of tensors."""
    if isinstance(data, TensorDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        _check(len(data[0]) == len(data[1]) > 0, "data", "(x, y) with as many targets as inputs (>= 1)",
               f"{len(data[0])} inputs, {len(data[1])} targets")
        return TensorDataset(*data)
    raise ValueError(f"data must be a TensorDataset or an (x, y) pair of tensors, got {type(data).__name__}")


def _check(ok: bool, field: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"{field} must be {expected}, got {got!r}")
