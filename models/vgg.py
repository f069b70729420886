"""CIFAR-style VGG-16 and VGG-19 with BatchNorm.

Simonyan & Zisserman (2015), "Very deep convolutional networks for large-scale image
recognition", ICLR, configurations D (VGG-16) and E (VGG-19), with BatchNorm after every
convolution (Ioffe & Szegedy 2015). The CIFAR adaptation (as in the sparse-training literature
and the widely used ``pytorch-cifar`` reference) keeps the standard 3x3 convolution stacks and
five 2x2 max-pools, then replaces the 4096-wide ImageNet classifier with global average pooling
and a single ``Linear(512, num_classes)``. The convolutions carry no bias (BatchNorm follows).
With 10 classes this gives 14,724,042 (VGG-16-BN) and 20,035,018 (VGG-19-BN) parameters
(``pytorch-cifar``'s 14,728,266 / 20,040,522 include the redundant conv biases).

A real multiplier ``width`` (default 1.0) scales every convolution's channel count
(``max(1, round(c * width))`` for each width in the configuration); the head's input follows.
``width=1.0`` is the standard network.

Pruning conventions: every prunable weight is the ``.weight`` of an :class:`torch.nn.Conv2d` or
:class:`torch.nn.Linear`; convolutions have no bias (BatchNorm follows); the head's bias and BN
parameters are never pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.init import kaiming_init_
from models.width import check_width, scale_width

__all__ = ["VGG", "CFGS", "vgg16", "vgg19", "MIN_SIZE"]

#: Five 2x2 max-pools downsample by 32; smaller images are rejected by ``models.build``.
MIN_SIZE = 32

#: Standard configurations: ints are 3x3 conv widths, ``"M"`` a 2x2 max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """``cfg`` of [3x3 conv -> BN -> ReLU] and max-pools, global average pool, linear head.

    Args:
        cfg: layer list (see :data:`CFGS`).
        num_classes: number of output logits.
        in_channels: image channels (``input_shape[0]``).
        width: real multiplier of every convolution width in ``cfg`` (1.0, the default, keeps them).
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = check_width(width)
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c_out = scale_width(int(v), width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the identity on 32x32 inputs (1x1 maps after 5 pools)
        self.classifier = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """CIFAR VGG-16-BN: 14,724,042 parameters for 10 classes at ``width=1``; ``width`` scales every conv width."""
    return VGG(CFGS["vgg16"], num_classes, in_channels, width)


def vgg19(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """CIFAR VGG-19-BN: 20,035,018 parameters for 10 classes at ``width=1``; ``width`` scales every conv width."""
    return VGG(CFGS["vgg19"], num_classes, in_channels, width)
