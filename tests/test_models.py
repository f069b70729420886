"""Tests for the ``models`` package: shapes, parameter counts, errors, determinism and the
structural conventions the sparse-training engine relies on."""

from __future__ import annotations

import functools
import math
import time

import pytest
import torch
from torch import nn

import models
from bayessparse.errors import ConfigError
from models.wrn import WideResNet

NUM_CLASSES = 7  # deliberately not 10, to catch a hard-coded head
HEAVY = {"resnet50", "wrn-28-10"}  # only parameter counts and one batch of 2 at 32x32

# Every model x every input shape it must accept (the datasets' shapes, plus a few edge cases:
# multi-channel signals, non-3 image channels, the minimum spatial size).
COMPATIBLE = [
    *[("mlp", s) for s in [(40,), (1, 8, 8), (30,), (13,), (3, 32, 32), (2, 5)]],
    *[("cnn1d", s) for s in [(40,), (30,), (13,), (2, 40), (4,)]],
    *[("cnn2d", s) for s in [(1, 8, 8), (3, 32, 32), (2, 2, 2)]],
    *[("resnet18", s) for s in [(3, 32, 32), (1, 8, 8), (5, 12, 9)]],
    ("resnet50", (3, 32, 32)),
    *[("vgg16", s) for s in [(3, 32, 32), (1, 32, 32)]],
    *[("vgg19", s) for s in [(3, 32, 32)]],
    *[("wrn-22-2", s) for s in [(3, 32, 32), (1, 8, 8), (2, 4, 4)]],
    ("wrn-28-10", (3, 32, 32)),
]

INCOMPATIBLE = [
    ("cnn1d", (3, 32, 32)),
    ("cnn1d", (1, 8, 8)),
    ("cnn1d", (3,)),  # shorter than the downsampling factor
    ("cnn2d", (40,)),
    ("cnn2d", (3, 1, 1)),
    ("resnet18", (40,)),
    ("resnet18", (3, 4, 4)),
    ("resnet50", (30,)),
    ("vgg16", (1, 8, 8)),
    ("vgg19", (3, 16, 16)),
    ("vgg16", (2, 40)),
    ("wrn-22-2", (13,)),
    ("wrn-28-10", (3, 2, 2)),
]

# Parameter counts with 10 classes: (published reference, relative tolerance).
REFERENCE_PARAMS = {
    "resnet18": (11.17e6, 0.01),  # He et al. CIFAR variant, e.g. kuangliu/pytorch-cifar
    "resnet50": (23.52e6, 0.01),
    "vgg16": (14.73e6, 0.02),  # VGG-16-BN with a single linear head; "~15M"
    "vgg19": (20.04e6, 0.02),
    "wrn-22-2": (1.1e6, 0.05),
    "wrn-28-10": (36.5e6, 0.01),  # Zagoruyko & Komodakis 2016, Table
}
# Exact counts published by widely used reference implementations.
EXACT_PARAMS = {"resnet18": 11_173_962, "resnet50": 23_520_842, "wrn-28-10": 36_479_194}

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@functools.lru_cache(maxsize=None)
def _cached(name: str, num_classes: int, shape: tuple[int, ...], width: float | None = None) -> nn.Module:
    """Build once per session (WRN-28-10 / ResNet-50 initialisation takes a second or two).

    ``width=None`` calls ``models.build`` without the argument (the default model)."""
    torch.manual_seed(0)
    if width is None:
        return models.build(name, num_classes, shape)
    return models.build(name, num_classes, shape, width=width)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _one_shape(name: str) -> tuple[int, ...]:
    return next(s for n, s in COMPATIBLE if n == name)


# --------------------------------------------------------------------------- registry / errors


def test_registry_names_are_exactly_the_documented_ones():
    assert list(models.MODELS) == [
        "mlp", "cnn1d", "cnn2d", "resnet18", "resnet50", "vgg16", "vgg19", "wrn-22-2", "wrn-28-10",
    ]
    assert {n for n, _ in COMPATIBLE} == set(models.MODELS)


