"""Multi-layer perceptron: flatten, then ``Linear -> ReLU`` hidden layers and a linear head.

The fully connected baseline used throughout the sparse-training literature (e.g. the LeNet-300-100
of LeCun et al. 1998; Mocanu et al. 2018, "Scalable training of artificial neural networks with
adaptive sparse connectivity", which introduced SET on MLPs). It flattens any input, so it works
for every dataset: MNIST-1D ``(40,)``, digits ``(1, 8, 8)``, tabular ``(d,)`` and CIFAR images.

Pruning conventions: every prunable weight is the ``.weight`` of an :class:`torch.nn.Linear`;
biases are separate parameters and are never pruned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.width import check_width, scale_width

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``.

    Args:
        in_features: number of input features after flattening one example.
        num_classes: number of output logits.
        hidden: widths of the hidden layers (may be empty: a linear classifier).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        widths = [int(w) for w in hidden]
        if any(w < 1 for w in widths):
            raise ValueError(f"hidden widths must be >= 1, got {tuple(hidden)}")
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming (He et al. 2015) for the ReLU layers; the head keeps PyTorch's default
        # (itself a Kaiming-uniform variant), which keeps the initial logits small.
        for m in self.features.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def mlp(
    num_classes: int,
    input_shape: Sequence[int],
    hidden: Sequence[int] = (256, 256),
    width: float = 1.0,
) -> MLP:
    """An :class:`MLP` for examples of shape ``input_shape`` (any rank; it is flattened).

    ``width`` multiplies every hidden width: ``hidden[i] -> max(1, round(hidden[i] * width))``
    (the defaults become ``(512, 512)`` at ``width=2``, ``(128, 128)`` at ``0.5``). The input and
    output sizes are unchanged; ``width=1.0`` builds exactly the unscaled MLP.
    """
    width = check_width(width)  # checked even when there are no hidden layers to scale
    widths = tuple(scale_width(h, width) for h in hidden)
    return MLP(math.prod(int(s) for s in input_shape), num_classes, widths)
