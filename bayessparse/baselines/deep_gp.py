"""Two-layer deep Gaussian processes on GPyTorch: a DGP and a DSPP, for classification and regression.

The model. A hidden layer of ``H`` independent GPs maps the flattened input ``x ∈ R^D`` to
``h = f¹(x) ∈ R^H``; an output layer of ``L`` GPs maps ``h`` to ``f² ∈ R^L`` (Damianou and Lawrence,
2013, *Deep Gaussian processes*). Each GP is a sparse variational GP (Titsias, 2009; Hensman et al.,
2015): ``M`` inducing points ``Z``, whitened ``q(u) = N(m, S S^T)`` with a full Cholesky factor, an
RBF kernel with one lengthscale per input dimension and an output scale. The likelihood is

- classification: ``p(y = k | f²) = softmax(A f²)_k``, ``L = H`` latent functions mixed into the ``K``
  classes by a learned ``A ∈ R^{K×L}`` (GPyTorch's ``SoftmaxLikelihood``);
- regression: ``y = f² + ε``, ``ε ~ N(0, σ²)``, one output GP (``GaussianLikelihood``).

Initialisation (Salimbeni and Deisenroth, 2017, *Doubly stochastic variational inference for deep
Gaussian processes*, Sec. 5): the hidden layer's mean function is linear, ``m(x) = W (x − x̄)`` with
``W`` the top ``H`` principal directions of the training inputs (zero rows if ``H > D``), so that the
network starts as a GP on a PCA projection; its inducing points are k-means centres ``c_j`` of the
training inputs (:mod:`bayessparse.baselines.kmeans`), and the output layer's are their projections
``W (c_j − x̄)``. The output layer has a constant mean. Every lengthscale starts at the median distance
between the layer's inducing points (the median heuristic), so that the kernel between the data and
the nearest inducing points starts far from zero: with GPyTorch's default of 0.69 on 64 standardised
pixels it is numerically zero, the output is the prior's, and the first epochs learn next to nothing.

Inference. ``dgp`` is doubly stochastic VI (Salimbeni and Deisenroth, 2017): the ELBO
``Σ_n E_q[log p(y_n | f²_n)] − β KL(q(U) ‖ p(U))``, the expectation estimated with ``S`` reparameterised
samples pushed through both layers (:class:`gpytorch.mlls.DeepApproximateMLL`). ``dspp`` is the deep
sigma point process (Jankowiak, Pleiss and Gardner, 2020, *Deep sigma point processes*): the hidden
layer's Gaussian marginals are pushed through ``Q`` learned sigma points, the output is a mixture of
``Q`` Gaussians with learned weights ``w_q``, and the objective is the predictive log-likelihood
``Σ_n log Σ_q w_q p(y_n | q) − β KL`` (:class:`gpytorch.mlls.DeepPredictiveLogLikelihood`).
"""

from __future__ import annotations

from typing import Callable

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood, Likelihood, SoftmaxLikelihood
from gpytorch.means import ConstantMean, LinearMean, Mean
from gpytorch.mlls import DeepApproximateMLL, DeepPredictiveLogLikelihood, VariationalELBO
from gpytorch.models.deep_gps import DeepGP, DeepGPLayer
from gpytorch.models.deep_gps.dspp import DSPP, DSPPLayer
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy
from torch import Tensor
from torch.distributions import Categorical

from bayessparse.baselines.kmeans import kmeans
from bayessparse.tasks import CLASSIFICATION, REGRESSION, Task

__all__ = ["MixedSoftmaxLikelihood", "TwoLayerDGP", "TwoLayerDSPP", "build_model", "free_parameters", "objective",
           "pca_projection"]


