"""Model zoo: the architectures the sparse-training experiments run on.

``build(name, num_classes, input_shape)`` is the single entry point; :data:`MODELS` maps each
name to a factory ``(num_classes, input_shape) -> nn.Module`` that checks the input shape first.
``input_shape`` is the shape of ONE example without the batch dimension: MNIST-1D ``(40,)``,
sklearn digits ``(1, 8, 8)``, tabular ``(30,)``/``(13,)``, CIFAR ``(3, 32, 32)``.

========== =========================================== ==========================================
name       architecture                                accepted ``input_shape``
========== =========================================== ==========================================
mlp        MLP, hidden (256, 256), ReLU                anything (flattened)
cnn1d      3 x Conv1d-BN-ReLU, global avg+max pool     ``(L,)`` or ``(C, L)``, ``L >= 4``
cnn2d      3 x Conv2d-BN-ReLU, global avg pool         ``(C, H, W)``, ``H, W >= 2``
resnet18   CIFAR ResNet-18 (He et al. 2016)            ``(C, H, W)``, ``H, W >= 8``
resnet50   CIFAR ResNet-50 (He et al. 2016)            ``(C, H, W)``, ``H, W >= 8``
vgg16      CIFAR VGG-16-BN (Simonyan & Zisserman)      ``(C, H, W)``, ``H, W >= 32``
vgg19      CIFAR VGG-19-BN (Simonyan & Zisserman)      ``(C, H, W)``, ``H, W >= 32``
wrn-22-2   WRN-22-2 (Zagoruyko & Komodakis 2016)       ``(C, H, W)``, ``H, W >= 4``
wrn-28-10  WRN-28-10 (Zagoruyko & Komodakis 2016)      ``(C, H, W)``, ``H, W >= 4``
========== =========================================== ==========================================

The minimum sizes are the networks' total downsampling factors. The channel count always comes
from the input shape and ``num_classes`` always from the argument.

Conventions the sparse-training engine relies on (tested in ``tests/test_models.py``): every
prunable weight is the ``.weight`` of an ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear``; biases and
normalisation parameters are separate parameters and are never pruned; no weights are tied; no
parameter is modified in place by ``forward``. Convolutions followed by BatchNorm have no bias.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

from torch import nn

from bayessparse.errors import ConfigError

from . import cnn1d as _cnn1d
from . import cnn2d as _cnn2d
from . import resnet as _resnet
from . import vgg as _vgg
from . import wrn as _wrn
from .mlp import mlp as _mlp

__all__ = ["MODELS", "build"]


def _as_int(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (int, numpy integer, 0-d tensor), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_num_classes(num_classes: int) -> int:
    n = _as_int(num_classes)
    if n is None or n < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return n


def _check_shape(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    dims = [_as_int(s) for s in input_shape] if isinstance(input_shape, Sequence) else [None]
    if not dims or any(d is None or d < 1 for d in dims):
        raise ConfigError(f"model {name!r}: input_shape must be a tuple of positive integers, got {input_shape!r}")
    return tuple(dims)  # type: ignore[arg-type]


def _incompatible(name: str, shape: tuple[int, ...], expects: str) -> ConfigError:
    return ConfigError(f"model {name!r} cannot take input_shape {shape}: it expects {expects}")


def _image_factory(name: str, ctor: Callable[..., nn.Module], min_size: int) -> Callable[[int, tuple[int, ...]], nn.Module]:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        num_classes = _check_num_classes(num_classes)
        shape = _check_shape(name, input_shape)
        if len(shape) != 3 or min(shape[1:]) < min_size:
            raise _incompatible(name, shape, f"images (C, H, W) with H, W >= {min_size}")
        return ctor(num_classes=num_classes, in_channels=shape[0])

    factory.__name__ = f"build_{name.replace('-', '_')}"
    factory.__doc__ = f"Build {name!r} for ``(C, H, W)`` images with ``H, W >= {min_size}``."
    return factory


def _build_mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the MLP for any input shape (it is flattened)."""
    return _mlp(_check_num_classes(num_classes), _check_shape("mlp", input_shape))


def _build_cnn1d(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the 1-D CNN for ``(L,)`` or ``(C, L)`` signals."""
    num_classes = _check_num_classes(num_classes)
    shape = _check_shape("cnn1d", input_shape)
    if len(shape) not in (1, 2) or shape[-1] < _cnn1d.MIN_LENGTH:
        raise _incompatible("cnn1d", shape, f"signals (L,) or (C, L) with L >= {_cnn1d.MIN_LENGTH}")
    return _cnn1d.cnn1d(num_classes, in_channels=1 if len(shape) == 1 else shape[0])


MODELS: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    "mlp": _build_mlp,
    "cnn1d": _build_cnn1d,
    "cnn2d": _image_factory("cnn2d", _cnn2d.cnn2d, _cnn2d.MIN_SIZE),
    "resnet18": _image_factory("resnet18", _resnet.resnet18, _resnet.MIN_SIZE),
    "resnet50": _image_factory("resnet50", _resnet.resnet50, _resnet.MIN_SIZE),
    "vgg16": _image_factory("vgg16", _vgg.vgg16, _vgg.MIN_SIZE),
    "vgg19": _image_factory("vgg19", _vgg.vgg19, _vgg.MIN_SIZE),
    "wrn-22-2": _image_factory("wrn-22-2", _wrn.wrn22_2, _wrn.MIN_SIZE),
    "wrn-28-10": _image_factory("wrn-28-10", _wrn.wrn28_10, _wrn.MIN_SIZE),
}


def build(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs for examples of shape ``input_shape``.

    Raises:
        ConfigError: unknown ``name``, a non-positive ``num_classes``, or an ``input_shape`` the
            architecture cannot take (e.g. ``cnn1d`` with ``(3, 32, 32)``, ``resnet18`` with ``(40,)``).
    """
    factory = MODELS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown model {name!r} (choose from: {', '.join(MODELS)})")
    return factory(num_classes, input_shape)
