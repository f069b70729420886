"""Layer densities: prunable weights, uniform, ERK (against an independent brute-force derivation)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from bayessparse.errors import ConfigError
from bayessparse.sparsity.density import (
    erk_densities,
    erk_epsilon,
    layer_densities,
    prunable_weights,
    uniform_densities,
)
from bayessparse.sparsity.masks import target_count

# ----------------------------------------------------------------------------- helpers


def brute_force_erk(shapes: dict[str, tuple], density: float) -> tuple[float, dict[str, float]]:
    """Reference ERK written independently of the library: enumerate every candidate dense set F and keep the
    self-consistent ones (every layer in F has eps*raw >= 1, every other layer has eps*raw <= 1, eps from the
    budget equation). All consistent sets must give the same densities."""
    names = list(shapes)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    budget = density * sum(numel.values())
    solutions = []
    for r in range(len(names) + 1):
        for dense in itertools.combinations(names, r):
            rest = [n for n in names if n not in dense]
            if not rest:
                if math.isclose(budget, sum(numel.values()), rel_tol=1e-12):
                    solutions.append((math.inf, {n: 1.0 for n in names}))
                continue
            eps = (budget - sum(numel[n] for n in dense)) / sum(raw[n] * numel[n] for n in rest)
            if eps <= 0:
                continue
            tol = 1e-9
            if all(eps * raw[n] >= 1 - tol for n in dense) and all(eps * raw[n] <= 1 + tol for n in rest):
                solutions.append((eps, {n: (1.0 if n in dense else eps * raw[n]) for n in names}))
    assert solutions, "no consistent dense set: the reference found no ERK solution"
    for _, dens in solutions[1:]:
        for n in names:
            assert dens[n] == pytest.approx(solutions[0][1][n], rel=1e-7)
    return solutions[0]


def water_filling_erk(shapes: dict[str, tuple], density: float) -> dict[str, float]:
    """Second independent characterisation: d_l = min(1, eps*raw_l) with eps solving
    sum_l min(1, eps*raw_l) N_l = D sum_l N_l (bisection on a monotone function)."""
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    target = density * sum(numel.values())

    def alloc(eps):
        return sum(min(1.0, eps * raw[n]) * numel[n] for n in shapes)

    lo, hi = 0.0, 1.0
    while alloc(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if alloc(mid) < target:
            lo = mid
        else:
            hi = mid
    return {n: min(1.0, hi * raw[n]) for n in shapes}


def wrn_28_10_shapes() -> dict[str, tuple]:
    """Prunable weight shapes of WRN-28-10 for CIFAR-10 (Zagoruyko & Komodakis 2016)."""
    shapes: dict[str, tuple] = {"conv1": (16, 3, 3, 3)}
    cin = 16
    for g, width in enumerate((160, 320, 640), start=1):
        for b in range(4):
            shapes[f"block{g}.{b}.conv1"] = (width, cin, 3, 3)
            shapes[f"block{g}.{b}.conv2"] = (width, width, 3, 3)
            if cin != width:
                shapes[f"block{g}.{b}.shortcut"] = (width, cin, 1, 1)
            cin = width
    shapes["fc"] = (10, 640)
    return shapes


layer_shape = st.one_of(
    st.tuples(st.integers(1, 64), st.integers(1, 64)),  # linear (out, in)
    st.tuples(st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5])),
    st.tuples(st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3, 7])),  # conv1d
)
shape_dicts = st.lists(layer_shape, min_size=1, max_size=7).map(lambda ls: {f"l{i}": s for i, s in enumerate(ls)})
densities = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


# ----------------------------------------------------------------------------- prunable weights


def test_prunable_weights_names_order_and_types():
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.BatchNorm1d(4),
        nn.Sequential(nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5), nn.Conv3d(5, 2, 1)),
        nn.LayerNorm(7),
        nn.Linear(7, 3),
    )
    pw = prunable_weights(model)
    assert list(pw) == ["0.weight", "2.0.weight", "2.2.weight", "4.weight"]
    params = dict(model.named_parameters())
    for name, p in pw.items():
        assert p is params[name]
    single = nn.Linear(3, 2)
    assert prunable_weights(single) == {"weight": single.weight}


def test_prunable_weights_shared_module_listed_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert list(prunable_weights(model)) == ["0.weight"]


# ----------------------------------------------------------------------------- uniform


def test_uniform_and_dense_first():
    shapes = {"a": (4, 3, 3, 3), "b": (8, 4, 3, 3), "c": (10, 8)}
    assert uniform_densities(shapes, 0.25) == {"a": 0.25, "b": 0.25, "c": 0.25}
    assert uniform_densities(shapes, 0.25, dense_first=True) == {"a": 1.0, "b": 0.25, "c": 0.25}
    assert layer_densities("uniform", shapes, 0.25, dense_first=True)["a"] == 1.0
    assert layer_densities("UNIFORM", shapes, 1.0) == {"a": 1.0, "b": 1.0, "c": 1.0}


# ----------------------------------------------------------------------------- ERK


@settings(max_examples=150, deadline=None)
@given(shapes=shape_dicts, density=densities)
def test_erk_matches_brute_force(shapes, density):
    got = erk_densities(shapes, density)
    eps_ref, ref = brute_force_erk(shapes, density)
    wf = water_filling_erk(shapes, density)
    assert list(got) == list(shapes)
    for n in shapes:
        assert got[n] == pytest.approx(ref[n], rel=1e-7, abs=1e-12)
        assert got[n] == pytest.approx(wf[n], rel=1e-6, abs=1e-9)
        assert 0.0 < got[n] <= 1.0
    if density < 1.0:
        assert erk_epsilon(shapes, density) == pytest.approx(eps_ref, rel=1e-7)
    # budget: sum_l d_l N_l == D sum_l N_l
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(numel.values())
    assert sum(got[n] * numel[n] for n in shapes) == pytest.approx(density * total, rel=1e-9)
    # after rounding to whole weights: within one weight per layer
    nnz = sum(target_count(got[n], numel[n]) for n in shapes)
    assert abs(nnz - density * total) <= len(shapes)


@settings(max_examples=60, deadline=None)
@given(shapes=shape_dicts, density=st.floats(min_value=0.3, max_value=1.0))
@example(shapes={"l0": (1, 1), "l1": (1, 1)}, density=0.5)  # first layer takes the whole budget
def test_erk_dense_first_keeps_budget(shapes, density):
    first = next(iter(shapes))
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(numel.values())
    if density < 1.0 and numel[first] >= density * total:  # nothing left for the other layers
        with pytest.raises(ConfigError):
            erk_densities(shapes, density, dense_first=True)
        return
    got = erk_densities(shapes, density, dense_first=True)
    assert got[first] == 1.0
    assert sum(got[n] * numel[n] for n in shapes) == pytest.approx(density * total, rel=1e-9)
    assert all(0 < d <= 1 for d in got.values())


def test_erk_proportional_to_raw_when_nothing_capped():
    shapes = {"a": (64, 64, 3, 3), "b": (128, 64, 3, 3), "c": (10, 128)}
    d = erk_densities(shapes, 0.05)
    eps = erk_epsilon(shapes, 0.05)
    for n, s in shapes.items():
        assert d[n] == pytest.approx(min(1.0, eps * sum(s) / math.prod(s)))
    # hand computation for a case without capping
    shapes2 = {"a": (100, 100), "b": (200, 100)}
    raw = {"a": 200 / 10000, "b": 300 / 20000}
    eps2 = 0.1 * 30000 / (raw["a"] * 10000 + raw["b"] * 20000)
    assert erk_epsilon(shapes2, 0.1) == pytest.approx(eps2)
    assert erk_densities(shapes2, 0.1)["a"] == pytest.approx(eps2 * raw["a"])


def test_erk_wrn_28_10_sanity_values():
    shapes = wrn_28_10_shapes()
    assert len(shapes) == 29  # conv1 + 12 blocks x 2 convs + 3 shortcuts + fc
    eps = erk_epsilon(shapes, 0.2)
    assert eps == pytest.approx(405.8, abs=0.05)
    d = erk_densities(shapes, 0.2)
    dense = {n for n, v in d.items() if v == 1.0}
    assert dense == {
        "conv1",
        "block1.0.conv1",
        "block1.0.shortcut",
        "block2.0.shortcut",
        "block3.0.shortcut",
        "fc",
    }
    for b in range(4):
        assert d[f"block3.{b}.conv2"] == pytest.approx(0.14, abs=0.005)
    for b in range(1, 4):
        assert d[f"block3.{b}.conv1"] == pytest.approx(0.14, abs=0.005)
    ref = water_filling_erk(shapes, 0.2)  # 29 layers: too many for the subset enumeration
    for n in shapes:
        assert d[n] == pytest.approx(ref[n], rel=1e-6)


def test_erk_full_density_is_dense():
    shapes = {"a": (4, 3), "b": (5, 4, 3, 3)}
    assert erk_densities(shapes, 1.0) == {"a": 1.0, "b": 1.0}


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), "x", None])
def test_bad_density_raises_config_error_naming_field(bad):
    shapes = {"a": (4, 3)}
    for kind in ("erk", "uniform"):
        with pytest.raises(ConfigError, match="density"):
            layer_densities(kind, shapes, bad)


def test_bad_kind_raises_config_error_naming_field():
    with pytest.raises(ConfigError, match="kind.*'gaussian'"):
        layer_densities("gaussian", {"a": (4, 3)}, 0.5)
    assert isinstance(ConfigError("x"), ValueError)


def test_layer_densities_dispatch():
    shapes = {"a": (16, 3, 3, 3), "b": (32, 16, 3, 3), "c": (10, 32)}
    assert layer_densities("erk", shapes, 0.3) == erk_densities(shapes, 0.3)
    assert layer_densities("ERK", shapes, 0.3) == erk_densities(shapes, 0.3)
    assert layer_densities("uniform", shapes, 0.3) == uniform_densities(shapes, 0.3)
    # torch.Size shapes are accepted; a single layer gets exactly D
    assert layer_densities("erk", {"a": torch.Size([3, 4])}, 0.5)["a"] == pytest.approx(0.5)
