"""The likelihood a network is trained under: categorical for classification, Gaussian for regression.

Classification: ``y ~ Categorical(softmax f(x))``; the per-example loss is the cross-entropy.

Regression: ``y ~ N(f(x), s²)`` with one noise scale ``s`` learned with the weights (homoscedastic),
the Gaussian likelihood of :class:`~bayessparse.ppl.model.SparseNetModel`. Its per-example negative
log-likelihood is::

    ½ log 2π + log s + (y − f(x))² / (2 s²)

:class:`GaussianRegressor` holds ``log s`` next to the network, so checkpoints, CigL's weight
average and every copy of the model carry the noise with the weights; ``log s`` is a plain parameter
(never pruned, never decayed), point-estimated like the biases in both engines. The predictive of one
network is ``N(f(x), s²)``; over ``S`` draws of the random mask it is the mixture
``(1/S) Σ_s N(f(x; Z_s ⊙ W), s²)`` (:mod:`bayessparse.regressors`). Standardise the targets (the
embedded regression data are): ``s`` starts at 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GaussianRegressor", "LOG_NOISE", "gaussian_nll", "negative_log_likelihood"]

#: The parameter of :class:`GaussianRegressor` that holds ``log s``.
LOG_NOISE = "log_noise"
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GaussianRegressor(nn.Module):
    """A network with one output ``f(x)`` and a learned noise scale ``s``: ``y ~ N(f(x), s²)``.

    ``forward(x)`` is the network's ``(B, 1)`` output, the predictive mean; :attr:`noise_scale` is ``s``.
    The network's parameters keep their names under ``net.``; ``log s`` is the parameter ``log_noise``.
    """

    def __init__(self, net: nn.Module, noise_scale: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(noise_scale, (int, float)) and math.isfinite(noise_scale) and noise_scale > 0):
            raise ValueError(f"noise_scale must be a finite number > 0, got {noise_scale!r}")
        self.net = net
        self.log_noise = nn.Parameter(torch.tensor(math.log(noise_scale), dtype=torch.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def noise_scale(self) -> Tensor:
        """``s = exp(log_noise)``."""
        return self.log_noise.exp()

    def nll(self, output: Tensor, y: Tensor) -> Tensor:
        """The mean per-example negative log-likelihood of targets ``y`` ``(B,)`` under ``N(output, s²)``."""
        return gaussian_nll(output, y, self.log_noise)


def gaussian_nll(output: Tensor, y: Tensor, log_noise: Tensor) -> Tensor:
    """``mean_n [½ log 2π + log s + (y_n − μ_n)² / (2 s²)]`` for means ``output`` ``(B, 1)`` and ``s = exp(log_noise)``."""
    if output.shape[-1:] != (1,) or output.shape[:-1] != y.shape:
        raise ValueError(f"a regression network must output (B, 1) for targets (B,), got {tuple(output.shape)} "
                         f"for {tuple(y.shape)}")
    mean = output[..., 0]
    z = (y.to(mean.dtype) - mean) * torch.exp(-log_noise)
    return (_HALF_LOG_2PI + log_noise + 0.5 * z.square()).mean()


def negative_log_likelihood(model: nn.Module, output: Tensor, y: Tensor) -> Tensor:
    """The training loss of ``model``'s ``output`` on ``y``: Gaussian NLL for a :class:`GaussianRegressor`,
    else the cross-entropy of logits (the mean over the mini-batch either way)."""
    if isinstance(model, GaussianRegressor):
        return model.nll(output, y)
    return F.cross_entropy(output, y)
