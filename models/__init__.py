"""Model zoo: the architectures the sparse-training experiments run on.

``build(name, num_classes, input_shape, *, width=1.0)`` is the single entry point;
:data:`MODELS` maps each name to a factory ``(num_classes, input_shape, *, width=1.0) -> nn.Module``
that checks its arguments first. ``input_shape`` is the shape of ONE example without the batch
dimension: MNIST-1D ``(40,)``, sklearn digits ``(1, 8, 8)``, tabular ``(30,)``/``(13,)``, CIFAR
``(3, 32, 32)``.

========== ======================================= ============================= ====================================
name       architecture                            accepted ``input_shape``      what ``width`` scales
========== ======================================= ============================= ====================================
mlp        MLP, hidden (256, 256), ReLU            anything (flattened)          both hidden widths
cnn1d      3 x Conv1d-BN-ReLU, global avg+max pool ``(L,)`` or ``(C, L)``,       the conv channels 32/64/64
                                                   ``L >= 4``
cnn2d      3 x Conv2d-BN-ReLU, global avg pool     ``(C, H, W)``, ``H, W >= 2``  the conv channels 32/64/128
resnet18   CIFAR ResNet-18 (He et al. 2016)        ``(C, H, W)``, ``H, W >= 8``  stem 64 and stage widths 64..512
resnet50   CIFAR ResNet-50 (He et al. 2016)        ``(C, H, W)``, ``H, W >= 8``  stem 64 and stage base widths
                                                                                 64..512 (bottlenecks still expand 4x)
vgg16      CIFAR VGG-16-BN (Simonyan & Zisserman)  ``(C, H, W)``, ``H, W >= 32`` every conv width 64..512
vgg19      CIFAR VGG-19-BN (Simonyan & Zisserman)  ``(C, H, W)``, ``H, W >= 32`` every conv width 64..512
wrn-22-2   WRN-22-2 (Zagoruyko & Komodakis 2016)   ``(C, H, W)``, ``H, W >= 4``  stem 16 and groups 32/64/128
wrn-28-10  WRN-28-10 (Zagoruyko & Komodakis 2016)  ``(C, H, W)``, ``H, W >= 4``  stem 16 and groups 160/320/640
========== ======================================= ============================= ====================================

The minimum sizes are the networks' total downsampling factors. The channel count always comes
from the input shape and ``num_classes`` always from the argument.

``width`` (default 1.0) is a capacity knob that every model supports: a finite real number > 0
that multiplies each hidden-unit / channel count listed above, ``c -> max(1, round(c * width))``
(Python's ``round``: halves go to even). It never changes depth, strides, kernel sizes, the input
channels or the number of classes, so parameter counts grow roughly as ``width ** 2``. For WRNs it
multiplies on top of the integer widen factor ``k`` (groups ``round(16 * k * width)`` etc.), and the
16-channel stem scales too, so that ``width`` means "every channel count" for every model.
``width=1.0`` builds exactly the standard networks: the same modules, parameter counts and, for the
same torch seed, the same initial weights. A non-positive, non-finite or non-numeric ``width``
raises :class:`~bayessparse.errors.ConfigError` naming the field.

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
from .width import check_width as _check_width_value

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


def _check_width(width: float) -> float:
    try:
        return _check_width_value(width)
    except ValueError as exc:  # the one-line message names the field: "width must be > 0, got ..."
        raise ConfigError(str(exc)) from None


def _incompatible(name: str, shape: tuple[int, ...], expects: str) -> ConfigError:
    return ConfigError(f"model {name!r} cannot take input_shape {shape}: it expects {expects}")


def _image_factory(name: str, ctor: Callable[..., nn.Module], min_size: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int, input_shape: tuple[int, ...], *, width: float = 1.0) -> nn.Module:
        num_classes = _check_num_classes(num_classes)
        shape = _check_shape(name, input_shape)
        if len(shape) != 3 or min(shape[1:]) < min_size:
            raise _incompatible(name, shape, f"images (C, H, W) with H, W >= {min_size}")
        return ctor(num_classes=num_classes, in_channels=shape[0], width=_check_width(width))

    factory.__name__ = f"build_{name.replace('-', '_')}"
    factory.__doc__ = (
        f"Build {name!r} for ``(C, H, W)`` images with ``H, W >= {min_size}``; "
        "``width`` multiplies every channel count (see the module table)."
    )
    return factory


def _build_mlp(num_classes: int, input_shape: tuple[int, ...], *, width: float = 1.0) -> nn.Module:
    """Build the MLP for any input shape (it is flattened); ``width`` multiplies both hidden widths."""
    num_classes = _check_num_classes(num_classes)
    shape = _check_shape("mlp", input_shape)
    return _mlp(num_classes, shape, width=_check_width(width))


def _build_cnn1d(num_classes: int, input_shape: tuple[int, ...], *, width: float = 1.0) -> nn.Module:
    """Build the 1-D CNN for ``(L,)`` or ``(C, L)`` signals; ``width`` multiplies the conv channels."""
    num_classes = _check_num_classes(num_classes)
    shape = _check_shape("cnn1d", input_shape)
    if len(shape) not in (1, 2) or shape[-1] < _cnn1d.MIN_LENGTH:
        raise _incompatible("cnn1d", shape, f"signals (L,) or (C, L) with L >= {_cnn1d.MIN_LENGTH}")
    return _cnn1d.cnn1d(num_classes, in_channels=1 if len(shape) == 1 else shape[0], width=_check_width(width))


MODELS: dict[str, Callable[..., nn.Module]] = {
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


def build(name: str, num_classes: int, input_shape: tuple[int, ...], *, width: float = 1.0) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs for examples of shape ``input_shape``.

    ``width`` (keyword-only, default 1.0) multiplies the model's hidden-unit / channel counts,
    ``c -> max(1, round(c * width))``; the module table says which counts each model scales.
    ``width=1.0`` builds exactly the standard network (same parameters and, for the same torch
    seed, the same initial weights).

    Raises:
        ConfigError: unknown ``name``, a non-positive ``num_classes``, an ``input_shape`` the
            architecture cannot take (e.g. ``cnn1d`` with ``(3, 32, 32)``, ``resnet18`` with
            ``(40,)``), or a ``width`` that is not a finite number > 0.
    """
    factory = MODELS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown model {name!r} (choose from: {', '.join(MODELS)})")
    return factory(num_classes, input_shape, width=width)