class MixedSoftmaxLikelihood(SoftmaxLikelihood):
    """``Categorical(logits = f A^T)`` for latent samples ``f`` of shape ``(..., N, L)``.

    GPyTorch's ``SoftmaxLikelihood`` transposes its input whenever ``N == L`` (a legacy layout), which
    silently scrambles any mini-batch that happens to hold as many examples as there are latent functions.
    """

    def forward(self, function_samples: Tensor, *args, **kwargs) -> Categorical:
        return Categorical(logits=function_samples @ self.mixing_weights.t())


def _strategy(layer: DeepGPLayer, inducing: Tensor, output_dims: int | None) -> VariationalStrategy:
    """Whitened inducing-point strategy, one GP per output (batch ``(output_dims,)``), ``Z`` learned."""
    batch = torch.Size([output_dims]) if output_dims is not None else torch.Size([])
    distribution = CholeskyVariationalDistribution(inducing.shape[-2], batch_shape=batch)
    return VariationalStrategy(layer, inducing.expand(*batch, *inducing.shape).clone(), distribution,
                               learn_inducing_locations=True)


def _kernel(inducing: Tensor, output_dims: int | None) -> ScaleKernel:
    """Scaled RBF-ARD kernel, every lengthscale started at the median distance between the inducing points."""
    batch = torch.Size([output_dims]) if output_dims is not None else torch.Size([])
    kernel = ScaleKernel(RBFKernel(batch_shape=batch, ard_num_dims=inducing.shape[-1]), batch_shape=batch)
    distances = torch.pdist(inducing.double())
    if len(distances) and distances.median() > 0:
        kernel.base_kernel.lengthscale = torch.full_like(kernel.base_kernel.lengthscale, distances.median().item())
    return kernel


class DGPLayer(DeepGPLayer):
    """One layer of ``output_dims`` GPs (``None``: a single GP) on inputs of ``inducing.shape[-1]`` dims."""

    def __init__(self, inducing: Tensor, output_dims: int | None, mean: Mean):
        super().__init__(_strategy(self, inducing, output_dims), inducing.shape[-1], output_dims)
        self.mean_module, self.covar_module = mean, _kernel(inducing, output_dims)

    def forward(self, x: Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))


class SigmaPointLayer(DSPPLayer):
    """A DSPP layer: as :class:`DGPLayer`, its input marginals pushed through ``num_quad_sites`` sigma points."""

    def __init__(self, inducing: Tensor, output_dims: int | None, mean: Mean, num_quad_sites: int):
        super().__init__(_strategy(self, inducing, output_dims), inducing.shape[-1], output_dims, num_quad_sites)
        self.mean_module, self.covar_module = mean, _kernel(inducing, output_dims)

    def forward(self, x: Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))


class TwoLayerDGP(DeepGP):
    """``x -> hidden -> output``; calling it gives the output layer's ``(S, N[, L])`` Gaussians, one per sample."""

    def __init__(self, hidden: DGPLayer, output: DGPLayer, likelihood: gpytorch.likelihoods.Likelihood):
        super().__init__()
        self.hidden, self.output, self.likelihood = hidden, output, likelihood

    def forward(self, x: Tensor) -> MultivariateNormal:
        return self.output(self.hidden(x))


class TwoLayerDSPP(DSPP):
    """``x -> hidden -> output``; calling it gives ``(Q, N[, L])`` Gaussians weighted by ``quad_weights``."""

    def __init__(self, hidden: SigmaPointLayer, output: SigmaPointLayer, likelihood: gpytorch.likelihoods.Likelihood):
        super().__init__(output.num_quad_sites)
        self.hidden, self.output, self.likelihood = hidden, output, likelihood

    def forward(self, x: Tensor) -> MultivariateNormal:
        return self.output(self.hidden(x))


