"""An exact Gaussian process regressor (GPyTorch ``ExactGP``): the strong small-data reference.

``y = f(x) + ε``, ``f ~ GP(c, k)`` with a constant mean ``c`` and an ARD RBF kernel
``k(x, x') = s² exp(−½ Σ_d (x_d − x'_d)² / ℓ_d²)`` (one length-scale per input dimension), ``ε ~ N(0, σ²)``.
The hyper-parameters ``(c, s, ℓ, σ)`` are fitted by maximising the exact log marginal likelihood
``log N(y; c, K + σ² I)`` of the training data (Adam, full batch; Rasmussen and Williams 2006, ch. 5); the
prediction at ``x*`` is the Gaussian ``N(μ*, v* + σ²)`` with the exact posterior mean and variance
(:class:`~bayessparse.regressors.GaussianPredictions`, one component). Cost ``O(N³)`` per step: meant for
sets of a few thousand rows, such as the UCI benchmark's.
"""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import torch
from torch import Tensor

from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.regressors import GaussianPredictions

__all__ = ["ExactGPRegressor", "fit_exact_gp"]


class _Model(gpytorch.models.ExactGP):
    def __init__(self, x: Tensor, y: Tensor, likelihood: gpytorch.likelihoods.GaussianLikelihood) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=x.shape[1]))

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@dataclass
class ExactGPRegressor:
    """A fitted exact GP; :meth:`predict` gives the predictive of ``y`` (observation noise included)."""

    model: _Model
    log_marginal_likelihood: float  # per training point, at the fitted hyper-parameters

    @property
    def noise(self) -> float:
        """The fitted observation noise variance ``σ²``."""
        return float(self.model.likelihood.noise.detach())

    @property
    def parameters(self) -> int:
        """The hyper-parameters' count (mean, output scale, length-scales, noise)."""
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def predict(self, x: Tensor, y: Tensor, scale: tuple[float, float] | None = None) -> GaussianPredictions:
        """The predictive ``N(μ*, v* + σ²)`` at inputs ``x`` ``(N, D)`` for targets ``y`` ``(N,)`` (scored with
        ``scale``, as :class:`~bayessparse.regressors.GaussianPredictions`)."""
        self.model.eval()
        with gpytorch.settings.fast_pred_var(False):
            out = self.model.likelihood(self.model(x.double()))
        return GaussianPredictions(out.mean[None], out.variance[None], y.double(), scale=scale)


def fit_exact_gp(x: Tensor, y: Tensor, *, iterations: int = 200, lr: float = 0.05, seed: int = 0) -> ExactGPRegressor:
    """Fit the hyper-parameters on training inputs ``x`` ``(N, D)`` and targets ``y`` ``(N,)`` (float64, full
    batch, ``iterations`` Adam steps of rate ``lr``); ``seed`` makes the run repeatable (GPyTorch's solvers
    may draw probe vectors)."""
    if x.dim() != 2 or y.shape != x.shape[:1] or len(y) < 2:
        raise ConfigError(f"an exact GP needs inputs (N, D) and targets (N,) with N >= 2, got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations must be an integer >= 1, got {iterations!r}")
    x, y = x.double(), y.double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        model = _Model(x, y, likelihood).double()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        for step in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            loss = -mll(model(x), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the exact GP's marginal likelihood became {float(loss)} at step {step}")
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            value = float(mll(model(x), y))
    return ExactGPRegressor(model, value)
