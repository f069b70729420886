"""CigL's random mask ``Z``: a fresh Bernoulli thinning of the active weights at every step.

Lei et al., "Calibrating the Rigged Lottery: Making All Tickets Reliable", ICLR 2023. With keep
probability ``p = 1 - drop_rate``, every step draws ``Z_ij ~ Bernoulli(p)`` and takes

    W <- W - lr * Z ⊙ ∇L(Z ⊙ M ⊙ W; batch)

i.e. the forward pass sees the thinned weights (no ``1/p`` rescaling) and only kept weights
move; weights under ``Z = 0`` are left exactly as they were (momentum and weight decay
included). ``Z`` over all prunable layers comes from one vectorised ``torch.rand`` call.
"""

from __future__ import annotations

from typing import Any

import torch

from bayessparse.sparsity.masks import MaskSet


class RandomMask:
    """Sample ``Z`` over a mask set's weights and thin / restore them around a step.

    Args:
        masks: the deterministic masks ``M``; ``Z`` is drawn on every prunable weight, and the
            thinning mask used is ``Z ⊙ M``.
        drop_rate: ``1 - p``, the probability that an active weight is dropped in a step.
        seed: seeds the generator ``Z`` is drawn from (on the weights' device; saved in
            :meth:`state_dict` for exact resumes).
    """

    def __init__(self, masks: MaskSet, drop_rate: float, seed: int) -> None:
        self.weights = list(masks.weights.values())
        self.masks = [masks.masks[name] for name in masks.weights]
        self.keep = 1.0 - drop_rate
        device = self.weights[0].device
        self.generator = torch.Generator(device).manual_seed(seed)
        self._sizes = [w.numel() for w in self.weights]
        self.kept: list[torch.Tensor] = []  # Z ⊙ M of the current step
        self._original: list[torch.Tensor] = []
        self._thinned: list[torch.Tensor] = []

    def refresh(self, masks: MaskSet) -> None:
        """Pick up mask tensors that were replaced (after a checkpoint load)."""
        self.masks = [masks.masks[name] for name in masks.weights]

    def sample(self) -> list[torch.Tensor]:
        """Draw ``Z ~ Bernoulli(keep)`` for every weight and return ``Z ⊙ M`` per layer."""
        w0 = self.weights[0]
        uniform = torch.rand(sum(self._sizes), generator=self.generator, device=w0.device, dtype=w0.dtype)
        z = (uniform < self.keep).to(w0.dtype).split(self._sizes)
        return torch._foreach_mul([zi.view_as(w) for zi, w in zip(z, self.weights)], self.masks)

    @torch.no_grad()
    def thin_(self) -> None:
        """Sample ``Z`` and make the weights ``Z ⊙ M ⊙ W`` (the originals are kept aside)."""
        self.kept = self.sample()
        self._original = [w.data for w in self.weights]
        self._thinned = torch._foreach_mul(self._original, self.kept)
        for w, t in zip(self.weights, self._thinned):
            w.data = t

    @torch.no_grad()
    def restore_(self) -> None:
        """Put the un-thinned weights back (they are untouched while thinned ones are in use)."""
        for w, o in zip(self.weights, self._original):
            w.data = o

    @torch.no_grad()
    def use_thinned_(self) -> None:
        """Step on the thinned weights: gradients become ``Z ⊙ M ⊙ grad`` (only kept weights move)."""
        grads = [w.grad for w in self.weights]
        torch._foreach_mul_(grads, self.kept)
        for w, t in zip(self.weights, self._thinned):
            w.data = t

    @torch.no_grad()
    def merge_(self) -> None:
        """After the step: kept weights take their new values, dropped ones their old values."""
        for w, k, o in zip(self.weights, self.kept, self._original):
            w.data = torch.where(k.bool(), w.data, o)
        self._original, self._thinned = [], []

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