def test_unknown_name_raises_config_error_listing_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet-18' \(choose from: mlp, cnn1d, .*wrn-28-10\)"):
        models.build("resnet-18", 10, (3, 32, 32))
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name,shape", INCOMPATIBLE, ids=[f"{n}-{s}" for n, s in INCOMPATIBLE])
def test_incompatible_shape_raises_config_error_naming_model_and_shape(name, shape):
    with pytest.raises(ConfigError) as info:
        models.build(name, 10, shape)
    msg = str(info.value)
    assert repr(name) in msg and str(shape) in msg and "\n" not in msg
    with pytest.raises(ConfigError):  # the registry factories check too, not only build()
        models.MODELS[name](10, shape)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_num_classes_raises_config_error(bad):
    with pytest.raises(ConfigError, match="num_classes"):
        models.build("mlp", bad, (40,))


@pytest.mark.parametrize("bad", [(), (0,), (3, -1, 32), (3.0, 32, 32), None, "abc"])
def test_bad_input_shape_raises_config_error(bad):
    with pytest.raises(ConfigError, match="input_shape"):
        models.build("mlp", 10, bad)


def test_shape_accepts_torch_size_and_numpy_ints():
    np = pytest.importorskip("numpy")
    m = models.build("cnn1d", np.int64(3), torch.Size([40]))
    assert m(torch.randn(2, 40)).shape == (2, 3)
    m = models.build("mlp", 3, np.zeros((1, 8, 8)).shape)
    assert m.in_features == 64


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name,shape", COMPATIBLE, ids=[f"{n}-{s}" for n, s in COMPATIBLE])
def test_output_shape_is_batch_by_num_classes(name, shape):
    model = _cached(name, NUM_CLASSES, shape)
    batch = 2 if name in HEAVY else 3
    x = torch.randn(batch, *shape)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (batch, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in models.MODELS if n not in {"mlp", "cnn1d"}])
def test_image_models_take_channels_from_input_shape(name):
    model = models.build(name, NUM_CLASSES, (5, 32, 32))
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 5
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == NUM_CLASSES


def test_cnn1d_treats_flat_signal_as_one_channel():
    model = _cached("cnn1d", NUM_CLASSES, (40,)).eval()
    x = torch.randn(4, 40)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.unsqueeze(1)))
    assert models.build("cnn1d", 3, (2, 40)).features[0].in_channels == 2


def test_mlp_flattens_and_honours_hidden_widths():
    from models.mlp import mlp

    m = mlp(4, (3, 5, 2), hidden=(16, 8, 8))
    widths = [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)]
    assert widths == [(30, 16), (16, 8), (8, 8), (8, 4)]
    assert m(torch.randn(2, 3, 5, 2)).shape == (2, 4)
    assert [(l.in_features, l.out_features) for l in mlp(4, (6,), hidden=()).modules() if isinstance(l, nn.Linear)] == [(6, 4)]


def test_wrn_depth_must_be_6n_plus_4():
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in WideResNet(16, 1, 10).modules()) == 13
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(20, 2, 10)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(name):
    ref, rel = REFERENCE_PARAMS[name]
    n = _n_params(_cached(name, 10, (3, 32, 32)))
    assert abs(n - ref) <= rel * ref, f"{name}: {n:,} parameters, reference {ref:,.0f}"
    if name in EXACT_PARAMS:
        assert n == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", list(models.MODELS))
def test_head_size_follows_num_classes(name):
    shape = _one_shape(name)
    m10, m7 = _cached(name, 10, shape), _cached(name, NUM_CLASSES, shape)
    head_in = [m for m in m10.modules() if isinstance(m, nn.Linear)][-1].in_features
    assert _n_params(m10) - _n_params(m7) == 3 * (head_in + 1)


