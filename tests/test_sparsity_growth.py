"""Drop and grow: exactness against brute force, random tie breaking, the criteria (SET, RigL, DST-EE)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayessparse.sparsity.growth import (
    GradientGrow,
    LayerView,
    MagnitudeDrop,
    RandomGrow,
    UCBGrow,
    drop_and_grow,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mask(n: int, nnz: int, g: torch.Generator) -> torch.Tensor:
    m = torch.zeros(n)
    m[torch.randperm(n, generator=g)[:nnz]] = 1
    return m


# ----------------------------------------------------------------------------- drop_and_grow invariants


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    frac=st.floats(0.0, 1.0),
    k=st.integers(-3, 70),
    levels=st.integers(1, 5),  # few distinct score values -> many ties
    seed=st.integers(0, 2**31 - 1),
)
def test_nnz_preserved_and_weights_zeroed(n, frac, k, levels, seed):
    g = gen(seed)
    nnz = max(1, round(frac * n))
    mask = random_mask(n, nnz, g).view(1, n)
    weight = (torch.randint(1, levels + 1, (1, n), generator=g).float()) * mask
    drop_s = weight.abs()
    grow_s = torch.randint(0, levels, (1, n), generator=g).float()
    w0 = weight.clone()
    new_mask, grown = drop_and_grow(weight, mask, k, drop_s, grow_s, g)
    kk = max(0, min(k, nnz))
    assert new_mask.shape == mask.shape and new_mask.dtype == mask.dtype
    assert int(new_mask.sum()) == nnz  # exact
    assert grown.dtype == torch.bool and int(grown.sum()) == kk
    assert torch.all(new_mask[grown] == 1)
    dropped = (mask == 1) & (new_mask == 0)
    kept = (mask == 1) & (new_mask == 1) & ~grown
    assert int(kept.sum()) == nnz - kk
    # weights: zero at dropped and grown positions, unchanged elsewhere
    assert torch.all(weight[dropped | grown] == 0)
    assert torch.equal(weight[~(dropped | grown)], w0[~(dropped | grown)])
    # the drop respects the score order: every dropped-or-regrown position has score <= every kept one
    removed = (mask == 1) & ~kept
    if removed.any() and kept.any():
        assert drop_s[removed].max() <= drop_s[kept].min()
    # the grow respects the score order among positions inactive after the drop
    candidates = ~kept
    not_grown = candidates & ~grown
    if grown.any() and not_grown.any():
        assert grow_s[grown].min() >= grow_s[not_grown].max()


def test_k_clipping_and_zero_k():
    g = gen(0)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    weight = torch.tensor([2.0, 3.0, 0.0, 0.0, 0.0])
    same, grown = drop_and_grow(weight.clone(), mask, 0, weight.abs(), torch.rand(5, generator=g), g)
    assert torch.equal(same, mask) and not grown.any()
    same, grown = drop_and_grow(weight.clone(), mask, -4, weight.abs(), torch.rand(5, generator=g), g)
    assert torch.equal(same, mask) and not grown.any()
    new, grown = drop_and_grow(weight.clone(), mask, 10, weight.abs(), torch.tensor([0, 0, 5.0, 4, 3]), g)
    assert torch.equal(new, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])) and int(grown.sum()) == 2


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        drop_and_grow(torch.zeros(2, 3), torch.zeros(2, 3), 1, torch.zeros(6), torch.zeros(2, 3), gen(0))


# ----------------------------------------------------------------------------- brute-force checks


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(2, 12),
    frac=st.floats(0.05, 0.95),
    kfrac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_rigl_matches_brute_force(rows, cols, frac, kfrac, seed):
    """Distinct |W| and |grad|: dropped = k smallest active |W|; grown = k largest |grad| among the positions
    inactive after the drop (just-dropped positions included)."""
    g = gen(seed)
    n = rows * cols
    nnz = min(n, max(1, round(frac * n)))
    mask = random_mask(n, nnz, g).view(rows, cols)
    # distinct magnitudes via random permutations of 1..n, random signs
    sign = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    weight = (torch.randperm(n, generator=g).float() + 1).view(rows, cols) * sign * mask
    grad = (torch.randperm(n, generator=g).float() + 1).view(rows, cols) * -sign
    k = math.floor(kfrac * nnz)
    view = LayerView("w", weight, grad, mask)
    drop_s = MagnitudeDrop().scores(view)
    grow_s = GradientGrow().scores(view, g)
    w_flat, m_flat, g_flat = weight.flatten().tolist(), mask.flatten().tolist(), grad.flatten().tolist()
    new_mask, grown = drop_and_grow(weight, mask, k, drop_s, grow_s, g)

    active = [i for i in range(n) if m_flat[i] == 1]
    exp_dropped = set(sorted(active, key=lambda i: abs(w_flat[i]))[:k])
    after = [i for i in range(n) if m_flat[i] == 0 or i in exp_dropped]
    exp_grown = set(sorted(after, key=lambda i: -abs(g_flat[i]))[:k])
    exp_active = (set(active) - exp_dropped) | exp_grown
    got_active = set(torch.nonzero(new_mask.flatten()).flatten().tolist())
    assert got_active == exp_active
    assert set(torch.nonzero(grown.flatten()).flatten().tolist()) == exp_grown


def test_just_dropped_position_can_be_regrown_and_restarts_at_zero():
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    weight = torch.tensor([0.1, 5.0, 6.0, 0.0, 0.0])
    grad = torch.tensor([9.0, 0.0, 0.0, 1.0, 0.5])  # the smallest weight has the largest gradient
    new, grown = drop_and_grow(weight, mask, 2, weight.abs(), grad.abs(), gen(0))
    # dropped {0, 1}; candidates {0, 1, 3, 4}; grown {0, 3}
    assert torch.equal(new, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(grown, torch.tensor([True, False, False, True, False]))
    assert torch.equal(weight, torch.tensor([0.0, 0.0, 6.0, 0.0, 0.0]))


# ----------------------------------------------------------------------------- tie breaking


def test_drop_ties_broken_uniformly_at_random():
    # active positions 0..5 with |W| = 1 at {0, 2, 4, 5} (tied) and 2 at {1, 3}; drop k = 2 of the tied four
    mask = torch.tensor([1.0, 1, 1, 1, 1, 1, 0, 0])
    weight = torch.tensor([1.0, 2, -1, 2, 1, -1, 0, 0])
    counts = torch.zeros(8)
    trials = 600
    for s in range(trials):
        w = weight.clone()
        new, grown = drop_and_grow(w, mask, 2, w.abs(), torch.tensor([0, 0, 0, 0, 0, 0, 9.0, 8.0]), gen(s))
        counts += ((mask == 1) & (new == 0)).float()
    assert counts[1] == 0 and counts[3] == 0  # never drop a larger magnitude while a tie remains
    tied = counts[[0, 2, 4, 5]]
    assert torch.all(tied > 0)
    assert tied.sum() == 2 * trials
    # each tied position dropped with probability 1/2: sd = sqrt(.25/600) ~ .02
    assert torch.all((tied / trials - 0.5).abs() < 0.1), tied


def test_grow_ties_broken_uniformly_at_random():
    mask = torch.tensor([1.0, 0, 0, 0, 0, 0])
    weight = torch.tensor([3.0, 0, 0, 0, 0, 0])
    grow_s = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.5, 1.0])  # four-way tie at the top
    counts = torch.zeros(6)
    for s in range(400):
        # k=1 from one active: drop 0, then grow one of {1, 2, 3, 5}
        _, grown = drop_and_grow(weight.clone(), mask, 1, weight.abs(), grow_s, gen(s))
        counts += grown.float()
    assert counts[0] == 0 and counts[4] == 0
    assert torch.all(counts[[1, 2, 3, 5]] > 50), counts


def test_same_generator_state_same_result():
    mask = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
    w = torch.ones(8) * mask
    a = drop_and_grow(w.clone(), mask, 2, w.abs(), torch.ones(8), gen(5))
    b = drop_and_grow(w.clone(), mask, 2, w.abs(), torch.ones(8), gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- criteria


def test_criteria_flags_and_stateless_state_dicts():
    assert RandomGrow.needs_gradient is False
    assert GradientGrow.needs_gradient is True
    assert UCBGrow().needs_gradient is True
    for c in (MagnitudeDrop(), RandomGrow(), GradientGrow()):
        assert c.state_dict() == {}
        c.load_state_dict({})


def test_magnitude_drop_scores():
    w = torch.tensor([[-3.0, 0.5], [0.0, 2.0]])
    assert torch.equal(MagnitudeDrop().scores(LayerView("w", w, None, torch.ones(2, 2))), w.abs())


def test_random_grow_uses_only_the_generator():
    view = LayerView("w", torch.zeros(4, 5), None, torch.zeros(4, 5))
    rng = torch.random.get_rng_state()
    a = RandomGrow().scores(view, gen(3))
    b = RandomGrow().scores(view, gen(3))
    c = RandomGrow().scores(view, gen(4))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 5) and torch.all((a >= 0) & (a < 1))


def test_set_grows_uniformly_among_inactive():
    mask = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    weight = torch.tensor([1.0, 2, 0, 0, 0, 0, 0, 0, 0, 0])
    counts = torch.zeros(10)
    trials = 900
    crit = RandomGrow()
    for s in range(trials):
        g = gen(s)
        view = LayerView("w", weight, None, mask)
        _, grown = drop_and_grow(weight.clone(), mask, 1, MagnitudeDrop().scores(view), crit.scores(view, g), g)
        counts += grown.float()
    # drop position 0 (smallest), grow one of 9 candidates {0, 2..9} uniformly
    assert counts[1] == 0
    p = counts[[0, 2, 3, 4, 5, 6, 7, 8, 9]] / trials
    assert torch.all((p - 1 / 9).abs() < 0.05), p


def test_gradient_grow_requires_grad():
    view = LayerView("layer3.weight", torch.zeros(2, 2), None, torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="layer3.weight.*dense gradient|dense gradient.*layer3.weight"):
        GradientGrow().scores(view, gen(0))
    with pytest.raises(RuntimeError, match="dense gradient"):
        UCBGrow().scores(view, gen(0))
    grad = torch.tensor([[-2.0, 1.0], [0.0, 3.0]])
    view = LayerView("w", torch.zeros(2, 2), grad, torch.zeros(2, 2))
    assert torch.equal(GradientGrow().scores(view, None), grad.abs())


def test_ucb_scores_formula_counts_and_state():
    ucb = UCBGrow(c=0.7)
    m1 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    m2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ucb.observe("w", m1)
    ucb.observe("w", m2)
    assert torch.equal(ucb.counts["w"], torch.tensor([2.0, 1.0, 1.0, 0.0]))
    assert ucb.rounds["w"] == 2
    grad = torch.tensor([0.5, -1.0, 2.0, 0.5])
    s = ucb.scores(LayerView("w", torch.zeros(4), grad, m2), None)
    mean = grad.abs().mean()
    expected = grad.abs() / mean + 0.7 * torch.sqrt(math.log(3) / (torch.tensor([2.0, 1, 1, 0]) + 1))
    assert torch.allclose(s, expected)
    # scale-free exploitation: multiplying the gradient by 1e4 changes nothing
    s_big = ucb.scores(LayerView("w", torch.zeros(4), grad * 1e4, m2), None)
    assert torch.allclose(s, s_big)
    # zero gradient: exploitation 0, bonus only
    s0 = ucb.scores(LayerView("w", torch.zeros(4), torch.zeros(4), m2), None)
    assert torch.allclose(s0, expected - grad.abs() / mean)
    # state round trip
    other = UCBGrow(c=0.7)
    other.load_state_dict(ucb.state_dict())
    assert torch.equal(other.counts["w"], ucb.counts["w"]) and other.rounds == ucb.rounds
    assert torch.equal(other.scores(LayerView("w", torch.zeros(4), grad, m2), None), s)
    # c = 0 is RigL's ranking
    assert torch.allclose(UCBGrow(c=0.0).scores(LayerView("w", torch.zeros(4), grad, m2), None), grad.abs() / mean)
    with pytest.raises(ValueError):
        UCBGrow(c=-1.0)


def test_ucb_prefers_never_activated_on_gradient_ties():
    ucb = UCBGrow()
    mask0 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    mask1 = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    ucb.observe("w", mask0)
    ucb.observe("w", mask1)  # position 0 was active once, 2 once, 1 twice; 3, 4, 5 never
    weight = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 0.0])
    grad = torch.ones(6)
    for s in range(50):
        g = gen(s)
        view = LayerView("w", weight, grad, mask1)
        new, grown = drop_and_grow(weight.clone(), mask1, 1, MagnitudeDrop().scores(view), ucb.scores(view, g), g)
        # drops position 1 (smallest |W|) and must grow one of the never-activated 3, 4, 5
        assert grown.nonzero().flatten().item() in {3, 4, 5}
