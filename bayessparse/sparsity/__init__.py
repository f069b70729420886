"""Sparse topology: which weights exist (masks), how dense each layer is, and how the masks move (DST).

Typical use::

    shapes = {n: w.shape for n, w in prunable_weights(model).items()}
    masks = MaskSet(model, layer_densities("erk", shapes, density=0.1), generator=gen)
    updater = MaskUpdater(masks, UpdateSchedule(total_steps=T), MagnitudeDrop(), GradientGrow(), gen)
"""

from bayessparse.sparsity.density import (
    LAYER_DENSITY_KINDS,
    PRUNABLE_TYPES,
    erk_densities,
    erk_epsilon,
    layer_densities,
    prunable_weights,
    uniform_densities,
)
from bayessparse.sparsity.dst import MaskUpdater, zero_optimizer_state_
from bayessparse.sparsity.growth import (
    DropCriterion,
    GradientGrow,
    GrowCriterion,
    LayerView,
    MagnitudeDrop,
    RandomGrow,
    UCBGrow,
    drop_and_grow,
)
from bayessparse.sparsity.masks import MaskSet, target_count
from bayessparse.sparsity.schedule import UpdateSchedule

__all__ = [
    "LAYER_DENSITY_KINDS",
    "PRUNABLE_TYPES",
    "prunable_weights",
    "uniform_densities",
    "erk_densities",
    "erk_epsilon",
    "layer_densities",
    "MaskSet",
    "target_count",
    "UpdateSchedule",
    "LayerView",
    "DropCriterion",
    "GrowCriterion",
    "MagnitudeDrop",
    "RandomGrow",
    "GradientGrow",
    "UCBGrow",
    "drop_and_grow",
    "MaskUpdater",
    "zero_optimizer_state_",
]
