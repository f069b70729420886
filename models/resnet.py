"""CIFAR-style ResNet-18 and ResNet-50.

He, Zhang, Ren & Sun (2016), "Deep residual learning for image recognition", CVPR. The CIFAR
adaptation used across the sparse-training literature (RigL, Evci et al. 2020; CigL, Lei et al.
2023) replaces the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) with a single 3x3/1 convolution
and keeps the four stages (64, 128, 256, 512 base widths, strides 1, 2, 2, 2) of
:class:`BasicBlock` (ResNet-18: ``[2, 2, 2, 2]``) or :class:`Bottleneck` (ResNet-50:
``[3, 4, 6, 3]``, expansion 4), followed by global average pooling and a linear head. Projection
shortcuts are 1x1 convolutions + BN where the shape changes (option B). With 10 classes this gives
11,173,962 (ResNet-18) and 23,520,842 (ResNet-50) parameters.

A real multiplier ``width`` (default 1.0) scales every channel count: the stem's 64 and the stage
base widths 64/128/256/512 each become ``max(1, round(c * width))``; a bottleneck's output is
still 4x its (scaled) base width. ``width=1.0`` is the standard network.

Pruning conventions: every prunable weight is the ``.weight`` of an :class:`torch.nn.Conv2d` or
:class:`torch.nn.Linear`; convolutions have no bias (BatchNorm follows); the head's bias and BN
parameters are never pruned; the residual addition is out of place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.init import kaiming_init_
from models.width import scale_width

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "MIN_SIZE"]

#: Three stride-2 stages downsample by 8; smaller images are rejected by ``models.build``.
MIN_SIZE = 8


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), each with BN (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages, global average pooling, linear head.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage (four entries).
        num_classes: number of output logits.
        in_channels: image channels (``input_shape[0]``).
        width: real multiplier of every channel count (stem and stage base widths; see the
            module docstring); 1.0, the default, is the standard network.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        if len(num_blocks) != 4 or any(n < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be four positive counts, got {tuple(num_blocks)}")
        stem, *bases = (scale_width(c, width) for c in (64, 64, 128, 256, 512))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = float(width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        c_in = stem
        stages = []
        for i, (planes, n) in enumerate(zip(bases, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-18 (BasicBlock, ``[2, 2, 2, 2]``): 11,173,962 parameters for 10 classes at ``width=1``.

    ``width`` scales the stem and the stage widths 64/128/256/512 (``max(1, round(c * width))``).
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width)


def resnet50(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-50 (Bottleneck, ``[3, 4, 6, 3]``): 23,520,842 parameters for 10 classes at ``width=1``.

    ``width`` scales the stem and the stage base widths 64/128/256/512 (``max(1, round(c * width))``);
    each bottleneck still expands its scaled base width by 4.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, width)
