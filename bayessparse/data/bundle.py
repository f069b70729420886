"""The :class:`DataBundle` every dataset loader returns, and the tensor-dataset constructors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from bayessparse.tasks import CLASSIFICATION, Task, named


@dataclass(frozen=True)
class DataBundle:
    """Train / validation / test splits of one dataset plus what a model needs to know about it.

    Attributes:
        name: the registry name (``"mnist1d"``, ``"cifar10"``, ...).
        train: the training split; carries the (possibly noisy) training labels and, for CIFAR,
            the training augmentation. Embedded datasets are ``TensorDataset(x_float32, y_int64)``.
        val: held-out part of the original training data; clean labels, no augmentation.
        test: the dataset's test split; clean labels, no augmentation.
        num_classes: number of classes ``K``; 1 for a regression dataset.
        input_shape: shape of one example without the batch dimension, e.g. ``(40,)``.
        true_probs: synthetic data only: ``{"train", "val", "test"}`` -> ``(N, K)`` float64 tensor of the
            exact conditional distribution of the label each split carries (see
            :func:`bayessparse.data.noise.noisy_label_posterior`); ``None`` elsewhere.
        train_eval: CIFAR only: the same examples as ``train`` without augmentation (BatchNorm
            re-estimation, train metrics); ``None`` for embedded datasets, whose ``train`` has none.
        task: what the data ask a network to predict (:mod:`bayessparse.tasks`): :data:`~bayessparse.tasks.CLASSIFICATION`
            (integer labels in ``[0, K)``) or :data:`~bayessparse.tasks.REGRESSION` (float32 targets of shape
            ``(N,)``, see :func:`regression_dataset`; ``num_classes`` is 1).
        target_scale: a regression set scored in the original units of its target (the UCI benchmark): the
            ``(mean, std)`` its standardised targets were made with, ``y = mean + std · y_standardised``;
            ``None``: scores in the standardised units the network sees (diabetes).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    true_probs: dict[str, torch.Tensor] | None = None
    train_eval: Dataset | None = None
    task: Task = CLASSIFICATION
    target_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", named(self.task))  # a task's name is taken for its task


def tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """``TensorDataset(x as float32, y as int64)``, the layout the trainer batches by direct indexing."""
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def regression_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """``TensorDataset(x as float32, y as float32 of shape (N,))``: real-valued targets of a regression set."""
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(np.reshape(y, (-1,)), dtype=np.float32)),
    )
