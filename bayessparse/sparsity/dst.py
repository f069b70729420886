"""Dynamic sparse training: a schedule plus a drop and a grow criterion acting on a :class:`MaskSet`.

=========  ======================  ==========================================================
method     drop                    grow
=========  ======================  ==========================================================
SET        :class:`MagnitudeDrop`  :class:`RandomGrow` (Mocanu et al., Nat. Commun. 2018)
RigL       :class:`MagnitudeDrop`  :class:`GradientGrow` (Evci et al., ICML 2020)
DST-EE     :class:`MagnitudeDrop`  :class:`UCBGrow` (Huang et al., DAC 2023)
=========  ======================  ==========================================================

Training-loop contract (RigL): on a step ``t`` with ``updater.is_update_step(t)``, compute the loss and a *dense*
gradient (do not call ``mask_grads_``) when ``updater.needs_dense_grad(t)``, call ``updater.update(t, optimizer)``
and take no optimizer step; on every other step ``backward -> masks.mask_grads_() -> optimizer.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from bayessparse.sparsity.growth import DropCriterion, GrowCriterion, LayerView, drop_and_grow
from bayessparse.sparsity.masks import MaskSet
from bayessparse.sparsity.schedule import UpdateSchedule

__all__ = ["MaskUpdater", "zero_optimizer_state_"]


@torch.no_grad()
def zero_optimizer_state_(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, where: torch.Tensor) -> int:
    """Zero, at the positions ``where`` (bool, shaped like ``param``), every tensor of ``optimizer.state[param]``
    that has ``param``'s shape (SGD ``momentum_buffer``; Adam ``exp_avg`` / ``exp_avg_sq``; ...). Scalars such as
    Adam's ``step`` are left alone. Returns the number of tensors touched."""
    state = _optimizer_state(optimizer, param)
    if not state:
        return 0
    touched = 0
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where.to(value.device), 0)
            touched += 1
    return touched


def _optimizer_state(optimizer: Any, param: torch.Tensor) -> dict | None:
    """``param``'s state in a torch optimizer, or in a Pyro ``PyroOptim`` (one torch optimizer, or one
    learning-rate scheduler around one, per parameter in ``optim_objs``)."""
    if optimizer is None:
        return None
    if hasattr(optimizer, "state"):
        return optimizer.state.get(param)
    per_param = getattr(optimizer, "optim_objs", None)
    if per_param is None:
        raise TypeError(f"cannot find per-parameter state in a {type(optimizer).__name__}")
    obj = per_param.get(param)
    if obj is None:
        return None
    return getattr(obj, "optimizer", obj).state.get(param)


