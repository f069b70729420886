"""Wide Residual Networks WRN-d-k (pre-activation wide basic blocks).

Zagoruyko & Komodakis (2016), "Wide residual networks", BMVC. A 3x3 stem convolution with 16
channels, then three groups of ``n = (d - 4) / 6`` pre-activation blocks
(BN -> ReLU -> 3x3 conv -> BN -> ReLU -> [dropout] -> 3x3 conv) of widths 16k, 32k, 64k and
strides 1, 2, 2, a final BN -> ReLU, global average pooling and a linear head. Where a block
changes width or stride the shortcut is a 1x1 convolution applied to the pre-activated input
(as in the authors' code). With 10 classes, WRN-28-10 has 36,479,194 parameters and WRN-22-2
1,079,642 (``wrn28_10``, ``wrn22_2``).

An extra real multiplier ``width`` (default 1.0) scales every channel count on top of the integer
widen factor ``k``: the stem becomes ``round(16 * width)`` and the groups ``round(16 * k * width)``,
``round(32 * k * width)``, ``round(64 * k * width)`` (each at least 1). The stem scales too, so
that ``width`` means "every channel count times ``width``" as for the other models here.

Pruning conventions: every prunable weight is the ``.weight`` of an :class:`torch.nn.Conv2d` or
:class:`torch.nn.Linear`; convolutions have no bias; the head's bias and BN parameters are never
pruned; ReLUs and the residual addition are out of place.
"""

from __future__ import annotations

import torch
from torch import nn

from models.init import kaiming_init_
from models.width import scale_width

__all__ = ["WideBasicBlock", "WideResNet", "wrn22_2", "wrn28_10", "MIN_SIZE"]

#: Two stride-2 groups downsample by 4; smaller images are rejected by ``models.build``.
MIN_SIZE = 4


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block ``B(3, 3)`` with optional dropout between the convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        out = self.conv1(o)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # A projection acts on the pre-activated input, the identity on the raw input.
        return out + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``.

    Args:
        depth: total depth ``d``; must satisfy ``d = 6n + 4`` with ``n >= 1``.
        widen_factor: the integer widen factor ``k`` of the name WRN-d-k.
        num_classes: number of output logits.
        in_channels: image channels (``input_shape[0]``).
        dropout: dropout probability inside each block (0 disables it, the default).
        width: real multiplier of every channel count, the stem's included (see the module
            docstring); 1.0, the default, is the plain WRN-``depth``-``widen_factor``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = tuple(scale_width(c, width) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor))
        self.depth, self.widen_factor, self.width = depth, widen_factor, float(width)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        c_in = widths[0]
        for c_out, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(c_in, c_out, stride if j == 0 else 1, dropout))
                c_in = c_out
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init_(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn22_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, width: float = 1.0) -> WideResNet:
    """WRN-22-2: 1,079,642 parameters for 10 classes at ``width=1``.

    ``width`` scales every channel count: stem ``round(16 * width)``, groups
    ``round(32 * width)``, ``round(64 * width)``, ``round(128 * width)`` (at least 1 each).
    """
    return WideResNet(22, 2, num_classes, in_channels, dropout, width)


def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, width: float = 1.0) -> WideResNet:
    """WRN-28-10: 36,479,194 parameters for 10 classes at ``width=1``.

    ``width`` scales every channel count: stem ``round(16 * width)``, groups
    ``round(160 * width)``, ``round(320 * width)``, ``round(640 * width)`` (at least 1 each).
    """
    return WideResNet(28, 10, num_classes, in_channels, dropout, width)
