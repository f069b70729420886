"""The deterministic mask set ``M`` over a model's prunable weights.

Each prunable layer ``l`` (see :func:`~bayessparse.sparsity.density.prunable_weights`) carries a 0/1 mask with
exactly ``round(d_l * N_l)`` active entries, chosen uniformly at random without replacement. The reference
implementations of SET / RigL sample ``Bernoulli(d_l)`` per entry, so their nnz drifts from the target; here the
count is exact at initialisation and every drop/grow update preserves it.

Hot path contract (one optimizer step)::

    loss.backward()
    masks.mask_grads_()      # grad <- grad * M   (masked gradients are exactly 0)
    optimizer.step()         # SGD(+momentum, +weight decay) / Adam keep masked weights exactly 0

With the weight and every optimizer buffer zero at the masked positions and a zero gradient there, SGD with
momentum and (coupled or decoupled) weight decay, and Adam, all leave those entries at exactly 0, so no
re-application of ``M`` is needed per step. :meth:`MaskSet.apply_` re-zeroes the weights and is used after mask
updates and checkpoint loads (and is cheap enough to call after every step if an optimizer breaks the contract).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from bayessparse.errors import ConfigError
from bayessparse.sparsity.density import prunable_weights

__all__ = ["MaskSet", "target_count"]


def target_count(density: float, numel: int) -> int:
    """Number of active entries for a layer of ``numel`` weights at density ``density``.

    ``round(density * numel)`` with halves rounded up, and at least 1 (a layer with no active weight would
    disconnect the network).
    """
    return max(1, min(numel, math.floor(density * numel + 0.5)))


def _random_mask(shape: torch.Size, k: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    n = math.prod(shape)
    dev = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(n, generator=generator, device=dev)[:k].to(like.device)
    mask = torch.zeros(n, dtype=like.dtype, device=like.device)
    mask[idx] = 1
    return mask.view(shape)


class MaskSet:
    """Deterministic masks ``M`` over a model's prunable weights.

    Args:
        model: the network; its prunable weights (conv / linear ``weight``) are masked.
        densities: one density in ``(0, 1]`` per prunable weight name (exactly the names of
            :func:`prunable_weights`), e.g. from :func:`~bayessparse.sparsity.density.layer_densities`.
        generator: the source of randomness for choosing the active entries (``torch.randperm``); ``None`` uses
            torch's global generator. Pass the run's generator for reproducible / resumable runs.

    Each layer gets exactly ``target_count(d_l, N_l) = round(d_l * N_l)`` active entries. A layer whose target
    equals ``N_l`` (``d_l = 1``) gets an all-ones mask, is flagged *dense* and is never touched by masking or
    drop/grow. Masked weights are zeroed immediately.

    Masks are stored with the weight's dtype and device (``mul_`` by a same-dtype tensor is the fastest path).
    Create the mask set after moving the model to its device.

    Attributes:
        weights: ``name -> parameter``.
        masks: ``name -> 0/1 tensor`` shaped like the weight. Update in place (``copy_``) to keep references valid.
        target_nnz: ``name -> exact number of active entries``.
        dense: names of dense layers (all-ones masks).
    """

    def __init__(
        self,
        model: nn.Module,
        densities: Mapping[str, float],
        generator: torch.Generator | None = None,
    ) -> None:
        self.weights: dict[str, nn.Parameter] = prunable_weights(model)
        missing = [n for n in self.weights if n not in densities]
        unknown = [n for n in densities if n not in self.weights]
        if missing or unknown:
            raise ConfigError(
                f"densities must name exactly the prunable weights; missing {missing}, unknown {unknown}"
            )
        self.masks: dict[str, torch.Tensor] = {}
        self.target_nnz: dict[str, int] = {}
        self.dense: set[str] = set()
        for name, w in self.weights.items():
            d = float(densities[name])
            if not (0.0 < d <= 1.0):
                raise ConfigError(f"density of layer {name!r} must be in (0, 1], got {densities[name]!r}")
            n = w.numel()
            k = target_count(d, n)
            self.target_nnz[name] = k
            if k == n:
                self.masks[name] = torch.ones_like(w, memory_format=torch.contiguous_format).detach()
                self.dense.add(name)
            else:
                self.masks[name] = _random_mask(w.shape, k, generator, w.detach())
        self._refresh_lists()
        self.apply_()

    # ------------------------------------------------------------------ hot path
    def _refresh_lists(self) -> None:
        self._sparse = [n for n in self.weights if n not in self.dense]
        self._sparse_w = [self.weights[n] for n in self._sparse]
        self._sparse_m = [self.masks[n] for n in self._sparse]

    @torch.no_grad()
    def apply_(self) -> None:
        """``W <- W * M`` in place for every sparse layer."""
        if self._sparse_w:
            torch._foreach_mul_([w.data for w in self._sparse_w], self._sparse_m)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """``grad <- grad * M`` in place for every sparse layer that has a gradient (dense layers skipped)."""
        grads, masks = [], []
        for w, m in zip(self._sparse_w, self._sparse_m):
            if w.grad is not None:
                grads.append(w.grad)
                masks.append(m)
        if grads:
            torch._foreach_mul_(grads, masks)

    # ------------------------------------------------------------------ queries
    def nnz(self) -> dict[str, int]:
        """Active entries per layer, counted from the masks."""
        return {n: int(torch.count_nonzero(m)) for n, m in self.masks.items()}

    def density(self) -> float:
        """Overall density measured from the weights: (# nonzero prunable weight entries) / (# entries).

        Measured, not derived from the masks: an active weight that is exactly 0 (e.g. just grown) counts as 0.
        """
        nz = sum(int(torch.count_nonzero(w.detach())) for w in self.weights.values())
        total = sum(w.numel() for w in self.weights.values())
        return nz / total if total else 1.0

    def mask_density(self) -> float:
        """Overall density of the masks (active entries / entries)."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(self.nnz().values()) / total if total else 1.0

    def sparse_layers(self) -> list[str]:
        """Names of the layers with density < 1 (the ones drop/grow may change), in module order."""
        return list(self._sparse)

    def set_mask_(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of sparse layer ``name`` in place (values copied; the nnz must stay the target)."""
        if name in self.dense:
            raise ValueError(f"layer {name!r} is dense; its mask is fixed")
        self.masks[name].copy_(mask)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """``{"masks": {name: bool tensor}}`` (CPU copies)."""
        return {"masks": {n: m.detach().to("cpu", torch.bool).clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Load masks saved by :meth:`state_dict` (copied into the existing tensors, so references stay valid),
        recompute targets / dense flags, and re-apply them to the weights."""
        saved = state["masks"]
        if set(saved) != set(self.weights):
            raise ValueError(
                f"mask state names {sorted(saved)} do not match the model's prunable weights {sorted(self.weights)}"
            )
        for name, w in self.weights.items():
            m = saved[name]
            if tuple(m.shape) != tuple(w.shape):
                raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, weight has {tuple(w.shape)}")
            # copy in place: other objects (e.g. CigL's random mask) may hold references to these tensors
            self.masks[name].copy_((m != 0).to(device=w.device, dtype=self.masks[name].dtype))
            k = int(torch.count_nonzero(self.masks[name]))
            self.target_nnz[name] = k
            if k == w.numel():
                self.dense.add(name)
            else:
                self.dense.discard(name)
        self._refresh_lists()
        self.apply_()

    def __repr__(self) -> str:
        return (
            f"MaskSet({len(self.weights)} layers, {len(self._sparse)} sparse, "
            f"mask density {self.mask_density():.4f})"
        )
