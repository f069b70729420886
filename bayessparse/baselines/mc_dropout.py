"""Dense MC dropout, the UCI benchmark's reference method (Gal and Ghahramani, ICML 2016), on a grid at once.

The protocol's network: one hidden layer of 50 ReLU units, dropout with rate ``p`` on the inputs and on the
hidden units, trained by Adam on the squared error of the standardised targets plus the weight decay that
the dropout variational objective implies, ``λ = ℓ² (1 − p) / (2 N τ)`` on every weight matrix (prior
length-scale ``ℓ = 10⁻²``, ``N`` training rows, model precision ``τ`` in the target's original units;
the grid is of ``κ = τ s²``, the precision on the standardised scale, so that one grid serves sets whose
targets differ in scale by orders of magnitude).
The predictive is the mixture of ``T`` stochastic forward passes with observation noise ``1/τ``::

    p(y | x) = (1/T) Σ_t N(y; m + s f_t(x), 1/τ)        (m, s: the target's standardisation)

Its dropout rate and precision are chosen per split by the validation log-likelihood from a grid
(:data:`DROPOUT_RATES` × :data:`PRECISIONS`; Gal and Ghahramani's published grid-search version searches
such a grid per set). :func:`fit_grid` trains every grid point in one batched network -- Adam is elementwise, so the
points train exactly as they would one by one -- and :meth:`MCDropoutGrid.predict` draws the ``T`` passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from bayessparse.errors import ConfigError
from bayessparse.regressors import GaussianPredictions

__all__ = ["DROPOUT_RATES", "HIDDEN", "LENGTH_SCALE", "PRECISIONS", "MCDropoutGrid", "fit_grid"]

#: the protocol's hidden width
HIDDEN = 50
#: the prior length-scale of the weight decay
LENGTH_SCALE = 1e-2
#: the grid of dropout rates and of standardised precisions ``κ = τ s²`` (``1/κ``: the noise variance in
#: units of the target's variance)
DROPOUT_RATES = (0.005, 0.01, 0.05, 0.1)
PRECISIONS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class _Grid(nn.Module):
    """``G`` one-hidden-layer networks side by side: weights ``(G, D, H)`` and ``(G, H, 1)``."""

    def __init__(self, grid: int, inputs: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()

        def glorot(fan_in: int, fan_out: int) -> Tensor:
            bound = math.sqrt(6 / (fan_in + fan_out))
            return (torch.rand(grid, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound

        self.w1 = nn.Parameter(glorot(inputs, hidden))
        self.b1 = nn.Parameter(torch.zeros(grid, 1, hidden, dtype=torch.float64))
        self.w2 = nn.Parameter(glorot(hidden, 1))
        self.b2 = nn.Parameter(torch.zeros(grid, 1, 1, dtype=torch.float64))

    def forward(self, x: Tensor, rates: Tensor, generator: torch.Generator, points: Tensor | None = None) -> Tensor:
        """``(G, B)`` outputs for inputs ``(B, D)``, each network under its own dropout rate (always on);
        ``points``: only these networks (``rates`` then holds theirs)."""
        w1, b1, w2, b2 = (p if points is None else p[points] for p in (self.w1, self.b1, self.w2, self.b2))
        keep = (1 - rates)[:, None, None]
        h = x.expand(len(rates), *x.shape)
        h = h * (torch.rand(h.shape, generator=generator, dtype=h.dtype) < keep) / keep
        h = torch.relu(torch.bmm(h, w1) + b1)
        h = h * (torch.rand(h.shape, generator=generator, dtype=h.dtype) < keep) / keep
        return (torch.bmm(h, w2) + b2)[..., 0]


@dataclass
class MCDropoutGrid:
    """The trained grid: ``rates[g]``, standardised precisions ``precisions[g]`` and the networks;
    :meth:`predict` draws the passes."""

    net: _Grid
    rates: Tensor
    precisions: Tensor
    seed: int

    def tau(self, g: int, scale: tuple[float, float]) -> float:
        """Grid point ``g``'s model precision ``τ = κ / s²`` in the target's original units."""
        return float(self.precisions[g]) / scale[1] ** 2

    @torch.no_grad()
    def predict(self, x: Tensor, y: Tensor, scale: tuple[float, float] | None = None, samples: int = 1000,
                batch: int = 100, points: Sequence[int] | None = None) -> list[GaussianPredictions]:
        """Per grid point (or per one of ``points``), the mixture of ``samples`` passes with noise ``1/κ`` on the
        standardised scale (``1/τ`` in the original units; ``scale``: scored as
        :class:`~bayessparse.regressors.GaussianPredictions`)."""
        index = torch.arange(len(self.rates)) if points is None else torch.as_tensor(list(points), dtype=torch.long)
        rates = self.rates[index]
        generator = torch.Generator().manual_seed(self.seed + 1)
        draws = torch.cat([torch.stack([self.net(x.double(), rates, generator, index) for _ in range(min(batch, samples - i))])
                           for i in range(0, samples, batch)])  # (T, G, N)
        return [GaussianPredictions(draws[:, j], torch.full_like(draws[:, j], 1 / float(self.precisions[g])), y.double(),
                                    scale=scale) for j, g in enumerate(index.tolist())]


def fit_grid(x: Tensor, y: Tensor, *, rates: Sequence[float] = DROPOUT_RATES, precisions: Sequence[float] = PRECISIONS,
             epochs: int = 400, batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> MCDropoutGrid:
    """Train one network per ``(rate, κ)`` of the grid on standardised inputs ``x`` ``(N, D)`` and targets ``y``
    ``(N,)`` (the same mini-batches for all; ``seed`` fixes initialisation, order and dropout masks). The weight
    decay is the module docstring's ``λ`` with ``τ s² = κ`` and the loss on the standardised scale, i.e.
    ``λ = ℓ² (1 − p) / (2 N κ)``."""
    if x.dim() != 2 or y.shape != x.shape[:1] or len(y) < 2:
        raise ConfigError(f"MC dropout needs inputs (N, D) and targets (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not rates or not precisions or any(not 0 <= r < 1 for r in rates) or any(not k > 0 for k in precisions):
        raise ConfigError(f"the MC dropout grid needs rates in [0, 1) and precisions > 0, got {list(rates)}, "
                          f"{list(precisions)}")
    grid_rates = torch.tensor([r for r in rates for _ in precisions], dtype=torch.float64)
    grid_precisions = torch.tensor([k for _ in rates for k in precisions], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    net = _Grid(len(grid_rates), x.shape[1], HIDDEN, generator)
    n = len(y)
    decay = LENGTH_SCALE**2 * (1 - grid_rates) / (2 * n * grid_precisions)  # (G,)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = x.double(), y.double()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            out = net(x[idx], grid_rates, generator)
            squared = (out - y[idx]).square().mean(dim=1)
            weights = net.w1.square().sum(dim=(1, 2)) + net.w2.square().sum(dim=(1, 2))
            optimizer.zero_grad(set_to_none=True)
            (squared + decay * weights).sum().backward()
            optimizer.step()
    return MCDropoutGrid(net, grid_rates, grid_precisions, seed)
