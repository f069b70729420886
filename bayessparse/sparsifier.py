"""Sparse training inside your own loop: attach a method to any model and optimizer.

::

    sparsifier = bayessparse.sparsify(model, optimizer, method="cigl", sparsity=0.9, total_steps=T)
    for x, y in loader:
        optimizer.zero_grad()
        with sparsifier.forward():            # CigL: the weights are thinned by this step's Z
            loss_fn(model(x), y).backward()
        sparsifier.step()                      # optimizer.step() under the mask, or a drop-and-grow update
        scheduler.step()                       # your schedule, as usual
    sparsifier.end_of_epoch()                  # once per epoch (CigL's weight average takes snapshots)
    final = sparsifier.final_model()           # CigL: the averaged network; others: the model itself

It is the trainer's own step (:func:`bayessparse.engines.plain.plain_step` runs through a
:class:`Sparsifier`), so a method behaves the same in ``bayessparse train`` and in your loop:

* on an update step of the method's schedule (RigL's ``ΔT``) the mask moves by the step's dense
  gradients and no optimizer step is taken (Evci et al., 2020); the optimizer state of every weight
  that was dropped or grown is zeroed (SGD momentum, Adam's and AdamW's moments: every state tensor
  shaped like the weight);
* otherwise the gradients are masked (``grad ⊙ M``; CigL also ``⊙ Z``) before ``optimizer.step()``,
  so pruned weights, their gradients and their optimizer state stay exactly zero for SGD, Adam and
  AdamW alike (decoupled weight decay of a zero weight is zero).

**Gradient accumulation.** Call :meth:`Sparsifier.forward` around each micro-batch's forward and
backward and :meth:`Sparsifier.step` once per optimizer step: CigL draws ``Z`` once per optimizer
step, and every micro-batch of the step sees the same ``Z``.

**Mixed precision.** Pass the ``GradScaler`` to :meth:`Sparsifier.step` (it calls
``scaler.step(optimizer)`` and ``scaler.update()`` for you). On an update step the gradients are
unscaled first; an update whose gradients overflowed is skipped (the mask stays, the scale drops),
as ``scaler.step`` skips an optimizer step.

Methods: every ``--method`` of the registry that trains with a torch optimizer (``vcigl`` learns its
keep probabilities by SVI: use ``bayessparse train`` or :class:`bayessparse.ppl.SparseBNN`).

**What a sparse method needs.** A sparse method (every method but ``dense``) refuses, when it is built, a
model without prunable weights, a prunable weight that is frozen (``requires_grad=False``: its mask moves
by its gradient) and an optimizer that does not hold every prunable weight (the model would not train
while the mask moves). :meth:`Sparsifier.load_state_dict` refuses a state with a missing, unknown or
mistyped entry, or one saved by another method. These checks run at construction and load time only.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bayessparse.config import PYRO_METHODS, TrainConfig, resolve
from bayessparse.errors import ConfigError
from bayessparse.method import TrainingMethod
from bayessparse.methods import build_method
from bayessparse.sparsity.density import prunable_weights

__all__ = ["Sparsifier", "sparsify"]

#: The keyword options of :func:`sparsify`: config fields of the method (``bayessparse.config.TrainConfig``).
OPTIONS = ("layer_density", "dense_first", "update_interval", "update_alpha", "update_end", "explore_c",
           "drop_rate", "averaging_start")

#: The entries of :meth:`Sparsifier.state_dict`: the required ones, then the optional ones (``method_name``
#: is absent from states saved before it was stored, ``generator`` when the sparsifier had none).
STATE_REQUIRED = ("t", "epoch", "method")
STATE_OPTIONAL = ("method_name", "generator")


def _names(names: list[str], shown: int = 3) -> str:
    """``'a', 'b', 'c' and 2 more``: the first few of ``names`` and how many were left out."""
    head = ", ".join(repr(n) for n in names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_sparse_setup(model: nn.Module, optimizer: Any, method_name: str) -> None:
    """Refuse, in one line, a model and optimizer a sparse method cannot train: no prunable weights, frozen
    prunable weights, or a torch optimizer that does not hold every prunable weight."""
    weights = prunable_weights(model)
    if not weights:
        raise ConfigError(f"the model ({type(model).__name__}) has no prunable weights (conv / linear weights: "
                          f"nn.Linear, nn.Conv1d/2d/3d), so method '{method_name}' has nothing to make sparse")
    frozen = [name for name, w in weights.items() if not w.requires_grad]
    if frozen:
        raise ConfigError(f"frozen prunable weights (requires_grad=False), {len(frozen)} of the model's "
                          f"{len(weights)}: {_names(frozen)}; method '{method_name}' moves the masks by the "
                          "gradients: unfreeze them, or leave the frozen layers out of the sparsified model")
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, w in weights.items() if id(w) not in held]
        if missing:
            raise ConfigError(f"the optimizer does not hold {len(missing)} of the model's {len(weights)} prunable "
                              f"weights: {_names(missing)}; build it over this model's parameters "
                              "(e.g. model.parameters())")


def offer_fused_kernel(method: TrainingMethod, model: nn.Module) -> None:
    """Grant a method that asks for the fused random mask (CigL with ``fused_mask``) the kernel of
    :mod:`bayessparse.kernels.fused_mask`, active where it runs (CUDA with Triton); elsewhere the method keeps
    its eager path."""
    if not getattr(method, "wants_fused", False):
        return
    from bayessparse.kernels import fused_mask  # imports Triton only when asked for

    method.use_fused_kernel(fused_mask, fused_mask.uses_kernel(next(model.parameters()).device))


class Sparsifier:
    """A training method attached to a model and an optimizer; see the module docstring.

    Args:
        model: the network; its prunable weights are every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``
            ``weight`` (:func:`bayessparse.sparsity.density.prunable_weights`).
        optimizer: a torch optimizer over the model's parameters (SGD, Adam, AdamW, ...).
        method: a :class:`~bayessparse.method.TrainingMethod` (:func:`sparsify` builds one by name).
        total_steps: the optimizer steps of the whole training (the update schedule is a fraction of it).
        steps_per_epoch: optimizer steps per epoch (default ``total_steps``).
        generator: the method's generator (initial topology, tie breaks, random growth), saved in
            :meth:`state_dict` when given.

    Raises:
        ConfigError: for a sparse method (one with masks, every method but ``dense``): the model has no
            prunable weights, a prunable weight is frozen, or the optimizer (a torch optimizer) does not hold
            every prunable weight.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: TrainingMethod,
                 total_steps: int, steps_per_epoch: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if hasattr(method, "masks"):  # a sparse method; checked before setup prunes the model
            check_sparse_setup(model, optimizer, method.name)
        self.model, self.optimizer, self.method, self.generator = model, optimizer, method, generator
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch or total_steps
        self.t = 0  # optimizer steps taken (update steps included)
        self.epoch = 0
        self._updating = False  # between before_step and after_step: whether this step is a mask update
        method.setup(model, optimizer, total_steps, self.steps_per_epoch)
        offer_fused_kernel(method, model)

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """Context around a forward and backward pass (CigL: the weights are thinned by ``Z`` inside it)."""
        with self.method.forward(self.model):
            yield

    def step(self, scaler: torch.amp.GradScaler | None = None) -> dict[str, float] | None:
        """One optimizer step under the method, or a structure update; returns the update's statistics
        (fraction and number of positions changed) on an update step, else ``None``."""
        if scaler is not None and self.method.wants_update(self.t):
            scaler.unscale_(self.optimizer)  # the update ranks true gradients; an overflow skips it
            scaler.update()
        stats = self.before_step()
        if not self._updating:
            if scaler is None:
                self.optimizer.step()
            else:
                scaler.step(self.optimizer)
                scaler.update()
        self.after_step()
        return stats

    def _finite_gradients(self) -> bool:
        return all(bool(torch.isfinite(p.grad).all()) for group in self.optimizer.param_groups
                   for p in group["params"] if p.grad is not None)

    def before_step(self) -> dict[str, float] | None:
        """For a framework that calls ``optimizer.step()`` itself (the Lightning callback): call it after the
        backward pass (with unscaled gradients) and before the optimizer step, and :meth:`after_step` after it.

        On an update step the mask moves (unless a gradient overflowed) and every gradient is cleared, so the
        optimizer step that follows changes nothing (torch optimizers skip a parameter without a gradient);
        otherwise the gradients are masked. Returns the update's statistics, as :meth:`step`."""
        self._updating = self.method.wants_update(self.t)
        if not self._updating:
            self.method.before_optimizer_step()
            return None
        stats = self.method.update(self.t, self.optimizer) if self._finite_gradients() else None
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def after_step(self) -> None:
        """The second half of :meth:`before_step`, right after the optimizer step."""
        if not self._updating:
            self.method.after_optimizer_step()
        self.t += 1

    def end_of_epoch(self) -> None:
        """Mark the end of an epoch (CigL's weight average takes its snapshot here once ``T*`` is passed)."""
        self.epoch += 1
        self.method.end_of_epoch(self.epoch, self.t)

    def final_model(self, recalibrate: Callable[[nn.Module], None] | None = None) -> nn.Module:
        """The model to evaluate: CigL's averaged network (``recalibrate(net)`` re-estimates its BatchNorm
        statistics, e.g. ``torch.optim.swa_utils.update_bn`` on your training loader), else the model."""
        return self.method.final_model(self.model, recalibrate or (lambda net: None))

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The deterministic masks ``M`` by weight name (empty for dense training)."""
        mask_set = getattr(self.method, "masks", None)
        return dict(mask_set.masks) if mask_set is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """The method's name and state (masks, schedule, random mask, average), its generator and the step
        count; the model's and the optimizer's states are yours to save beside it."""
        state = {"t": self.t, "epoch": self.epoch, "method": self.method.state_dict(), "method_name": self.method.name}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Build the sparsifier before loading the model's weights: building it
        prunes the model by a fresh initial mask.

        A missing, unknown or mistyped entry, or the state of another method, is a
        :class:`~bayessparse.errors.ConfigError` naming it; the entries are checked before anything is loaded.
        (A state saved before ``method_name`` was stored is recognised by its method's entries.)"""
        name = self.method.name
        _check_entries(state, name)
        method_state = state["method"]
        _check_method_state(method_state, self.method)
        generator_state = state.get("generator")
        if "generator" in state:
            _check_generator_state(generator_state, self.generator)
        try:
            self.method.load_state_dict(method_state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise ConfigError(f"Sparsifier state entry 'method' does not load into method '{name}': "
                              f"{_first_line(exc)}") from exc
        self.t, self.epoch = int(state["t"]), int(state["epoch"])
        if self.generator is not None and generator_state is not None:
            self.generator.set_state(generator_state)


def _check_entries(state: Any, name: str) -> None:
    """The entries of a Sparsifier state: present, known, of the right type, saved by method ``name``."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"a Sparsifier state is the dict of Sparsifier.state_dict(), got {type(state).__name__}")
    for key in STATE_REQUIRED:
        if key not in state:
            raise ConfigError(f"the Sparsifier state lacks entry {key!r} (entries: {', '.join(STATE_REQUIRED)}, "
                              f"optionally {', '.join(STATE_OPTIONAL)})")
    unknown = sorted((k for k in state if k not in STATE_REQUIRED + STATE_OPTIONAL), key=str)
    if unknown:
        raise ConfigError(f"the Sparsifier state has an unknown entry {unknown[0]!r} "
                          f"(entries: {', '.join(STATE_REQUIRED + STATE_OPTIONAL)})")
    saved_name = state.get("method_name", name)
    if not isinstance(saved_name, str):
        raise ConfigError(f"Sparsifier state entry 'method_name' must be a method name, got {saved_name!r}")
    if saved_name != name:
        raise ConfigError(f"the Sparsifier state was saved by method '{saved_name}', this sparsifier runs "
                          f"method '{name}': build it with method '{saved_name}' to load this state")
    for key in ("t", "epoch"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ConfigError(f"Sparsifier state entry {key!r} must be an integer >= 0, got {value!r}")


def _check_method_state(method_state: Any, method: TrainingMethod) -> None:
    """The ``method`` entry holds what ``method`` saves (an older state without ``method_name`` is recognised
    by these entries)."""
    if not isinstance(method_state, Mapping):
        raise ConfigError(f"Sparsifier state entry 'method' must be a dict (the method's state), "
                          f"got {type(method_state).__name__}")
    own = set(method.state_dict())
    lacking = sorted(own - set(method_state), key=str)
    extra = sorted(set(method_state) - own, key=str)
    if lacking or extra:
        found = (f"lacks {', '.join(map(repr, lacking))}, which method '{method.name}' saves" if lacking else
                 f"has {', '.join(map(repr, extra))}, which method '{method.name}' does not save")
        raise ConfigError(f"Sparsifier state entry 'method' {found}: a state of another method?")


def _check_generator_state(generator_state: Any, generator: torch.Generator | None) -> None:
    """The ``generator`` entry is a state ``generator`` accepts (tried on a scratch generator: nothing is loaded
    from a state that fails)."""
    if not (torch.is_tensor(generator_state) and generator_state.dtype == torch.uint8):
        raise ConfigError("Sparsifier state entry 'generator' must be a generator state (a uint8 tensor), "
                          f"got {type(generator_state).__name__}")
    if generator is not None:
        try:
            torch.Generator(device=generator.device).set_state(generator_state)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"Sparsifier state entry 'generator' is not a state of this generator: "
                              f"{_first_line(exc)}") from exc


def sparsify(model: nn.Module, optimizer: torch.optim.Optimizer, method: str = "rigl", *, sparsity: float = 0.9,
             total_steps: int, steps_per_epoch: int | None = None, seed: int = 0, **options: Any) -> Sparsifier:
    """Attach ``method`` (a name of the ``--method`` registry) at ``sparsity`` to ``model`` and ``optimizer``.

    ``options`` are the method's settings, named as the config fields :data:`OPTIONS` (e.g.
    ``drop_rate=0.01``, ``update_interval=100``); ``seed`` seeds the initial topology, the updates' tie
    breaks and CigL's ``Z``. Bad values are a :class:`~bayessparse.errors.ConfigError` naming the field.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for name, value in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option '{unknown[0]}' (choose from: {', '.join(OPTIONS)})")
    if method in PYRO_METHODS:
        raise ConfigError(f"method '{method}' is trained by SVI: use bayessparse train or bayessparse.ppl.SparseBNN")
    cfg: TrainConfig = resolve({"method": method, "sparsity": sparsity, "seed": seed, **options})
    generator = torch.Generator().manual_seed(cfg.seed)
    return Sparsifier(model, optimizer, build_method(cfg, model, generator), total_steps, steps_per_epoch, generator)