def pca_projection(x: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with ``W x + b = W (x − x̄)``: ``W`` ``(dims, D)`` holds the top principal directions of the
    rows of ``x`` (zero rows beyond ``D``), ``b = −W x̄``."""
    x = x.double()
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    weight = torch.zeros(dims, x.shape[1], dtype=torch.float64)
    weight[: min(dims, len(vh))] = vh[:dims]
    return weight.float(), (-weight @ mean).float()


def _linear_mean(weight: Tensor, bias: Tensor) -> LinearMean:
    """One linear mean per hidden GP, ``m_h(x) = W_h x + b_h``."""
    mean = LinearMean(weight.shape[1], batch_shape=torch.Size([weight.shape[0]]))
    with torch.no_grad():
        mean.weights.copy_(weight[:, :, None])
        mean.bias.copy_(bias[:, None])
    return mean


def build_model(
    method: str,
    x: Tensor,
    num_classes: int,
    task: Task | str,
    *,
    hidden_dims: int,
    num_inducing: int,
    num_quad_sites: int,
    generator: torch.Generator,
) -> TwoLayerDGP | TwoLayerDSPP:
    """A two-layer ``"dgp"`` or ``"dspp"`` initialised from the training inputs ``x`` ``(N, D)`` (see the module
    docstring) for ``task`` (:mod:`bayessparse.tasks`, or its name); parameters other than the inducing points and
    the hidden mean draw from the global torch RNG."""
    centres = kmeans(x, num_inducing, generator)
    weight, bias = pca_projection(x, hidden_dims)
    latent, make_likelihood = _HEADS[task]
    inner = centres @ weight.T + bias
    if method == "dspp":
        hidden = SigmaPointLayer(centres, hidden_dims, _linear_mean(weight, bias), num_quad_sites)
        latent = latent(hidden_dims)
        output = SigmaPointLayer(inner, latent, _constant_mean(latent), num_quad_sites)
    else:
        hidden = DGPLayer(centres, hidden_dims, _linear_mean(weight, bias))
        latent = latent(hidden_dims)
        output = DGPLayer(inner, latent, _constant_mean(latent))
    likelihood = make_likelihood(hidden_dims, num_classes)
    return (TwoLayerDSPP if method == "dspp" else TwoLayerDGP)(hidden, output, likelihood)


#: the output layer and likelihood of each task (:mod:`bayessparse.tasks`): the number of latent output GPs
#: (``None``: one, unbatched) from the hidden width, and the likelihood from the hidden width and the classes
_HEADS: dict[Task, tuple[Callable[[int], int | None], Callable[[int, int], Likelihood]]] = {
    CLASSIFICATION: (lambda hidden: hidden, lambda hidden, classes: MixedSoftmaxLikelihood(hidden, classes)),
    REGRESSION: (lambda hidden: None, lambda hidden, classes: GaussianLikelihood()),
}


def _constant_mean(output_dims: int | None) -> ConstantMean:
    return ConstantMean(batch_shape=torch.Size([output_dims]) if output_dims is not None else torch.Size([]))


def objective(model: TwoLayerDGP | TwoLayerDSPP, num_data: int, beta: float) -> gpytorch.mlls.MarginalLogLikelihood:
    """The per-example objective to maximise: the DGP's ELBO or the DSPP's predictive log-likelihood."""
    if isinstance(model, DSPP):
        return DeepPredictiveLogLikelihood(model.likelihood, model, num_data=num_data, beta=beta)
    return DeepApproximateMLL(VariationalELBO(model.likelihood, model, num_data=num_data, beta=beta))


def free_parameters(model: torch.nn.Module) -> int:
    """The number of parameters the model uses: each variational Cholesky factor ``L`` (``M × M``, of which
    only the lower triangle enters ``S = L Lᵀ``) counts ``M (M + 1) / 2`` entries per GP, not ``M²``."""
    total = 0
    for name, p in model.named_parameters():
        if name.endswith("chol_variational_covar") and p.dim() >= 2 and p.shape[-1] == p.shape[-2]:
            m = p.shape[-1]
            total += p.numel() // (m * m) * (m * (m + 1) // 2)
        else:
            total += p.numel()
    return total
