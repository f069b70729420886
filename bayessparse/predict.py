"""Predictions of a trained model over a whole dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from bayessparse.batches import batches, check_batch_size
from bayessparse.errors import ConfigError


def check_dataset(dataset: Dataset, name: str = "dataset") -> Dataset:
    """``dataset`` if it is a non-empty dataset of ``(x, y)`` pairs, else a ConfigError naming ``name``."""
    if torch.is_tensor(dataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ConfigError(f"{name} must be a dataset of (x, y) pairs such as TensorDataset(x, y), "
                          f"got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ConfigError(f"{name} is empty: there is nothing to predict")
    return dataset


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` and labels ``(N,)`` of ``model`` in eval mode, on the CPU.

    An empty ``dataset``, a ``batch_size`` that is not an int >= 1 or a ``model`` that is not an
    ``nn.Module`` is a ConfigError.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_dataset(dataset)
    check_batch_size(batch_size)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in batches(dataset, batch_size, device=device):
            logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def predict_probs(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, C)`` and labels ``(N,)`` (checks as :func:`predict_logits`)."""
    logits, labels = predict_logits(model, dataset, batch_size, device)
    return logits.softmax(dim=-1), labels


def labels_of(dataset: Dataset, batch_size: int = 1024) -> torch.Tensor:
    """The labels ``(N,)`` of a non-empty dataset of ``(x, y)`` pairs, in order."""
    return torch.cat([y for _, y in batches(check_dataset(dataset), batch_size)])
