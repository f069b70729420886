"""Drop and grow criteria, and the exact drop-and-grow step.

A dynamic-sparse-training (DST) method is a pair (drop criterion, grow criterion) run on a schedule
(:mod:`bayessparse.sparsity.schedule`) by :class:`~bayessparse.sparsity.dst.MaskUpdater`. A criterion only scores
positions; :func:`drop_and_grow` turns scores into a new mask with the same number of active entries.

* drop (all methods): :class:`MagnitudeDrop` -- smallest ``|W|`` among the active weights.
* grow SET (Mocanu et al., Nature Communications 2018): :class:`RandomGrow` -- uniformly random inactive positions.
* grow RigL (Evci et al., ICML 2020): :class:`GradientGrow` -- largest ``|dL/dW|`` (dense gradient).
* grow DST-EE (Huang et al., DAC 2023): :class:`UCBGrow` -- normalised ``|dL/dW|`` plus a UCB exploration bonus.

A new DST method is a new criterion class: subclass :class:`GrowCriterion` (or :class:`DropCriterion`), implement
``scores``, and optionally ``observe`` / ``state_dict`` / ``load_state_dict`` for criteria with memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "LayerView",
    "DropCriterion",
    "GrowCriterion",
    "MagnitudeDrop",
    "RandomGrow",
    "GradientGrow",
    "UCBGrow",
    "drop_and_grow",
]


@dataclass
class LayerView:
    """What a criterion sees of one layer at an update: the weight, its gradient (or None) and its current mask."""

    name: str
    weight: torch.Tensor
    grad: torch.Tensor | None
    mask: torch.Tensor


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) noise drawn from ``generator`` (on the generator's device), returned on ``device``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device)


class _Criterion:
    """Shared no-op memory interface."""

    def observe(self, name: str, mask: torch.Tensor) -> None:
        """Called by the updater once per update for every sparse layer, with the mask in force up to now,
        before any scores are requested. Stateless criteria ignore it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DropCriterion(_Criterion):
    """Scores active weights; the ``k`` *lowest* scores are dropped (higher = keep)."""

    def scores(self, layer: LayerView) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class GrowCriterion(_Criterion):
    """Scores inactive positions; the ``k`` *highest* scores are grown.

    ``needs_gradient`` tells the training loop whether it must provide the dense gradient (computed for the
    inactive positions too, i.e. *not* masked) on update steps.
    """

    needs_gradient: bool = False

    def scores(self, layer: LayerView, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class MagnitudeDrop(DropCriterion):
    """Drop the active weights of smallest magnitude: score ``|W|`` (SET, RigL, DST-EE all use it)."""

    def scores(self, layer: LayerView) -> torch.Tensor:
        return layer.weight.detach().abs()


class RandomGrow(GrowCriterion):
    """SET growth (Mocanu et al. 2018): i.i.d. ``U(0, 1)`` scores, so the grown set is a uniform random subset of
    the inactive positions. All randomness comes from ``generator``."""

    needs_gradient = False

    def scores(self, layer: LayerView, generator: torch.Generator | None) -> torch.Tensor:
        return _uniform(layer.weight.shape, generator, layer.weight.device)


def _require_grad(layer: LayerView, who: str) -> torch.Tensor:
    if layer.grad is None:
        raise RuntimeError(
            f"{who} needs the dense gradient of layer {layer.name!r} on update steps, but its .grad is None: "
            "run loss.backward() before the mask update and do not mask the gradients on that step "
            "(grow criterion needs_gradient=True)"
        )
    return layer.grad.detach()


class GradientGrow(GrowCriterion):
    """RigL growth (Evci et al. 2020): score ``|dL/dW|`` of the current mini-batch, dense (unmasked) gradient."""

    needs_gradient = True

    def scores(self, layer: LayerView, generator: torch.Generator | None) -> torch.Tensor:
        return _require_grad(layer, "GradientGrow (RigL)").abs()


class UCBGrow(GrowCriterion):
    """DST-EE growth (Huang et al., "Dynamic Sparse Training via Balancing the Exploration-Exploitation Trade-off",
    DAC 2023): acquisition = exploitation + exploration,

        ``score_i = |g_i| / mean_j |g_j|  +  c * sqrt( ln(t + 1) / (N_i + 1) )``

    * ``g`` is the dense gradient of the layer. Dividing by the mean ``|g|`` over all entries of the layer makes the
      exploitation term scale-free (mean 1 over the layer), so ``c`` means the same thing for every layer, loss
      scale and learning-rate phase (an all-zero gradient gives exploitation 0).
    * ``N_i`` is the number of mask updates in which position ``i`` was active, and ``t`` the number of mask
      updates observed so far for the layer (the UCB "round"; the current update included). Both are counted by
      :meth:`observe`, which the updater calls once per update per layer with the mask in force before the
      update. A never-activated position has ``N_i = 0`` and gets the largest bonus, so among equal gradients the
      never-activated positions win.

    The paper's constants are not public (the code was not released); ``c`` defaults to 1.0, i.e. at the first
    update the bonus of a never-active position is ``sqrt(ln 2) ~ 0.83`` times the layer's mean normalised
    gradient, growing like ``sqrt(ln t)`` afterwards.

    Args:
        c: exploration weight (``>= 0``; 0 recovers RigL's ranking).
    """

    needs_gradient = True

    def __init__(self, c: float = 1.0) -> None:
        if not (c >= 0.0 and math.isfinite(c)):
            raise ValueError(f"UCBGrow c must be a finite number >= 0, got {c!r}")
        self.c = float(c)
        self.counts: dict[str, torch.Tensor] = {}
        self.rounds: dict[str, int] = {}

    def observe(self, name: str, mask: torch.Tensor) -> None:
        active = (mask.detach() != 0).to(torch.float32)
        cnt = self.counts.get(name)
        if cnt is None:
            self.counts[name] = active.clone()
        else:
            if cnt.device != active.device:
                cnt = cnt.to(active.device)
            self.counts[name] = cnt.add_(active)
        self.rounds[name] = self.rounds.get(name, 0) + 1

    def bonus(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Exploration term ``c * sqrt(ln(t + 1) / (N + 1))`` for layer ``name``, shaped like ``like``."""
        t = self.rounds.get(name, 0)
        cnt = self.counts.get(name)
        if cnt is None:
            cnt = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        else:
            cnt = cnt.to(like.device)
        return self.c * torch.sqrt(math.log(t + 1) / (cnt + 1.0))

    def scores(self, layer: LayerView, generator: torch.Generator | None) -> torch.Tensor:
        g = _require_grad(layer, "UCBGrow (DST-EE)").abs().to(torch.float32)
        mean = g.mean()
        exploit = g / mean if float(mean) > 0 else torch.zeros_like(g)
        return exploit + self.bonus(layer.name, g)

    def state_dict(self) -> dict:
        return {
            "counts": {n: c.detach().cpu().clone() for n, c in self.counts.items()},
            "rounds": dict(self.rounds),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.counts = {n: c.detach().to(torch.float32).clone() for n, c in state.get("counts", {}).items()}
        self.rounds = {n: int(r) for n, r in state.get("rounds", {}).items()}

    def __repr__(self) -> str:
        return f"UCBGrow(c={self.c})"


def _ranked(
    candidates: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    descending: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The ``k`` best of ``candidates`` (flat indices) by ``scores`` (flat), ties broken uniformly at random.

    Exact tie breaking: shuffle the candidates with a random permutation, then *stable* sort -- equal scores keep
    their (random) shuffled order, so every ordering of a tied group is equally likely. No noise is added to the
    scores, so no tie can be broken against the score order.
    """
    n = candidates.numel()
    if k <= 0 or n == 0:
        return candidates[:0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gdev).to(candidates.device)
    shuffled = candidates[perm]
    order = torch.sort(scores[shuffled], descending=descending, stable=True).indices
    return shuffled[order[:k]]


@torch.no_grad()
def drop_and_grow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    drop_scores: torch.Tensor,
    grow_scores: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One exact drop-and-grow step on one layer.

    1. Drop the ``k`` active positions with the smallest ``drop_scores`` (ties broken uniformly at random).
    2. Grow the ``k`` positions with the largest ``grow_scores`` among the positions inactive *after* the drop
       (so a just-dropped position may be regrown; it then restarts from 0).

    ``k`` is clipped to ``[0, nnz]``; the number of active entries is preserved exactly. ``weight`` is modified in
    place: entries at the dropped and the grown positions are set to 0 (grown weights start at 0, RigL/SET).
    All randomness (tie breaking) comes from ``generator``.

    Returns:
        ``(new_mask, grown)``: the new mask (same dtype/shape as ``mask``) and a bool tensor marking the grown
        positions (including dropped-then-regrown ones).
    """
    if mask.shape != weight.shape or drop_scores.shape != weight.shape or grow_scores.shape != weight.shape:
        raise ValueError(
            f"shape mismatch: weight {tuple(weight.shape)}, mask {tuple(mask.shape)}, "
            f"drop_scores {tuple(drop_scores.shape)}, grow_scores {tuple(grow_scores.shape)}"
        )
    active = (mask != 0).flatten()
    active_idx = torch.nonzero(active).flatten()
    k = max(0, min(int(k), active_idx.numel()))
    grown = torch.zeros_like(active)
    if k == 0:
        return mask.clone(), grown.view(mask.shape)

    dropped_idx = _ranked(active_idx, drop_scores.flatten(), k, descending=False, generator=generator)
    after_drop = active.clone()
    after_drop[dropped_idx] = False
    inactive_idx = torch.nonzero(~after_drop).flatten()
    grown_idx = _ranked(inactive_idx, grow_scores.flatten(), k, descending=True, generator=generator)
    new_active = after_drop
    new_active[grown_idx] = True
    grown[grown_idx] = True

    flat_w = weight.view(-1) if weight.is_contiguous() else None
    if flat_w is not None:
        flat_w[dropped_idx] = 0
        flat_w[grown_idx] = 0
    else:
        changed = torch.zeros_like(active)
        changed[dropped_idx] = True
        changed[grown_idx] = True
        weight.masked_fill_(changed.view(weight.shape), 0)
    return new_active.view(mask.shape).to(mask.dtype), grown.view(mask.shape)
