"""The weight initialisation every convolutional model here shares (He et al., ICCV 2015)."""

from torch import nn


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions; BatchNorm at weight 1, bias 0; Linear left at torch's default."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
