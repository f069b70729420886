"""A Lightning callback that trains a ``LightningModule`` with any bayessparse method.

::

    trainer = lightning.pytorch.Trainer(max_epochs=10, callbacks=[Sparsify("cigl", sparsity=0.9)])
    trainer.fit(module, train_loader)
    final = trainer.callbacks[0].final_model()   # CigL's weight average

Install with ``pip install "bayessparse[lightning]"``. The callback drives a
:class:`~bayessparse.sparsifier.Sparsifier` on the module and its (single) optimizer from Lightning's hooks:
the random mask's forward context from the start of a batch to the end of its backward pass, the
gradient masking (or the mask update) just before the optimizer step, and the epoch's end for CigL's
weight average. On a mask-update step every gradient is cleared after the update, so Lightning's
optimizer step changes nothing there, as RigL prescribes. Gradient accumulation and Lightning's mixed
precision work as with the Sparsifier (Lightning unscales the gradients before the hook). The
callback's state (masks, schedule position, random mask, average) is saved in Lightning's checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError as exc:  # an optional extra
    raise ImportError('bayessparse.lightning needs Lightning: pip install "bayessparse[lightning]"') from exc

from bayessparse.errors import ConfigError
from bayessparse.sparsifier import Sparsifier, sparsify

__all__ = ["Sparsify"]


class Sparsify(pl.Callback):
    """Train the module with ``method`` at ``sparsity`` (the options of :func:`~bayessparse.sparsifier.sparsify`)."""

    def __init__(self, method: str = "rigl", sparsity: float = 0.9, *, seed: int = 0, **options: Any) -> None:
        self.method, self.sparsity, self.seed, self.options = method, sparsity, seed, options
        self.sparsifier: Sparsifier | None = None
        self._saved: dict[str, Any] | None = None
        self._context: contextlib.AbstractContextManager | None = None
        self._stepped = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sparsifier is not None:
            return
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"Sparsify needs exactly one optimizer, the module configures {len(trainer.optimizers)}")
        total = int(trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        # resuming: Lightning restored the weights already, and building the method prunes them by a fresh mask
        weights = copy.deepcopy(pl_module.state_dict()) if self._saved is not None else None
        self.sparsifier = sparsify(pl_module, trainer.optimizers[0], self.method, sparsity=self.sparsity,
                                   total_steps=total, steps_per_epoch=per_epoch, seed=self.seed, **self.options)
        if self._saved is not None:
            self.sparsifier.load_state_dict(self._saved)
            pl_module.load_state_dict(weights)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._context = self.sparsifier.forward()
        self._context.__enter__()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave_forward()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.sparsifier.before_step()
        self._stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._leave_forward()  # a batch whose training_step returned None had no backward pass
        if self._stepped:
            self.sparsifier.after_step()
            self._stepped = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sparsifier.end_of_epoch()

    def _leave_forward(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def final_model(self, recalibrate: Any = None) -> nn.Module:
        """The model to evaluate after ``fit`` (CigL: the averaged network; see :meth:`Sparsifier.final_model`)."""
        if self.sparsifier is None:
            raise RuntimeError("Sparsify.final_model: call trainer.fit first")
        return self.sparsifier.final_model(recalibrate)

    def state_dict(self) -> dict[str, Any]:
        return self.sparsifier.state_dict() if self.sparsifier is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.sparsifier is not None:  # restored after fit started
            self.sparsifier.load_state_dict(state_dict)
        else:  # restored before: applied when the sparsifier is built
            self._saved = dict(state_dict)
