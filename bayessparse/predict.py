"""Predictions of a trained model over a whole dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from bayessparse.batches import batches


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` and labels ``(N,)`` of ``model`` in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in batches(dataset, batch_size, device=device):
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def predict_probs(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, C)`` and labels ``(N,)``."""
    logits, labels = predict_logits(model, dataset, batch_size, device)
    return logits.softmax(dim=-1), labels
