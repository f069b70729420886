"""Predictions of a deep GP: class probabilities, or a Gaussian mixture per input.

A call of the model on inputs ``x`` gives ``S`` Gaussians per input with log weights ``log w_s``:
for the DGP ``S`` equally weighted draws of the hidden layer (``w_s = 1/S``), for the DSPP its ``Q``
sigma points with the learned ``w_q`` (``quad_weights``). The predictive distribution is the mixture

- classification: ``p(y = k | x) = Σ_s w_s E_{f ~ N(μ_s(x), σ²_s(x))}[softmax(A f)_k]``, the inner
  expectation by Monte Carlo: one draw of ``f`` per DGP sample (the average over ``S`` carries it), and
  ``samples`` draws per DSPP sigma point. This is the mean over GP samples of the softmax-likelihood
  probabilities, on which :func:`bayessparse.uncertainty.metrics.summary` is defined.
- regression: ``p(y | x) = Σ_s w_s N(y; μ_s(x), σ²_s(x) + σ²_noise)``, scored by
  :func:`bayessparse.uncertainty.regression.regression_summary`.

The draws are seeded: the same model, data, ``samples``, ``batch_size`` and ``seed`` give the same
numbers, and the caller's global torch RNG is left as it was.
"""

from __future__ import annotations

import math
from typing import Any

import gpytorch
import torch
from gpytorch.models.deep_gps import DeepGP
from gpytorch.models.deep_gps.dspp import DSPP
from torch import Tensor
from torch.utils.data import Dataset

from bayessparse.baselines.deep_gp import MixedSoftmaxLikelihood, TwoLayerDGP, TwoLayerDSPP
from bayessparse.batches import batches, check_batch_size
from bayessparse.predict import check_dataset
from bayessparse.tasks import CLASSIFICATION, REGRESSION, Task
from bayessparse.uncertainty.regression import mixture_moments

GPModel = TwoLayerDGP | TwoLayerDSPP | DeepGP  # DeepGP: also the SV-DKL model


def classifies(model: GPModel) -> bool:
    """Whether ``model`` predicts classes (a softmax likelihood; else a Gaussian one: regression)."""
    return isinstance(model.likelihood, MixedSoftmaxLikelihood)


def task_of(model: GPModel) -> Task:
    """The task of ``model`` (:mod:`bayessparse.tasks`), by its likelihood."""
    return CLASSIFICATION if classifies(model) else REGRESSION


def mixture(model: GPModel, x: Tensor, samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """Means and variances ``(S, N[, L])`` of the output layer's Gaussians for flat inputs ``x`` ``(N, D)``,
    and their normalised log weights ``(S,)``."""
    with gpytorch.settings.num_likelihood_samples(samples):
        out = model(x)
    mean, variance = out.mean, out.variance
    if isinstance(model, DSPP):
        return mean, variance, model.quad_weights
    return mean, variance, torch.full(mean.shape[:1], -math.log(mean.shape[0]))


def class_probs(model: GPModel, x: Tensor, samples: int) -> Tensor:
    """``(N, K)`` predictive class probabilities (module docstring)."""
    mean, variance, log_w = mixture(model, x, samples)
    draws = samples if isinstance(model, DSPP) else 1
    f = mean + variance.sqrt() * torch.randn(draws, *mean.shape, dtype=mean.dtype)
    probs = torch.softmax(f @ model.likelihood.mixing_weights.T, dim=-1).mean(dim=0)
    return (log_w.exp()[:, None, None] * probs).sum(dim=0)


def regression_mixture(model: GPModel, x: Tensor, samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(S, N)`` means and variances of ``y`` (observation noise added) and ``(S,)`` log weights."""
    mean, variance, log_w = mixture(model, x, samples)
    return mean, variance + model.likelihood.noise.squeeze(-1), log_w


@torch.no_grad()
def predict(model: GPModel, dataset: Dataset, *, samples: int, batch_size: int, seed: int) -> dict[str, Tensor]:
    """Predictions over ``dataset``, in eval mode, seeded by ``seed``.

    Classification: ``{"probs": (N, K), "labels": (N,)}``; regression: ``{"means": (S, N), "variances":
    (S, N), "log_weights": (S,), "targets": (N,)}``.
    """
    check_dataset(dataset)
    check_batch_size(batch_size)
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for x, y in batches(dataset, batch_size):
                for key, value in _batch(model, x.flatten(1), y, samples).items():
                    parts.setdefault(key, []).append(value)
    finally:
        model.train(was_training)
    if classifies(model):
        return {"probs": torch.cat(parts["probs"]), "labels": torch.cat(parts["labels"])}
    return {"means": torch.cat(parts["means"], dim=1), "variances": torch.cat(parts["variances"], dim=1),
            "log_weights": parts["log_weights"][0], "targets": torch.cat(parts["targets"])}


def _batch(model: GPModel, x: Tensor, y: Tensor, samples: int) -> dict[str, Tensor]:
    if classifies(model):
        return {"probs": class_probs(model, x, samples), "labels": y}
    means, variances, log_w = regression_mixture(model, x, samples)
    return {"means": means, "variances": variances, "log_weights": log_w, "targets": y}


class DeepGPPredictor:
    """A trained deep GP as a function of a dataset (what :func:`bayessparse.baselines.load_deep_gp` returns).

    ``predictor(dataset)`` is ``probs`` ``(N, K)`` for a classifier and ``(mean, variance)`` ``(N,)`` of the
    predictive mixture for a regressor; :meth:`predict` gives the mixture components as well.
    """

    def __init__(self, model: GPModel, cfg: Any):
        self.model, self.cfg, self.task = model.eval(), cfg, task_of(model)

    def predict(self, dataset: Dataset) -> dict[str, Tensor]:
        """The raw predictions of :func:`predict` with the run's ``eval_samples``, ``eval_batch_size`` and ``seed``."""
        return predict(self.model, dataset, samples=self.cfg.eval_samples, batch_size=self.cfg.eval_batch_size,
                       seed=self.cfg.seed)

    def __call__(self, dataset: Dataset) -> Tensor | tuple[Tensor, Tensor]:
        out = self.predict(dataset)
        if classifies(self.model):
            return out["probs"]
        mean, variance = mixture_moments(out["means"], out["variances"], out["log_weights"])
        return mean.float(), variance.float()
