"""CigL: RigL's deterministic mask ``M`` plus a random mask ``Z`` and mask-based weight averaging.

Lei, Zhang, Xu and Mallick, "Calibrating the Rigged Lottery: Making All Tickets Reliable",
ICLR 2023. ``M`` moves by magnitude drop / gradient grow on the RigL schedule; every step
trains ``Z ⊙ M ⊙ W`` with a fresh ``Z ~ Bernoulli(1 - drop_rate)`` (:mod:`.random_mask`); once
``M`` has stopped and ``T*`` has passed, the masked weights are averaged once per epoch
(:mod:`.averaging`) and the averaged network, with re-estimated BatchNorm statistics, is the
model that is evaluated. A run shorter than ``T*`` still averages its final epoch.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bayessparse.sparsity.averaging import MaskedWeightAverage
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.growth import GradientGrow
from bayessparse.sparsity.random_mask import RandomMask
from bayessparse.sparsity.training import SparseTraining


def expected_network(model: nn.Module, keep: float, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
    """A copy of ``model`` with prunable weights ``p·W = E_Z[Z ⊙ W]`` and re-estimated BatchNorm statistics."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        torch._foreach_mul_(list(prunable_weights(net).values()), keep)
    recalibrate(net)
    return net.eval()


class CigL(SparseTraining):
    """RigL with a per-step Bernoulli random mask and weight averaging.

    Args (beyond :class:`SparseTraining`):
        drop_rate: probability ``1 - p`` that an active weight is dropped in a step. The paper's text
            suggests about 10 %, but the official code drops 1 % in every published configuration (its
            drop-rate argument never reaches the masking object, so the 1/100 default always applies).
            The library default, 0.02, is the one the committed drop-rate sweep's rule picks
            (docs/results.md, "Choosing the default"); at 10 % a small network loses several accuracy
            points to the per-step noise.
        averaging_start: ``T* / T``; averaging starts at the first epoch end with
            ``t >= max(T*, T_end)``.
        snapshot: ``"expected"`` or ``"sampled"`` (see :mod:`.averaging`).
        fused: ask for ``Z`` drawn inside a fused kernel at every step (never stored, redrawn in the
            backward and for the optimizer step) instead of thinning the weights in place: the same
            algorithm with another random stream. The kernel side grants it
            (:meth:`use_fused_kernel`, called by :class:`~bayessparse.sparsifier.Sparsifier` with
            :mod:`bayessparse.kernels.fused_mask`): on CUDA, where the kernel runs; elsewhere
            :attr:`fused` stays ``False`` and CigL keeps the eager path.
    """

    def __init__(self, *args: Any, drop_rate: float = 0.02, averaging_start: float = 0.8,
                 snapshot: str = "expected", fused: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("grow", GradientGrow())
        super().__init__(*args, **kwargs)
        self.drop_rate = drop_rate
        self.averaging_start = averaging_start
        self.snapshot = snapshot
        self.wants_fused = fused
        self.fused = False  # whether the fused kernel draws Z (use_fused_kernel)
        self.kernel: Any = None  # the fused kernel's module: fused_forward and hold_dropped
        self.t = 0  # steps taken (the fused kernel's seeds are a function of it)
        self._drawn_at = -1  # the step whose Z the random mask holds (one draw per optimizer step)
        self._held = contextlib.ExitStack()

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(model, optimizer, total_steps, steps_per_epoch)
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        self.random_mask = RandomMask(self.masks, self.drop_rate, seed)
        self.seed = seed
        self.average = MaskedWeightAverage(model, self.random_mask, self.snapshot)
        self.model = model
        self.total_steps = total_steps
        self.averaging_step = max(int(self.averaging_start * total_steps), self.schedule.t_end)

    def use_fused_kernel(self, kernel: Any, active: bool) -> None:
        """Receive the fused kernel (a module with ``fused_forward`` and ``hold_dropped``, as
        :mod:`bayessparse.kernels.fused_mask`); ``active``: whether it draws ``Z`` from now on."""
        self.kernel, self.fused = kernel, active

    @contextlib.contextmanager
    def forward(self, model: nn.Module) -> Iterator[None]:
        if self.fused:
            dense_grad = self.schedule.is_update_step(self.t)  # RigL grows by the gradient at every position
            with self.kernel.fused_forward(model, self.masks.weights, self.seed, self.t, self.random_mask.keep,
                               dense_grad=dense_grad):
                yield
            return
        # Z is drawn once per optimizer step: with gradient accumulation every micro-batch of the step
        # (every forward context before the step) sees the same Z, as the fused path's seeds do.
        self.random_mask.thin_(redraw=self._drawn_at != self.t)
        self._drawn_at = self.t
        try:
            yield
        finally:
            self.random_mask.restore_()

    def update(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        stats = super().update(step, optimizer)
        self.random_mask.refresh()
        self._drawn_at = -1  # the held draw indexes the old M
        self.t = step + 1
        return stats

    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()  # grad ⊙ M
        if self.fused:  # and ⊙ Z, Z redrawn from the step's seeds; undone in after_optimizer_step
            self._held.enter_context(self.kernel.hold_dropped(self.masks.weights, self.seed, self.t, self.random_mask.keep))
        else:
            self.random_mask.use_thinned_()  # and ⊙ Z: the step sees the thinned weights

    def after_optimizer_step(self) -> None:
        if self.fused:
            self._held.close()
        else:
            self.random_mask.merge_()
        self.t += 1

    def end_of_epoch(self, epoch: int, step: int) -> None:
        if step >= self.averaging_step:
            self.average.add(self.model)

    def final_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        if self.average.count == 0:  # only if training stopped before its last epoch
            self.average.add(model)
        return self.average.averaged_model(recalibrate)

    def current_model(self, model: nn.Module, recalibrate: Callable[[nn.Module], None]) -> nn.Module:
        """The running average once averaging has begun, else ``p·W``; BatchNorm re-estimated either way.

        (The training network's own BatchNorm statistics were accumulated under random ``Z``, and its
        weights are not scaled by ``p``: measured on it, CigL's validation accuracy reads several points
        below the model the run outputs.)
        """
        if self.average.count:
            return self.average.averaged_model(recalibrate)
        return expected_network(model, self.random_mask.keep, recalibrate)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "random_mask": self.random_mask.state_dict(), "average": self.average.state_dict(),
                "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.t = int(state.get("t", 0))
        self._drawn_at = -1
        self.random_mask.load_state_dict(state["random_mask"])
        self.average.load_state_dict(state["average"])
