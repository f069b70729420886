"""Ensemble diversity (disagreement, pairwise KL) against brute-force loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayessparse.uncertainty.diversity import disagreement, diversity, pairwise_kl


def members(m: int, n: int, c: int, seed: int, alpha: float = 0.5) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=(m, n)))


def brute_disagreement(p: torch.Tensor) -> float:
    pred = p.argmax(-1).tolist()
    m, n = len(pred), len(pred[0])
    same = [sum(pred[i][k] == pred[j][k] for k in range(n)) / n for i, j in itertools.permutations(range(m), 2)]
    return 1.0 - float(np.mean(same))


def brute_pairwise_kl(p: torch.Tensor) -> float:
    rows = p.tolist()
    m = len(rows)
    kls = []
    for i, j in itertools.permutations(range(m), 2):
        per_example = [sum(a * (math.log(a) - math.log(b)) for a, b in zip(pi, pj) if a > 0)
                       for pi, pj in zip(rows[i], rows[j])]
        kls.append(np.mean(per_example))
    return float(np.mean(kls))


@pytest.mark.parametrize("m,n,c,seed", [(2, 100, 3, 0), (3, 200, 10, 1), (5, 50, 4, 2)])
def test_match_brute_force(m, n, c, seed):
    p = members(m, n, c, seed)
    assert disagreement(p) == pytest.approx(brute_disagreement(p), abs=1e-12)
    assert pairwise_kl(p) == pytest.approx(brute_pairwise_kl(p), rel=1e-10)
    assert 0.2 < disagreement(p) <= 1.0
    assert diversity(p) == {"disagreement": disagreement(p), "pairwise_kl": pairwise_kl(p)}


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**16))
def test_property_vs_brute_force(m, n, c, seed):
    p = members(m, n, c, seed, alpha=1.0)
    assert disagreement(p) == pytest.approx(brute_disagreement(p), abs=1e-12)
    assert pairwise_kl(p) == pytest.approx(brute_pairwise_kl(p), rel=1e-9, abs=1e-12)
    assert pairwise_kl(p) >= 0


def test_identical_members_give_zero_and_hand_values():
    p = members(1, 40, 5, 3).expand(4, -1, -1)
    assert disagreement(p) == 0.0
    assert pairwise_kl(p) == pytest.approx(0.0, abs=1e-15)
    a = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]], dtype=torch.float64)  # M=2, N=1: always disagree
    assert disagreement(a) == 1.0
    kl_ab = 0.9 * math.log(0.9 / 0.2) + 0.1 * math.log(0.1 / 0.8)
    kl_ba = 0.2 * math.log(0.2 / 0.9) + 0.8 * math.log(0.8 / 0.1)
    assert pairwise_kl(a) == pytest.approx((kl_ab + kl_ba) / 2)


def test_zero_probability_gives_large_finite_kl_and_errors():
    p = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]], dtype=torch.float64)
    value = pairwise_kl(p)
    assert math.isfinite(value) and value > 5  # KL(p2 || p1) has log(0.5 / 1e-12)
    with pytest.raises(ValueError, match="at least 2 members"):
        disagreement(p[:1])
    with pytest.raises(ValueError, match=r"\(M, N, C\)"):
        pairwise_kl(p[0])
