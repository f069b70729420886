"""The ``sparse-kernels`` engine: the chosen linear layers train as values on the support of ``M``.

``cfg.kernels`` picks the layers: ``"dense"`` none (masked-dense training, the reference path),
``"sparse"`` every sparse ``nn.Linear`` of the method's mask set, ``"auto"`` those where the
measured rule :func:`pays` says the sparse products are faster (docs/performance.md). Convolutions
always stay masked-dense.

For a chosen layer the step is the masked-dense step of :func:`bayessparse.engines.plain.plain_step` with
every term restricted to the active positions, which it equals up to float rounding:

* forward and backward by :func:`~bayessparse.kernels.sparse_linear.sparse_linear` (no dense weight
  gradient is formed);
* CigL's ``Z`` (the method's :class:`~bayessparse.sparsity.random_mask.RandomMask`, the same draw as the
  masked-dense path) multiplies the values, so a dropped value gets no gradient;
* SGD with the weight group's learning rate, momentum, Nesterov and weight decay on the values, the
  momentum buffer living on the values too; a value under ``Z = 0`` keeps its value while its buffer
  decays by the momentum, exactly as the masked-dense path (whose thinned weight and gradient are 0
  there);
* the values are written back into the dense weight after the step, so checkpoints, evaluation,
  weight averaging and mask updates see the same tensors as with masked-dense training.

A mask-update step needs RigL's dense gradient: it runs the masked-dense step, with the momentum put
back into the optimizer's dense buffer for the update to zero at the changed positions, and then
re-reads the support. The momentum is saved in the run's checkpoint (``engine``), so resumes are exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from bayessparse.engines.plain import PlainEngine, plain_step
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.kernels.sparse_linear import SparseStructure, sparse_linear

__all__ = ["AUTO_MAX_DENSITY", "AUTO_MIN_WEIGHTS", "SparseKernelEngine", "pays"]

#: ``"auto"`` uses sparse kernels for a linear layer at most this dense ...
AUTO_MAX_DENSITY = 0.1
#: ... with at least this many weights (docs/performance.md: below it the dense product is as fast).
AUTO_MIN_WEIGHTS = 2**16


def pays(density: float, numel: int) -> bool:
    """The measured rule of ``kernels: auto`` (docs/performance.md, ``bayessparse bench --setups kernels``)."""
    return density <= AUTO_MAX_DENSITY and numel >= AUTO_MIN_WEIGHTS


class _Layer:
    """One linear layer on sparse kernels: its module, weight, support and the momentum of its values."""

    def __init__(self, name: str, module: nn.Linear, mask: Tensor) -> None:
        self.name, self.module, self.weight = name, module, module.weight
        self.structure = SparseStructure(mask)
        self.values = self.structure.gather(self.weight.detach()).clone().requires_grad_(True)
        self.momentum: Tensor | None = None

    def reread(self, mask: Tensor) -> None:
        """After the mask or the dense weight changed outside the step."""
        self.structure = SparseStructure(mask)
        self.values = self.structure.gather(self.weight.detach()).clone().requires_grad_(True)


class SparseKernelEngine(PlainEngine):
    """The training step of ``cfg.kernels`` (``"sparse"`` or ``"auto"``): the plain engine's optimizer and
    schedule, its step on the chosen layers' values (module docstring). ``engine.bind(method)`` chooses the
    layers once the method's masks exist.
    """

    distributes = False

    def __init__(self, cfg: Any, model: nn.Module, num_data: int, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, num_data, steps_per_epoch)
        self.layers: list[_Layer] = []
        self.method: Any = None

    def bind(self, method: Any) -> None:
        """Choose the layers from the method's mask set (a dense method has none)."""
        self.method = method
        if getattr(method, "fused", False):
            raise ConfigError("fused_mask and sparse kernels exclude each other (the fused mask thins dense weights)")
        masks = getattr(method, "masks", None)
        if masks is None:
            return
        for name in masks.sparse_layers():
            module = self.model.get_submodule(name.rpartition(".")[0])
            mask = masks.masks[name]
            if type(module) is nn.Linear and (self.cfg.kernels == "sparse" or pays(float(mask.mean()), mask.numel())):
                self.layers.append(_Layer(name, module, mask))

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------------ the step

    def step(self, run: Any, x: Tensor, y: Tensor, total: int | None = None) -> float:
        if not self.layers or run.method.wants_update(run.step):
            return self._masked_dense_step(run, x, y)
        run.optimizer.zero_grad(set_to_none=True)
        for layer in self.layers:
            layer.values.grad = None
        with run.method.forward(run.model):
            keeps = self._keeps(run.method)
            with self._substituted(keeps):
                loss = run.task.loss(run.model, run.model(x), y)
                loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at epoch {run.epoch + 1}, step {run.step}")
        run.method.before_optimizer_step()
        run.optimizer.step()  # every other parameter (the chosen weights have no gradient)
        run.method.after_optimizer_step()
        self._sgd(self._weight_group(run.optimizer), keeps)
        run.scheduler.step()
        run.step += 1
        return value

    def _masked_dense_step(self, run: Any, x: Tensor, y: Tensor) -> float:
        """The reference step (mask updates need the dense gradient), momentum handed over both ways."""
        for layer in self.layers:
            if layer.momentum is not None:
                buffer = torch.zeros_like(layer.weight)
                layer.structure.scatter_(buffer, layer.momentum)
                run.optimizer.state[layer.weight]["momentum_buffer"] = buffer
        loss = plain_step(run, x, y)
        for layer in self.layers:
            state = run.optimizer.state.pop(layer.weight, {})
            buffer = state.get("momentum_buffer")
            layer.reread(self.method.masks.masks[layer.name])
            layer.momentum = layer.structure.gather(buffer).clone() if buffer is not None else None
        return loss

    def _keeps(self, method: Any) -> list[Tensor | None]:
        """CigL's ``Z`` on each chosen layer's values (``None``: every value kept), from the method's draw."""
        random_mask = getattr(method, "random_mask", None)
        if random_mask is None:
            return [None] * len(self.layers)
        dropped = dict(zip(random_mask.mask_set.masks, random_mask.dropped))
        keeps = []
        for layer in self.layers:
            keep = torch.ones(layer.structure.nnz, dtype=layer.values.dtype, device=layer.values.device)
            keep[torch.searchsorted(layer.structure.flat, dropped[layer.name])] = 0
            keeps.append(keep)
        return keeps

    @contextlib.contextmanager
    def _substituted(self, keeps: list[Tensor | None]) -> Iterator[None]:
        """The chosen layers compute by sparse kernels for the block (an instance ``forward`` shadows the class's)."""
        for layer, keep in zip(self.layers, keeps):
            values = layer.values if keep is None else layer.values * keep
            layer.module.forward = _forward(values, layer.structure, layer.module)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.module.forward

    @torch.no_grad()
    def _sgd(self, group: dict[str, Any], keeps: list[Tensor | None]) -> None:
        """``torch.optim.SGD``'s update on the values (dampening 0); a value with ``Z = 0`` stays put."""
        lr, mu, decay, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
        for layer, keep in zip(self.layers, keeps):
            v = layer.values
            current = v if keep is None else v * keep
            grad = v.grad if v.grad is not None else torch.zeros_like(v)
            step = grad.add(current, alpha=decay) if decay else grad
            if mu:
                if layer.momentum is None:
                    layer.momentum = step.clone()
                else:
                    layer.momentum.mul_(mu).add_(step)
                step = step.add(layer.momentum, alpha=mu) if nesterov else layer.momentum
            new = current - lr * step
            v.copy_(new if keep is None else torch.where(keep.bool(), new, v))
            layer.structure.scatter_(layer.weight.data, v)

    def _weight_group(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer group holding the prunable weights (its lr follows the run's schedule)."""
        if not self.layers:
            return {}
        target = self.layers[0].weight
        return next(g for g in optimizer.param_groups if any(p is target for p in g["params"]))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"layers": self.names, "momentum": [layer.momentum for layer in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """After the model and the method were loaded: re-read supports and values, restore the momentum."""
        if state.get("layers", []) != self.names:
            raise ValueError(f"sparse-kernel layers {state.get('layers')} do not match this run's {self.names}")
        for layer, momentum in zip(self.layers, state.get("momentum", [])):
            layer.reread(self.method.masks.masks[layer.name])
            layer.momentum = None if momentum is None else momentum.to(layer.values.device).clone()


def _forward(values: Tensor, structure: SparseStructure, module: nn.Linear):
    def forward(x: Tensor) -> Tensor:
        return sparse_linear(x, values, structure, module.bias)
    return forward
