"""MaskSet: exact nnz, masked weights exactly zero, dense layers, measured density, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bayessparse.errors import ConfigError
from bayessparse.sparsity.density import layer_densities, prunable_weights
from bayessparse.sparsity.masks import MaskSet, target_count


class Bag(nn.Module):
    """Prunable layers of arbitrary shapes (no forward needed), plus a BatchNorm that must be ignored."""

    def __init__(self, specs):
        super().__init__()
        layers = []
        for spec in specs:
            if spec[0] == "lin":
                layers.append(nn.Linear(spec[2], spec[1]))
            elif spec[0] == "c1":
                layers.append(nn.Conv1d(spec[2], spec[1], spec[3]))
            else:
                layers.append(nn.Conv2d(spec[2], spec[1], spec[3]))
            layers.append(nn.BatchNorm1d(3))
        self.layers = nn.ModuleList(layers)
        with torch.no_grad():  # no exact zeros initially, so "nonzero" == "active"
            for p in self.parameters():
                p.copy_(torch.rand(p.shape) + 0.5)


spec = st.one_of(
    st.tuples(st.just("lin"), st.integers(1, 20), st.integers(1, 20)),
    st.tuples(st.just("c1"), st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3])),
    st.tuples(st.just("c2"), st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3])),
)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- init invariants


@settings(max_examples=80, deadline=None)
@given(
    specs=st.lists(spec, min_size=1, max_size=5),
    dens=st.lists(st.one_of(st.floats(0.001, 1.0), st.just(1.0)), min_size=5, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_nnz_and_zeroed_weights(specs, dens, seed):
    model = Bag(specs)
    weights = prunable_weights(model)
    before = {n: w.detach().clone() for n, w in weights.items()}
    densities = {n: dens[i] for i, n in enumerate(weights)}
    ms = MaskSet(model, densities, generator=gen(seed))
    assert list(ms.masks) == list(weights)
    nnz = ms.nnz()
    total_nz = 0
    for name, w in weights.items():
        n = w.numel()
        expected = max(1, min(n, math.floor(densities[name] * n + 0.5)))
        assert ms.target_nnz[name] == expected == target_count(densities[name], n)
        assert nnz[name] == expected
        m = ms.masks[name]
        assert m.shape == w.shape and m.dtype == w.dtype
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        # masked weights exactly 0, active weights untouched
        assert torch.all(w[m == 0] == 0)
        assert torch.equal(w[m == 1], before[name][m == 1])
        total_nz += int((w != 0).sum())
        if densities[name] == 1.0:
            assert torch.all(m == 1) and name in ms.dense and name not in ms.sparse_layers()
        if expected < n:
            assert name in ms.sparse_layers()
    assert ms.density() == pytest.approx(total_nz / sum(w.numel() for w in weights.values()))
    assert ms.density() == pytest.approx(ms.mask_density())


def test_same_generator_seed_same_masks_and_no_global_rng():
    models = [small_cnn() for _ in range(3)]
    dens = {n: 0.3 for n in prunable_weights(models[0])}
    rng_before = torch.random.get_rng_state()
    a = MaskSet(models[0], dens, generator=gen(7))
    b = MaskSet(models[1], dens, generator=gen(7))
    c = MaskSet(models[2], dens, generator=gen(8))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # only the given generator was used
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n])
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_positions_chosen_uniformly():
    # 12 positions, 4 active: each position active with probability 1/3 over seeds
    counts = torch.zeros(12)
    trials = 1500
    for s in range(trials):
        lin = nn.Linear(3, 4, bias=False)
        ms = MaskSet(lin, {"weight": 4 / 12}, generator=gen(s))
        counts += ms.masks["weight"].flatten()
    p = counts / trials
    # binomial sd = sqrt(1/3*2/3/1500) ~ 0.012; 5 sd band
    assert torch.all((p - 1 / 3).abs() < 0.06), p


# ----------------------------------------------------------------------------- hot-path operations


def test_mask_grads_and_apply():
    model = small_cnn()
    names = list(prunable_weights(model))
    dens = {names[0]: 1.0, names[1]: 0.2, names[2]: 0.1}
    ms = MaskSet(model, dens, generator=gen(0))
    assert ms.sparse_layers() == names[1:]
    x = torch.randn(4, 3, 8, 8, generator=gen(1))
    model(x).square().mean().backward()
    grads = {n: w.grad.clone() for n, w in ms.weights.items()}
    assert all((g[ms.masks[n] == 0] != 0).any() for n, g in grads.items() if n != names[0])
    ms.mask_grads_()
    for n, w in ms.weights.items():
        assert torch.equal(w.grad, grads[n] * ms.masks[n])
    assert torch.equal(ms.weights[names[0]].grad, grads[names[0]])  # dense layer untouched
    # a layer without grad is skipped
    ms.weights[names[1]].grad = None
    ms.mask_grads_()
    # apply_ re-zeroes weights that were made nonzero at masked positions
    with torch.no_grad():
        for w in ms.weights.values():
            w.add_(1.0)
    ms.apply_()
    for n, w in ms.weights.items():
        assert torch.all(w[ms.masks[n] == 0] == 0)
        assert torch.all(w[ms.masks[n] == 1] != 0)


def test_density_measured_from_weights():
    model = small_cnn()
    ms = MaskSet(model, {n: 0.5 for n in prunable_weights(model)}, generator=gen(3))
    total = sum(w.numel() for w in ms.weights.values())
    d0 = ms.density()
    assert d0 == pytest.approx(sum(ms.target_nnz.values()) / total)
    name = ms.sparse_layers()[0]
    with torch.no_grad():
        idx = torch.nonzero(ms.masks[name].flatten())[:3].flatten()
        ms.weights[name].view(-1)[idx] = 0.0  # active but zero -> not counted
    assert ms.density() == pytest.approx(d0 - 3 / total)
    assert ms.mask_density() == pytest.approx(d0)


# ----------------------------------------------------------------------------- checkpoints and errors


def test_state_dict_round_trip():
    model = small_cnn()
    names = list(prunable_weights(model))
    dens = {names[0]: 1.0, names[1]: 0.2, names[2]: 0.1}
    ms = MaskSet(model, dens, generator=gen(11))
    sd = ms.state_dict()
    assert set(sd["masks"]) == set(names)
    assert all(t.dtype == torch.bool and t.device.type == "cpu" for t in sd["masks"].values())

    other_model = small_cnn()  # fresh dense weights
    other = MaskSet(other_model, {n: 0.7 for n in names}, generator=gen(99))
    with torch.no_grad():
        for w in other.weights.values():
            w.fill_(1.0)
    refs = dict(other.masks)
    other.load_state_dict(sd)
    assert all(other.masks[n] is refs[n] for n in names)  # loaded in place
    for n in names:
        assert torch.equal(other.masks[n], ms.masks[n])
        assert other.target_nnz[n] == ms.target_nnz[n]
        assert torch.equal(other.weights[n] != 0, ms.masks[n] != 0)  # re-applied on load
    assert other.dense == {names[0]} and other.sparse_layers() == names[1:]

    bad = {"masks": dict(sd["masks"])}
    bad["masks"].pop(names[0])
    with pytest.raises(ValueError):
        other.load_state_dict(bad)
    bad = {"masks": dict(sd["masks"])}
    bad["masks"][names[1]] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)


def test_densities_must_match_prunable_weights():
    model = small_cnn()
    with pytest.raises(ConfigError, match="missing"):
        MaskSet(model, {"0.weight": 0.5}, generator=gen(0))
    dens = {n: 0.5 for n in prunable_weights(model)}
    dens["1.weight"] = 0.5  # BatchNorm weight is not prunable
    with pytest.raises(ConfigError, match="unknown"):
        MaskSet(model, dens, generator=gen(0))
    with pytest.raises(ConfigError, match="density"):
        MaskSet(model, {n: 0.0 for n in prunable_weights(model)}, generator=gen(0))


def test_with_erk_densities_overall_density_close_to_target():
    model = small_cnn()
    shapes = {n: w.shape for n, w in prunable_weights(model).items()}
    ms = MaskSet(model, layer_densities("erk", shapes, 0.1), generator=gen(0))
    total = sum(w.numel() for w in ms.weights.values())
    assert abs(sum(ms.nnz().values()) - 0.1 * total) <= len(shapes)
