"""Mini-batches from a dataset, fast for in-memory tensors.

The embedded datasets are ``TensorDataset``s that fit in memory; indexing their tensors with a
permutation is several times faster than a ``DataLoader`` collating single examples. Any other
dataset (CIFAR with augmentation) goes through a ``DataLoader``. The order of a shuffled epoch
is drawn from the generator passed in, so a resumed run replays it exactly.

A last batch of exactly one example (``len(dataset) % batch_size == 1`` with more than one batch)
is folded into the batch before it, which then holds ``batch_size + 1`` examples: BatchNorm in
training mode cannot normalise a single example, and every example is still used once per pass.
:func:`num_batches` counts the batches :func:`batches` yields, folding included.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bayessparse.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


def check_batch_size(batch_size: int, name: str = "batch_size") -> int:
    """``batch_size`` as an ``int`` if it is an integer >= 1, else a ConfigError naming ``name``."""
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {batch_size!r}")
    return int(batch_size)


def _bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every batch, a lone last example folded into the batch before it."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and batch_size > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_sizes(dataset: Dataset, batch_size: int) -> list[int]:
    """The sizes of the batches :func:`batches` yields for ``dataset`` (without a ``world``: whole batches)."""
    return [stop - start for start, stop in _bounds(len(dataset), check_batch_size(batch_size))]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    """How many batches :func:`batches` yields for ``dataset`` (a lone last example joins the batch before)."""
    n, batch_size = len(dataset), check_batch_size(batch_size)
    return -(-n // batch_size) - (n > batch_size and n % batch_size == 1)


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    world: Any = None,
) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches of ``batch_size`` examples; the last batch may be smaller, never a single
    example when there is more than one batch (it is folded into the one before, which gets one more).

    ``world`` (a :class:`bayessparse.distributed.World` of several processes): every rank draws the same
    order and yields only its contiguous part of each batch (:func:`bayessparse.distributed.part`)."""
    n = len(dataset)
    bounds = _bounds(n, check_batch_size(batch_size))
    if world is not None and world.size > 1:
        from bayessparse.distributed import part

        bounds = [part(start, stop, world) for start, stop in bounds]
    order = torch.randperm(n, generator=generator) if shuffle else None
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors[:2]
        for start, stop in bounds:
            idx = order[start:stop] if order is not None else slice(start, stop)
            yield x_all[idx].to(device), y_all[idx].to(device)
        return
    index = order.tolist() if order is not None else list(range(n))
    loader = DataLoader(dataset, batch_sampler=[index[start:stop] for start, stop in bounds])
    for x, y in loader:
        yield x.to(device), y.to(device)


def inputs(dataset: Dataset, batch_size: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Only the inputs, in order (for BatchNorm re-estimation); batches as :func:`batches`, so never a
    lone last example that training-mode BatchNorm would refuse."""
    for x, _ in batches(dataset, batch_size, device=device):
        yield x
