"""A deep-kernel GP (SV-DKL; Wilson, Hu, Salakhutdinov and Xing, NeurIPS 2016): a GP on a network's features.

The deep GPs of :mod:`bayessparse.baselines.deep_gp` see the raw inputs, where an RBF kernel on 40 signal
samples or 64 pixels measures little of what separates the classes; the networks they are compared with learn
their features. SV-DKL gives the GP the same trunk: the dataset's own network (:func:`models.build`, the one the
sparse runs train, its classifier resized to ``hidden_dims`` outputs) maps ``x`` to features ``g(x) ∈ R^H``,
and one layer of ``L = H`` sparse variational GPs (the :class:`~bayessparse.baselines.deep_gp.DGPLayer`:
whitened inducing points, full Cholesky ``q(u)``, RBF-ARD) maps them to the latent functions of the same
likelihood as the deep GPs (softmax over ``A f`` for classes, Gaussian for regression). The network's weights
and the GP's hyper-parameters, inducing points and ``q(u)`` are trained jointly on the ELBO
``Σ_n E_q[log p(y_n | f(g(x_n)))] − β KL(q(U) ‖ p(U))`` (GPyTorch's ``VariationalELBO``), the expectation by
Monte Carlo. The inducing points start at k-means centres of the initial features.

It is a :class:`~gpytorch.models.deep_gps.DeepGP` whose only GP layer sees deterministic inputs, so the deep
GPs' training loop, objective and predictive (:mod:`bayessparse.baselines.gp_predict`) serve it unchanged:
a call gives ``S`` copies of the layer's Gaussians (the sample dimension of the DGP), and the predictive draws
one ``f`` from each.
"""

from __future__ import annotations

import math

import torch
from gpytorch.models.deep_gps import DeepGP
from torch import Tensor, nn

import models
from bayessparse.baselines.deep_gp import DGPLayer, _HEADS, _constant_mean
from bayessparse.baselines.kmeans import kmeans
from bayessparse.tasks import Task

__all__ = ["DeepKernelGP", "build_deep_kernel"]


class DeepKernelGP(DeepGP):
    """``x -> g(x) -> GP layer``; ``x`` arrives flattened and is reshaped to ``input_shape`` for the trunk."""

    def __init__(self, trunk: nn.Module, input_shape: tuple[int, ...], layer: DGPLayer, likelihood: nn.Module):
        super().__init__()
        self.trunk, self.input_shape, self.layer, self.likelihood = trunk, tuple(input_shape), layer, likelihood

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x.reshape(-1, *self.input_shape))

    def forward(self, x: Tensor):
        return self.layer(self.features(x))


def build_deep_kernel(x: Tensor, input_shape: tuple[int, ...], trunk: str, num_classes: int, task: Task, *,
                      hidden_dims: int, num_inducing: int, generator: torch.Generator) -> DeepKernelGP:
    """The SV-DKL model for flat training inputs ``x`` ``(N, D)`` of shape ``input_shape``: network ``trunk``
    (a :data:`models.MODELS` name) with ``hidden_dims`` outputs, and inducing points at k-means centres of its
    initial features (as training sees them: in training mode, in chunks of 1024). The trunk's weights draw from the global torch RNG."""
    net = models.build(trunk, hidden_dims, input_shape)
    with torch.no_grad():  # in training mode: the features the first steps see (BatchNorm on batch statistics)
        features = torch.cat([net(chunk.reshape(-1, *input_shape)) for chunk in x.split(1024)])
    centres = kmeans(features, num_inducing, generator)
    latent, make_likelihood = _HEADS[task]
    outputs = latent(hidden_dims)
    layer = DGPLayer(centres, outputs, _constant_mean(outputs))
    model = DeepKernelGP(net, input_shape, layer, make_likelihood(hidden_dims, num_classes))
    if not math.isfinite(float(features.abs().max())):
        raise ValueError("the trunk's initial features are not finite")
    return model
