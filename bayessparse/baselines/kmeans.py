"""Seeded k-means: where a sparse GP's inducing points start.

Inducing points drawn at random from a standard normal lie far from image-like inputs, the kernel
between them and the data is nearly zero, and a GP classifier on digits stalls near chance (GPyTorch
issue #1015). Starting them at k-means centres of the training inputs puts ``M`` points where the data
are, which is also the usual initialisation of sparse variational GPs (Hensman, Matthews and
Ghahramani, 2015, *Scalable variational Gaussian process classification*).

Seeding is k-means++ (Arthur and Vassilvitskii, 2007): the first centre uniform, each next one drawn
with probability proportional to its squared distance ``D(x)²`` from the nearest chosen centre. Then
Lloyd's iterations (Lloyd, 1982) move each centre to the mean of its points,
``c_j ← mean{x : argmin_i ‖x − c_i‖ = j}``, until no centre moves (an empty cluster keeps its centre).
All draws come from the ``torch.Generator`` passed in; the global RNGs are not touched.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: At most this many training inputs (a seeded subsample) enter k-means: enough to place a few hundred centres.
MAX_POINTS = 2000


def kmeans(
    x: Tensor, k: int, generator: torch.Generator, iterations: int = 100, max_points: int = MAX_POINTS
) -> Tensor:
    """``(k, D)`` centres of the rows of ``x`` ``(N, D)``: k-means++ seeds refined by Lloyd's iterations, on a
    seeded subsample of ``max(max_points, k)`` rows when ``x`` has more."""
    if x.dim() != 2 or not 1 <= k <= len(x):
        raise ValueError(f"kmeans needs 1 <= k <= N points of shape (N, D), got k={k} and x of shape {tuple(x.shape)}")
    if len(x) > max(max_points, k):
        x = x[torch.randperm(len(x), generator=generator)[: max(max_points, k)]]
    x = x.double()
    centres = kmeans_plus_plus(x, k, generator)
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(dim=1)
        counts = torch.bincount(assign, minlength=len(centres)).double()[:, None]
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres.float()


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: ``k`` rows of ``x``, each next one drawn with probability ``∝ D(x)²``."""
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    d2 = (x - x[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)  # all points already chosen: any will do
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        d2 = torch.minimum(d2, (x - x[chosen[-1]]).square().sum(dim=1))
    return x[chosen].clone()