def test_depth_of_the_named_architectures():
    """Weight layers (conv + linear, excluding 1x1 projection shortcuts) match the names."""

    def depth(name, skip_1x1_shortcuts=True):
        m = _cached(name, 10, (3, 32, 32))
        return sum(
            1
            for mod_name, mod in m.named_modules()
            if isinstance(mod, PRUNABLE) and not (skip_1x1_shortcuts and "shortcut" in mod_name)
        )

    assert depth("resnet18") == 18
    assert depth("resnet50") == 50
    assert depth("vgg16") == 14  # 13 convs + 1 linear head (CIFAR classifier)
    assert depth("vgg19") == 17  # 16 convs + 1 linear head
    assert depth("wrn-22-2") == 20  # 6n+1 3x3 convs + head = d - 2 (d also counts 2 shortcuts)
    assert depth("wrn-28-10") == 26


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet18", "vgg16", "wrn-22-2"])
def test_build_is_deterministic_given_seed(name):
    shape = _one_shape(name)
    torch.manual_seed(123)
    a = models.build(name, NUM_CLASSES, shape).state_dict()
    torch.manual_seed(123)
    b = models.build(name, NUM_CLASSES, shape).state_dict()
    torch.manual_seed(124)
    c = models.build(name, NUM_CLASSES, shape).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight") and a[k].dim() > 1)


# --------------------------------------------------------------------------- pruning-engine conventions


@pytest.mark.parametrize("name", list(models.MODELS))
def test_structure_follows_pruning_engine_conventions(name):
    model = _cached(name, 10, _one_shape(name))

    # No tied weights: every parameter tensor appears exactly once, even counting duplicates.
    all_params = list(model.named_parameters(remove_duplicate=False))
    assert len({id(p) for _, p in all_params}) == len(all_params)

    # Only conv/linear/BN modules own parameters; conv/linear weights are >= 2-D and the bias
    # (if any) is a separate 1-D parameter.
    prunable = 0
    for mod in model.modules():
        own = dict(mod.named_parameters(recurse=False))
        if not own:
            continue
        assert isinstance(mod, PRUNABLE + NORMS), f"{type(mod).__name__} owns parameters"
        if isinstance(mod, PRUNABLE):
            prunable += 1
            assert isinstance(mod.weight, nn.Parameter) and mod.weight.dim() >= 2
            assert set(own) <= {"weight", "bias"}
            if mod.bias is not None:
                assert mod.bias.dim() == 1 and mod.bias.data_ptr() != mod.weight.data_ptr()
        else:
            assert mod.weight.dim() == 1 and mod.bias.dim() == 1
    assert prunable >= 2

    # Convolutions are followed by BatchNorm, so they carry no bias.
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert all(c.bias is None for c in convs)

    # The CigL BN re-estimation needs BN layers in every conv net.
    if name != "mlp":
        assert any(isinstance(m, NORMS) for m in model.modules())


@pytest.mark.parametrize(
    "name,shape",
    [("mlp", (40,)), ("cnn1d", (40,)), ("cnn2d", (1, 8, 8)), ("resnet18", (3, 8, 8)), ("wrn-22-2", (3, 8, 8)), ("vgg16", (3, 32, 32))],
)
def test_every_prunable_weight_gets_a_gradient_and_forward_leaves_parameters_alone(name, shape):
    torch.manual_seed(0)
    model = models.build(name, NUM_CLASSES, shape).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(torch.randn(4, *shape)), torch.arange(4) % NUM_CLASSES)
    loss.backward()
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k]), f"{k} changed during forward/backward"
    for mod_name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE):
            assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0, mod_name


# --------------------------------------------------------------------------- learning (slow)