class MaskUpdater:
    """Dynamic sparsity: schedule + drop criterion + grow criterion over a :class:`MaskSet`.

    At an update step ``t`` (``schedule.is_update_step(t)``), for every sparse layer ``l`` (dense layers are never
    touched):

    1. ``grow.observe(l, M_l)`` and ``drop.observe(l, M_l)`` (criteria with memory, e.g. DST-EE's counts);
    2. ``k_l = floor(f(t) * nnz_l)`` with ``f`` the schedule's cosine fraction;
    3. :func:`drop_and_grow` with ``drop.scores`` / ``grow.scores``: the ``k_l`` smallest-score active weights are
       dropped and the ``k_l`` best inactive positions (after the drop) grown; nnz is preserved exactly;
    4. the weights at grown and dropped positions are set to 0 and, in the optimizer, every per-parameter state
       tensor with the weight's shape (SGD momentum, Adam moments) is zeroed there, so grown weights start from
       0 with no stale momentum, and masked weights stay exactly 0 under later masked-gradient steps.

    Args:
        masks: the mask set to update in place.
        schedule: when and how much.
        drop: drop criterion (e.g. :class:`~bayessparse.sparsity.growth.MagnitudeDrop`).
        grow: grow criterion (e.g. ``RandomGrow`` / ``GradientGrow`` / ``UCBGrow``).
        generator: the only source of randomness (tie breaking, random growth). Save its state with
            ``generator.get_state()`` for exact resumption.
    """

    def __init__(
        self,
        masks: MaskSet,
        schedule: UpdateSchedule,
        drop: DropCriterion,
        grow: GrowCriterion,
        generator: torch.Generator | None,
    ) -> None:
        self.masks = masks
        self.schedule = schedule
        self.drop = drop
        self.grow = grow
        self.generator = generator
        self.num_updates = 0

    def is_update_step(self, t: int) -> bool:
        return self.schedule.is_update_step(t)

    def needs_dense_grad(self, t: int) -> bool:
        """Whether step ``t`` is an update step whose grow criterion needs the dense gradient."""
        return self.schedule.is_update_step(t) and bool(getattr(self.grow, "needs_gradient", False))

    @torch.no_grad()
    def update(self, t: int, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """Run the drop/grow update of step ``t`` (nothing happens if ``t`` is not an update step).

        Returns ``{"step": t, "updated": bool, "fraction": f(t), "changed": total positions changed,
        "layers": {name: positions changed}}``, where a layer's "changed" counts the dropped plus the grown
        positions (a position dropped and regrown counts once).
        """
        if not self.schedule.is_update_step(t):
            return {"step": t, "updated": False, "fraction": 0.0, "changed": 0, "layers": {}}
        f = self.schedule.fraction(t)
        per_layer = self._drop_and_grow(f, optimizer, self.drop, self.grow)
        self.num_updates += 1
        return {
            "step": t,
            "updated": True,
            "fraction": f,
            "changed": sum(per_layer.values()),
            "layers": per_layer,
        }

    @torch.no_grad()
    def jump(
        self,
        fraction: float,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        drop: DropCriterion | None = None,
        grow: GrowCriterion | None = None,
    ) -> dict:
        """One drop/grow update with an explicit ``fraction``, outside the schedule.

        FreeTickets' EDST "large jump" (Liu et al., ICLR 2022) is ``jump(0.8, optimizer, drop=MagnitudeDrop(),
        grow=GradientGrow())``: for every sparse layer, ``k_l = floor(fraction * nnz_l)`` active weights of
        smallest score are dropped and as many inactive positions grown, exactly as in :meth:`update` (nnz
        preserved, grown and dropped weights and their optimizer state zeroed). ``drop`` / ``grow`` default to
        the updater's own criteria; a gradient criterion needs the dense gradient in ``weight.grad``. The jump
        does not count in ``num_updates`` (that counts scheduled updates).

        Returns ``{"fraction", "changed", "layers": {name: positions changed}}`` like :meth:`update`.
        """
        if not (0.0 < float(fraction) <= 1.0):
            raise ValueError(f"jump fraction must be in (0, 1], got {fraction!r}")
        per_layer = self._drop_and_grow(float(fraction), optimizer, drop or self.drop, grow or self.grow)
        return {"fraction": float(fraction), "changed": sum(per_layer.values()), "layers": per_layer}

    def _drop_and_grow(
        self, f: float, optimizer: torch.optim.Optimizer | None, drop: DropCriterion, grow: GrowCriterion
    ) -> dict[str, int]:
        """Drop/grow ``floor(f * nnz_l)`` weights of every sparse layer; returns the positions changed per layer."""
        per_layer: dict[str, int] = {}
        for name in self.masks.sparse_layers():
            weight = self.masks.weights[name]
            mask = self.masks.masks[name]
            grow.observe(name, mask)
            drop.observe(name, mask)
            view = LayerView(name=name, weight=weight.detach(), grad=weight.grad, mask=mask)
            k = math.floor(f * self.masks.target_nnz[name])
            if k <= 0:
                per_layer[name] = 0
                continue
            d_scores = drop.scores(view)
            g_scores = grow.scores(view, self.generator)
            old_active = mask != 0
            new_mask, grown = drop_and_grow(weight.data, mask, k, d_scores, g_scores, self.generator)
            changed = grown | (old_active & (new_mask == 0))
            self.masks.set_mask_(name, new_mask)
            zero_optimizer_state_(optimizer, weight, changed)
            per_layer[name] = int(changed.sum())
        self.masks.apply_()
        # the dense gradient of this step must not leak into masked positions if the loop steps anyway
        self.masks.mask_grads_()
        return per_layer

    def state_dict(self) -> dict:
        """Criteria state and the update count. The masks (:meth:`MaskSet.state_dict`), the generator state and
        the schedule (configuration) are saved by their owners."""
        return {"num_updates": self.num_updates, "drop": self.drop.state_dict(), "grow": self.grow.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.num_updates = int(state.get("num_updates", 0))
        self.drop.load_state_dict(state.get("drop", {}))
        self.grow.load_state_dict(state.get("grow", {}))

    def __repr__(self) -> str:
        return f"MaskUpdater({self.schedule}, drop={self.drop!r}, grow={self.grow!r})"
