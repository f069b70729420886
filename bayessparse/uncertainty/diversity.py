"""Diversity of ensemble members (FreeTickets; Liu et al., ICLR 2022; Fort, Hu and Lakshminarayanan, 2019).

``member_probs`` holds the softmax outputs of ``M ≥ 2`` members on the same ``N`` examples,
shape ``(M, N, C)``; averages run over all ``N`` examples (never one batch) and over the
``M (M − 1)`` *ordered* pairs ``i ≠ j``.

* :func:`disagreement` ``= 1 − mean_{i≠j} (1/N) Σ_n 1[argmax_c p_inc = argmax_c p_jnc]``:
  the fraction of (pair, example) combinations on which two members predict different classes.
  In ``[0, 1]`` (with ties in ``argmax`` broken towards the lower class index, as ``torch.argmax``).
* :func:`pairwise_kl` ``= mean_{i≠j} (1/N) Σ_n KL(p_in ‖ p_jn)`` in nats, with
  ``KL(p ‖ q) = Σ_c p_c (log p_c − log q_c)``, ``0 log 0 = 0`` and ``q`` clamped below at ``eps``
  so that a zero where the other member puts mass gives a large finite value.
Both are 0 for identical members.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayessparse.uncertainty.ood import _check_probs

__all__ = ["disagreement", "diversity", "pairwise_kl"]


def _check_members(member_probs: Tensor) -> Tensor:
    if not isinstance(member_probs, Tensor) or member_probs.dim() != 3:
        shape = getattr(member_probs, "shape", type(member_probs))
        raise ValueError(f"member_probs must have shape (M, N, C), got {shape}")
    if member_probs.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 members, got M = {member_probs.shape[0]}")
    return _check_probs(member_probs)


def disagreement(member_probs: Tensor) -> float:
    """``1 − mean_{i≠j} P_n(argmax p_i = argmax p_j)`` over ordered member pairs (see the module docstring)."""
    p = _check_members(member_probs)
    m, n, c = p.shape
    votes = torch.nn.functional.one_hot(p.argmax(-1), c).sum(0).double()  # (N, C): members predicting class c
    agreeing_pairs = (votes * (votes - 1)).sum()  # ordered pairs i ≠ j with the same prediction, summed over n
    return (1.0 - agreeing_pairs / (n * m * (m - 1))).item()


def pairwise_kl(member_probs: Tensor, eps: float = 1e-12) -> float:
    """``mean_{i≠j} (1/N) Σ_n KL(p_in ‖ p_jn)`` in nats over ordered member pairs."""
    p = _check_members(member_probs)
    m, n, _ = p.shape
    neg_entropy = -torch.special.entr(p).sum((-1, -2))  # (M,): Σ_n Σ_c p_i log p_i
    cross = torch.einsum("inc,jnc->ij", p, p.clamp_min(eps).log())  # (M, M): Σ_n Σ_c p_i log p_j
    kl = neg_entropy[:, None] - cross  # (M, M): Σ_n KL(p_in ‖ p_jn)
    off_diagonal = ~torch.eye(m, dtype=torch.bool)
    return (kl[off_diagonal].sum() / (n * m * (m - 1))).item()


def diversity(member_probs: Tensor) -> dict[str, float]:
    """``{"disagreement", "pairwise_kl"}`` of ``(M, N, C)`` member probabilities."""
    return {"disagreement": disagreement(member_probs), "pairwise_kl": pairwise_kl(member_probs)}
