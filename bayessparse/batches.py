"""Mini-batches from a dataset, fast for in-memory tensors.

The embedded datasets are ``TensorDataset``s that fit in memory; indexing their tensors with a
permutation is several times faster than a ``DataLoader`` collating single examples. Any other
dataset (CIFAR with augmentation) goes through a ``DataLoader``. The order of a shuffled epoch
is drawn from the generator passed in, so a resumed run replays it exactly.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    return -(-len(dataset) // batch_size)


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches; the last batch may be smaller."""
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else None
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors[:2]
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            yield x_all[idx].to(device), y_all[idx].to(device)
        return
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order.tolist() if order is not None else None)
    for x, y in loader:
        yield x.to(device), y.to(device)


def inputs(dataset: Dataset, batch_size: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Only the inputs, in order (for BatchNorm re-estimation)."""
    for x, _ in batches(dataset, batch_size, device=device):
        yield x
