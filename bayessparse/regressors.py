"""What a trained regression network predicts, and how it scores.

A run on regression data trains a :class:`~bayessparse.likelihoods.GaussianRegressor`,
``y ~ N(f(x), s²)`` with a learned noise scale ``s``. Its predictive distributions:

* the evaluated network (for CigL and vCigL the weight average, the single-network approximation of
  the predictive): ``N(f(x), s²)``, one Gaussian per input (:func:`network_predictions`);
* Monte Carlo over the random mask ``Z`` (CigL's ``Bernoulli(p)``, vCigL's learned ``q(Z)``): the
  mixture ``(1/S) Σ_s N(f(x; Z_s ⊙ M ⊙ U), s²)`` of ``S`` fixed draws (:func:`mc_predictions`,
  :func:`bayessparse.ppl.predictive.predictive_probs`), whose variance adds the spread of the draws'
  means (epistemic) to ``s²`` (aleatoric).

Both are scored by :func:`bayessparse.uncertainty.regression.regression_summary`: RMSE of the
predictive mean, the mixture NLL (log-mean-exp over draws) and the coverage of the central 50 / 90 /
95 % intervals, in the standardised units of the targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bayessparse.likelihoods import GaussianRegressor
from bayessparse.predict import labels_of, predict_logits
from bayessparse.uncertainty.regression import mixture_cdf, regression_summary

__all__ = ["MC_SAMPLES", "GaussianPredictions", "mc_predictions", "network_predictions", "regression_metrics"]

#: Draws of ``Z`` for the Monte Carlo predictive in a regression run's ``metrics.json`` (``mc_*`` keys).
MC_SAMPLES = 32


@dataclass(frozen=True)
class GaussianPredictions:
    """A mixture of ``S`` Gaussians per input: ``means`` and ``variances`` ``(S, N)``, ``targets`` ``(N,)``,
    ``log_weights`` ``(S,)`` (``None``: equal weights), on the standardised scale the network sees.

    ``scale``: the ``(m, s)`` of ``y = m + s · y_standardised`` when scores are wanted in the original units
    (:attr:`bayessparse.data.DataBundle.target_scale`). Each component ``N(μ, σ²)`` is then scored as
    ``N(m + sμ, s²σ²)`` against ``m + s·y``: the RMSE is ``s`` times the standardised one and the NLL the
    standardised one plus ``log s`` (the change of variables), coverage and the PIT are unchanged.
    """

    means: Tensor
    variances: Tensor
    targets: Tensor
    log_weights: Tensor | None = None
    scale: tuple[float, float] | None = None

    def scores(self) -> dict[str, float]:
        """``rmse``, ``nll``, ``coverage_50``, ``coverage_90``, ``coverage_95`` (in the original units with ``scale``)."""
        if self.scale is None:
            return regression_summary(self.means, self.variances, self.targets, self.log_weights)
        m, s = self.scale
        return regression_summary(m + s * self.means, s * s * self.variances, m + s * self.targets, self.log_weights)

    def pit(self) -> Tensor:
        """The probability integral transform ``F_n(y_n)`` of each target, ``(N,)`` (the input of
        :func:`~bayessparse.uncertainty.reliability.plot_interval_calibration`)."""
        return mixture_cdf(self.means, self.variances, self.targets, self.log_weights)


def _regressor(model: nn.Module) -> GaussianRegressor:
    if not isinstance(model, GaussianRegressor):
        raise ValueError(f"a regression prediction needs a GaussianRegressor, got {type(model).__name__}")
    return model


def network_predictions(model: nn.Module, dataset: Dataset, batch_size: int = 1024,
                        device: torch.device | str = "cpu", scale: tuple[float, float] | None = None
                        ) -> GaussianPredictions:
    """``N(f(x), s²)`` of one network on ``dataset`` (``S = 1``); ``scale``: see :class:`GaussianPredictions`."""
    outputs, targets = predict_logits(_regressor(model), dataset, batch_size, device)
    means = outputs[:, 0].double()[None]
    variance = float(model.noise_scale.detach()) ** 2
    return GaussianPredictions(means, torch.full_like(means, variance), targets.double(), scale=scale)


def mc_predictions(run: Any, model: nn.Module, dataset: Dataset, samples: int = MC_SAMPLES,
                   seed: int = 0) -> GaussianPredictions:
    """The mixture over ``samples`` draws of the run's ``q(Z)`` around its evaluated ``model`` (module docstring)."""
    from bayessparse.ppl.predictive import predictive_probs  # imports pyro only when asked for

    means = predictive_probs(run, _regressor(model), dataset, samples, run.cfg.eval_batch_size, seed=seed)
    means = means[..., 0].double()
    variance = float(model.noise_scale.detach()) ** 2
    return GaussianPredictions(means, torch.full_like(means, variance), labels_of(dataset).double(),
                               scale=run.data.target_scale)


def has_random_mask(run: Any) -> bool:
    """Whether the run's posterior has a random mask to average over (CigL and its variants, vCigL)."""
    if getattr(run.method, "random_mask", None) is None and getattr(run.engine, "guide", None) is None:
        return False
    from bayessparse.ppl.predictive import keep_probability

    return keep_probability(run) < 1.0


def regression_metrics(run: Any, model: nn.Module, fast: nn.Module | None = None) -> tuple[dict[str, Any], GaussianPredictions]:
    """Test (and validation) scores of a regression run's evaluated ``model``, with the Monte Carlo ones
    (``mc_*``) when the run has a random mask; ``fast`` is the network to time inference on (default ``model``).

    Returns the metrics and the test predictions of the evaluated network.
    """
    cfg, data = run.cfg, run.data
    start = time.perf_counter()
    test = network_predictions(fast if fast is not None else model, data.test, cfg.eval_batch_size, run.device,
                               data.target_scale)
    elapsed = time.perf_counter() - start
    metrics: dict[str, Any] = test.scores()
    val = network_predictions(model, data.val, cfg.eval_batch_size, run.device, data.target_scale).scores()
    metrics.update({f"val_{k}": v for k, v in val.items()})
    metrics["noise_scale"] = float(_regressor(model).noise_scale.detach())  # standardised units, as trained
    metrics["inference_ms_per_example"] = 1000 * elapsed / len(test.targets)
    if has_random_mask(run):
        mc = mc_predictions(run, model, data.test, MC_SAMPLES, seed=cfg.seed).scores()
        metrics.update({f"mc_{k}": v for k, v in mc.items()}, mc_samples=MC_SAMPLES)
    return metrics, test
