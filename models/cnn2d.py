"""Small 2-D convolutional network for tiny images (8x8 sklearn digits and up).

A compact VGG-style stack (Simonyan & Zisserman 2015, "Very deep convolutional networks for
large-scale image recognition", ICLR) in the spirit of LeNet (LeCun et al. 1998): 3x3
convolutions with BatchNorm (Ioffe & Szegedy 2015; CigL re-estimates these statistics), one 2x2
max-pool, and global average pooling before the linear head, so it accepts any ``(C, H, W)`` with
``H, W >= 2``: digits ``(1, 8, 8)`` as well as CIFAR ``(3, 32, 32)``.

Pruning conventions: every prunable weight is the ``.weight`` of an :class:`torch.nn.Conv2d` or
:class:`torch.nn.Linear`; convolutions have no bias (BatchNorm follows); the head's bias and BN
parameters are never pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from models.init import kaiming_init_
from models.width import scale_width

__all__ = ["CNN2D", "cnn2d", "MIN_SIZE", "DEFAULT_CHANNELS"]

#: One 2x2 max-pool; smaller images are rejected by ``models.build``.
MIN_SIZE = 2

#: Output channels of the three 3x3 convolutions at ``width=1``.
DEFAULT_CHANNELS = (32, 64, 128)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNN2D(nn.Module):
    """``[conv-BN-ReLU] x2 -> maxpool 2 -> conv-BN-ReLU -> global avg pool -> Linear``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels (``input_shape[0]``).
        channels: output channels of the three 3x3 convolutions.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 1, channels: tuple[int, int, int] = DEFAULT_CHANNELS
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        if len(channels) != 3 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be three positive widths, got {tuple(channels)}")
        c1, c2, c3 = (int(c) for c in channels)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1),
            *_conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(c3, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cnn2d(num_classes: int, in_channels: int = 1, width: float = 1.0) -> CNN2D:
    """The default :class:`CNN2D` (channels 32/64/128; ~94k parameters for 10 classes).

    ``width`` multiplies the three convolutions' channels: ``c -> max(1, round(c * width))``
    (64/128/256 at ``width=2``, 16/32/64 at ``0.5``); the head's input follows. ``width=1.0``
    builds exactly the default network.
    """
    channels = tuple(scale_width(c, width) for c in DEFAULT_CHANNELS)
    return CNN2D(num_classes, in_channels, channels)