@pytest.mark.slow
def test_cnn1d_reaches_85_percent_on_mnist1d_in_10_epochs():
    mnist1d_data = pytest.importorskip("mnist1d.data")
    args = mnist1d_data.get_dataset_args()
    data = mnist1d_data.make_dataset(args)  # generated locally; never downloaded
    x = torch.tensor(data["x"], dtype=torch.float32)
    y = torch.tensor(data["y"], dtype=torch.long)
    n = int(0.9 * len(x))
    x, y = x[:n], y[:n]
    xt = torch.tensor(data["x_test"], dtype=torch.float32)
    yt = torch.tensor(data["y_test"], dtype=torch.long)

    torch.manual_seed(0)
    model = models.build("cnn1d", 10, (40,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    # One intra-op thread: for a model this small, 2 threads on a busy 2-core box are ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for _ in range(10):
            model.train()
            perm = torch.randperm(n)
            for i in range(0, n, 128):
                idx = perm[i : i + 128]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.85, f"test accuracy {acc:.3f} after 10 epochs ({elapsed:.1f}s)"


# --------------------------------------------------------------------------- width multiplier

# Exact parameter counts of the default models with 10 classes, for the shape each is built with.
WIDTH_ONE_PARAMS = {
    ("mlp", (40,)): 78_858,
    ("cnn1d", (40,)): 32_490,
    ("cnn2d", (3, 32, 32)): 94_762,
    ("resnet18", (3, 32, 32)): 11_173_962,
    ("resnet50", (3, 32, 32)): 23_520_842,
    ("vgg16", (3, 32, 32)): 14_724_042,
    ("vgg19", (3, 32, 32)): 20_035_018,
    ("wrn-22-2", (3, 32, 32)): 1_079_642,
    ("wrn-28-10", (3, 32, 32)): 36_479_194,
}


def _linear_out(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]


def _conv_out(model: nn.Module, skip_shortcuts: bool = True) -> list[int]:
    return [
        m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and not (skip_shortcuts and "shortcut" in name)
    ]


def _scaled(channels, width):
    return [max(1, round(c * width)) for c in channels]


def test_build_signature_has_keyword_only_width_defaulting_to_one():
    import inspect

    param = inspect.signature(models.build).parameters["width"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default == 1.0
    for factory in models.MODELS.values():
        assert inspect.signature(factory).parameters["width"].default == 1.0


@pytest.mark.parametrize("name,shape", list(WIDTH_ONE_PARAMS), ids=[n for n, _ in WIDTH_ONE_PARAMS])
def test_width_one_keeps_parameter_counts(name, shape):
    expected = WIDTH_ONE_PARAMS[(name, shape)]
    assert _n_params(_cached(name, 10, shape)) == expected
    assert _n_params(_cached(name, 10, shape, 1.0)) == expected


@pytest.mark.parametrize("name", list(models.MODELS))
def test_width_one_builds_the_identical_model_and_initial_weights(name):
    shape = _one_shape(name)
    default = _cached(name, NUM_CLASSES, shape).state_dict()
    for width in (1.0, 1):
        torch.manual_seed(0)
        scaled = models.build(name, NUM_CLASSES, shape, width=width).state_dict()
        assert scaled.keys() == default.keys()
        assert all(scaled[k].shape == default[k].shape and torch.equal(scaled[k], default[k]) for k in default)


@pytest.mark.parametrize("width", [2.0, 0.5])
def test_mlp_width_scales_hidden_units(width):
    m = _cached("mlp", NUM_CLASSES, (40,), width)
    h = int(256 * width)
    assert [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)] == [
        (40, h), (h, h), (h, NUM_CLASSES),
    ]


@pytest.mark.parametrize("width,expected", [(2.0, [64, 128, 128]), (0.5, [16, 32, 32]), (1.1, [35, 70, 70])])
def test_cnn1d_width_scales_channels(width, expected):
    m = _cached("cnn1d", NUM_CLASSES, (40,), width)
    assert _conv_out(m) == expected
    assert [b.num_features for b in m.modules() if isinstance(b, nn.BatchNorm1d)] == expected
    assert m.features[0].in_channels == 1  # the input channels never scale
    assert m.classifier.in_features == 2 * expected[-1] and m.classifier.out_features == NUM_CLASSES


@pytest.mark.parametrize("width,expected", [(2.0, [64, 128, 256]), (0.5, [16, 32, 64])])
def test_cnn2d_width_scales_channels(width, expected):
    m = _cached("cnn2d", NUM_CLASSES, (1, 8, 8), width)
    assert _conv_out(m) == expected
    assert m.features[0].in_channels == 1
    assert m.classifier.in_features == expected[-1]


@pytest.mark.parametrize("width", [2.0, 0.5])
def test_wrn_width_scales_stem_and_groups(width):
    m = _cached("wrn-22-2", NUM_CLASSES, (3, 8, 8), width)
    assert m.conv1.out_channels == round(16 * width)  # the stem scales too
    for group, c in zip((m.block1, m.block2, m.block3), _scaled((32, 64, 128), width)):
        assert all(b.conv1.out_channels == b.conv2.out_channels == c for b in group)
        assert group[0].shortcut is not None and group[0].shortcut.out_channels == c
    assert m.fc.in_features == round(128 * width)
    # Three blocks per group at any width: width changes channels, never depth.
    assert len(_conv_out(m)) == len(_conv_out(_cached("wrn-22-2", NUM_CLASSES, (3, 8, 8))))


def test_wrn_width_multiplies_on_top_of_the_widen_factor():
    m = models.build("wrn-28-10", 10, (3, 32, 32), width=0.1)  # groups 16/32/64: a WRN-28-1 with a 2-channel stem
    assert m.conv1.out_channels == 2
    assert [g[-1].conv2.out_channels for g in (m.block1, m.block2, m.block3)] == [16, 32, 64]
    assert m.widen_factor == 10 and m.width == 0.1


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("width", [2.0, 0.5])
def test_resnet_and_vgg_width_scales_every_channel_count(name, width):
    m = _cached(name, NUM_CLASSES, (3, 32, 32), width)
    base = _conv_out(_cached(name, NUM_CLASSES, (3, 32, 32)), skip_shortcuts=False)
    assert _conv_out(m, skip_shortcuts=False) == _scaled(base, width)
    assert _linear_out(m) == [NUM_CLASSES]


def test_resnet50_width_scales_base_widths_and_keeps_the_expansion():
    m = models.build("resnet50", 10, (3, 32, 32), width=0.25)
    assert m.conv1.out_channels == 16
    assert [layer[-1].conv3.out_channels for layer in (m.layer1, m.layer2, m.layer3, m.layer4)] == [64, 128, 256, 512]
    assert m.fc.in_features == 512


@pytest.mark.parametrize("width", [0.5, 2.0])
@pytest.mark.parametrize(
    "name,shape", [("mlp", (40,)), ("cnn1d", (40,)), ("cnn1d", (2, 13)), ("cnn2d", (1, 8, 8)), ("wrn-22-2", (3, 8, 8))]
)
def test_forward_and_backward_work_at_other_widths(name, shape, width):
    model = _cached(name, NUM_CLASSES, shape, width).train()
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, NUM_CLASSES) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "wrn-22-2", "resnet18", "vgg16"])
def test_tiny_width_rounds_every_count_up_to_one(name):
    shape = _one_shape(name)
    model = models.build(name, NUM_CLASSES, shape, width=1e-3)
    assert set(_conv_out(model, skip_shortcuts=False) + _linear_out(model)[:-1]) == {1}
    assert _linear_out(model)[-1] == NUM_CLASSES
    with torch.no_grad():
        assert model.eval()(torch.randn(2, *shape)).shape == (2, NUM_CLASSES)


def test_numeric_widths_of_other_types_are_accepted():
    np = pytest.importorskip("numpy")
    assert _linear_out(models.build("mlp", 3, (40,), width=2)) == [512, 512, 3]
    assert _linear_out(models.build("mlp", 3, (40,), width=np.float32(0.5))) == [128, 128, 3]


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, "2", None])
@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet50", "vgg19", "wrn-28-10"])
def test_bad_width_raises_config_error_naming_the_field(name, bad):
    shape = _one_shape(name)
    with pytest.raises(ConfigError, match=r"^width must be > 0, got ") as info:
        models.build(name, 10, shape, width=bad)
    assert "\n" not in str(info.value) and repr(bad) in str(info.value)
    with pytest.raises(ConfigError, match="width"):  # the registry factories check too
        models.MODELS[name](10, shape, width=bad)


def test_mlp_without_hidden_layers_still_checks_width():
    from models.mlp import mlp

    assert _linear_out(mlp(4, (6,), hidden=(), width=3.0)) == [4]
    with pytest.raises(ValueError, match="width"):
        mlp(4, (6,), hidden=(), width=-1.0)
    with pytest.raises(ValueError, match="width"):
        WideResNet(16, 1, 10, width=0.0)
