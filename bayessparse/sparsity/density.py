"""Which weights are prunable, and how dense each prunable layer is.

A *prunable* weight is the ``weight`` of every convolution (1-, 2- or 3-d) and every linear layer. Biases
and normalisation parameters are never pruned.

Two layer-density distributions are provided, both mapping a target overall density ``D = 1 - S`` to one
density per layer:

* **uniform** -- every prunable layer gets density ``D`` (optionally the first layer is kept dense).
* **ERK** (Erdős–Rényi-Kernel; Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
  building on the Erdős–Rényi distribution of Mocanu et al., Nature Communications 2018, "SET") -- the density
  of layer ``l`` is proportional to ``raw_l = sum(shape_l) / prod(shape_l)``, i.e.
  ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)`` for a conv and ``(n_in + n_out) / (n_in * n_out)``
  for a linear layer, with layers whose density would exceed 1 capped at 1 (see :func:`erk_densities`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from bayessparse.errors import ConfigError

__all__ = [
    "PRUNABLE_TYPES",
    "prunable_weights",
    "uniform_densities",
    "erk_densities",
    "erk_epsilon",
    "layer_densities",
    "LAYER_DENSITY_KINDS",
]

#: Module types whose ``weight`` is prunable.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: Accepted values of the ``kind`` argument of :func:`layer_densities`.
LAYER_DENSITY_KINDS = ("erk", "uniform")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable weights of ``model``, in module order.

    Returns ``{"<module name>.weight": parameter}`` for every :class:`~torch.nn.Conv1d`,
    :class:`~torch.nn.Conv2d`, :class:`~torch.nn.Conv3d` and :class:`~torch.nn.Linear` (subclasses included)
    whose ``weight`` is a parameter. The key is the name under which the parameter appears in
    ``model.named_parameters()`` (a module shared at two places is listed once, under its first name).
    """
    out: dict[str, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            out[f"{mod_name}.weight" if mod_name else "weight"] = module.weight
    return out


def _check_density(density: float) -> float:
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ConfigError(f"density must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < d <= 1.0):  # also rejects NaN
        raise ConfigError(f"density must be in (0, 1] (density = 1 - sparsity), got {density!r}")
    return d


def _numels(shapes: Mapping[str, torch.Size]) -> dict[str, int]:
    out = {}
    for name, shape in shapes.items():
        n = math.prod(int(s) for s in shape)
        if n <= 0:
            raise ConfigError(f"layer {name!r} has an empty weight shape {tuple(shape)}")
        out[name] = n
    return out


def uniform_densities(
    shapes: Mapping[str, torch.Size], density: float, dense_first: bool = False
) -> dict[str, float]:
    """Every layer gets density ``density``; with ``dense_first`` the first layer (in mapping order) gets 1.

    With ``dense_first`` the other layers keep density ``density`` (as in the RigL paper's "uniform" setting,
    where the first layer is left dense), so the overall density is slightly above ``density``.
    """
    d = _check_density(density)
    _numels(shapes)
    out = {name: d for name in shapes}
    if dense_first and out:
        out[next(iter(out))] = 1.0
    return out


def _erk_solve(
    shapes: Mapping[str, torch.Size], density: float, dense: set[str] | None = None
) -> tuple[float, set[str]]:
    """Solve ERK: return ``(eps, F)`` with ``F`` the set of layers forced dense.

    Iteration (Evci et al. 2020, appendix on ERK)::

        eps = (D * sum_l N_l - sum_{l in F} N_l) / sum_{l not in F} raw_l * N_l
        F  <- F  union  {l not in F : eps * raw_l > 1}         repeat until F stops growing.

    Capping a layer at density 1 frees budget for the others, so ``eps`` only increases along the iteration
    and adding every violating layer at once reaches the same fixed point as adding them one at a time.
    """
    d = _check_density(density)
    numel = _numels(shapes)
    raw = {name: sum(int(s) for s in shape) / numel[name] for name, shape in shapes.items()}
    forced = set(dense or ())
    total = sum(numel.values())
    budget = d * total
    if d == 1.0:
        return math.inf, set(shapes)
    if sum(numel[n] for n in forced) >= budget:
        raise ConfigError(
            f"density {density} is too low: the layers forced dense {sorted(forced)} alone use the whole budget"
        )
    while True:
        rest = [n for n in shapes if n not in forced]
        denom = sum(raw[n] * numel[n] for n in rest)
        if not rest or denom <= 0:  # cannot happen for D < 1 (see docstring), kept as a guard
            return math.inf, set(shapes)
        eps = (budget - sum(numel[n] for n in forced)) / denom
        violating = {n for n in rest if eps * raw[n] > 1.0}
        if not violating:
            return eps, forced
        forced |= violating


def erk_epsilon(shapes: Mapping[str, torch.Size], density: float) -> float:
    """The ERK scale ``eps`` (``d_l = eps * raw_l`` for the layers not forced dense); ``inf`` when ``density == 1``.

    Sanity value (ALGORITHMS.md): WRN-28-10 at density 0.2 gives ``eps ~= 405.8``.
    """
    return _erk_solve(shapes, density)[0]


def erk_densities(
    shapes: Mapping[str, torch.Size], density: float, dense_first: bool = False
) -> dict[str, float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, RigL; Mocanu et al. 2018, SET).

    ``d_l = eps * raw_l`` with ``raw_l = sum(shape_l) / prod(shape_l)`` and

        ``eps = (D * sum_l N_l - sum_{l in F} N_l) / sum_{l not in F} raw_l * N_l``

    where ``N_l = prod(shape_l)`` and ``F`` is the set of layers forced dense (``d_l = 1``): any layer with
    ``eps * raw_l > 1`` joins ``F`` and ``eps`` is recomputed until no layer exceeds 1. The result satisfies
    ``sum_l d_l N_l = D sum_l N_l`` exactly (up to float rounding) and ``d_l = min(1, eps * raw_l)``.

    ``dense_first`` starts the iteration with the first layer in ``F``; unlike :func:`uniform_densities`, the
    overall density stays ``D`` (the other layers are thinned to pay for it).
    """
    forced = {next(iter(shapes))} if (dense_first and shapes) else set()
    eps, dense = _erk_solve(shapes, density, forced)
    out = {}
    for name, shape in shapes.items():
        if name in dense:
            out[name] = 1.0
        else:
            raw = sum(int(s) for s in shape) / math.prod(int(s) for s in shape)
            out[name] = min(1.0, eps * raw)
    return out


def layer_densities(
    kind: str, shapes: Mapping[str, torch.Size], density: float, dense_first: bool = False
) -> dict[str, float]:
    """Dispatch on ``kind`` (``"erk"`` or ``"uniform"``, case-insensitive).

    Raises :class:`~bayessparse.errors.ConfigError` for an unknown kind or a density outside ``(0, 1]``.
    """
    key = kind.lower() if isinstance(kind, str) else kind
    if key == "erk":
        return erk_densities(shapes, density, dense_first=dense_first)
    if key == "uniform":
        return uniform_densities(shapes, density, dense_first=dense_first)
    raise ConfigError(f"layer density kind must be one of {LAYER_DENSITY_KINDS}, got {kind!r}")
