"""Training as stochastic variational inference: the ``--engine pyro`` step.

One training step is one :class:`pyro.infer.SVI` step on the per-example ELBO of
:class:`~bayessparse.ppl.model.SparseNetModel` with the guide
:class:`~bayessparse.ppl.guide.SparseGuide` (both under ``poutine.scale(1/N)``), estimated by
:class:`~bayessparse.ppl.elbo.CancellingTrace_ELBO` and optimised by a Pyro optimizer (SGD with
(Nesterov) momentum and the run's learning-rate schedule, no weight decay: the prior is the
decay). Everything around the step -- data order, epochs, checkpoints, weight averaging,
evaluation, the run folder -- is the plain trainer's (:mod:`bayessparse.train`), which calls
:meth:`PyroEngine.step` instead of its own step.

The run's training method keeps its role (:mod:`bayessparse.method`):

* structure-update steps (``method.wants_update(t)``): the guide's structure ``M`` moves
  (:meth:`SparseGuide.update_structure`) by the dense gradient ``∂L/∂(Z⊙W)`` recorded by
  :class:`DenseGradients`; no optimizer step, as in the plain loop;
* otherwise ``method.before_optimizer_step()``, the Pyro optimizer, ``method.after_optimizer_step()``.
  For CigL these are :class:`~bayessparse.sparsity.random_mask.RandomMask`'s ``use_thinned_`` /
  ``merge_``: the step is restricted to the coordinates the step's ``Z`` keeps (dropped means
  keep their values; their momentum receives no gradient), CigL's update rule.
* CigL's ``Z``: the guide's ``Z`` sites are latent ``Bernoulli(p)`` sites whose values come from
  one fused draw of the method's ``RandomMask`` per step (:class:`DrawnLatents`), so the SVI
  path sees the same random masks as the plain loop. ``RandomMask`` draws ``Z`` on the active
  positions only, so the site values are ``Z ⊙ M``: on pruned positions ``Z`` multiplies a zero
  weight and has no effect on anything.

With the same seed both engines produce the same weights (``tests/test_ppl_equivalence.py``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import PyroLRScheduler
from pyro.poutine.messenger import Messenger
from torch import Tensor

from bayessparse.errors import TrainingDiverged
from bayessparse.method import TrainingMethod
from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, param_site, z_site

__all__ = ["DenseGradients", "DrawnLatents", "PyroEngine", "ScheduledSGD", "StructuredSVI", "random_mask_draw"]


class DrawnLatents(Messenger):
    """Give latent sample sites values drawn elsewhere; the sites stay latent.

    Unlike ``poutine.condition`` the sites are not marked observed, and sites that already have a
    value (e.g. a model site replayed from the guide) are left alone. Used to feed the guide's
    ``Z`` sites from one fused ``RandomMask`` draw per step.
    """

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg: dict) -> None:
        if msg["value"] is None and not msg["is_observed"] and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


class DenseGradients(Messenger):
    """Record ``∂L/∂(Z⊙W)``, the dense gradient at the weights the network ran with.

    Listens to :func:`~bayessparse.ppl.model.network_weights`; after ``backward`` the gradients are
    in :attr:`grads` (``name -> tensor``). This is what RigL / DST-EE grow by, and what the plain
    loop has in ``weight.grad`` on an update step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.grads: dict[str, Tensor] = {}

    def _pyro_post_network_weights(self, msg: dict) -> None:
        for name, weight in msg["value"].items():
            if weight.requires_grad:
                weight.register_hook(functools.partial(self._keep, name))

    def _keep(self, name: str, grad: Tensor) -> None:
        self.grads[name] = grad


def random_mask_draw(random_mask: Any, weight_names: list[str]) -> Callable[[], dict[str, Tensor]]:
    """Values for the ``Z`` sites from one fused draw of a CigL :class:`RandomMask` per call."""

    def draw() -> dict[str, Tensor]:
        # thin_ draws Z on the active weights of every layer in one torch.rand call and sets the
        # dropped weights' values aside for the restricted step (use_thinned_ / merge_); restore_
        # writes them back at once, since here the model multiplies the network weights by Z.
        random_mask.thin_()
        random_mask.restore_()
        return {z_site(name): kept for name, kept in zip(weight_names, random_mask.kept_masks())}

    return draw


class _PerParameterState(Mapping):
    """``param -> optimizer state`` over a PyroOptim's per-parameter torch optimizers."""

    def __init__(self, optim_objs: dict) -> None:
        self._objs = optim_objs

    def __getitem__(self, param: Tensor) -> dict:
        scheduler = self._objs.get(param)
        state = None if scheduler is None else scheduler.optimizer.state.get(param)
        if state is None:
            raise KeyError(param)
        return state

    def __iter__(self) -> Iterator[Tensor]:
        return (p for p, s in self._objs.items() if p in s.optimizer.state)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ScheduledSGD(PyroLRScheduler):
    """``pyro.optim.LambdaLR`` over ``torch.optim.SGD``: the plain loop's optimizer, the Pyro way.

    One SGD (momentum, optional Nesterov, no weight decay) and one ``LambdaLR`` per parameter, as
    for every :class:`~pyro.optim.PyroOptim`; :meth:`step` advances the learning-rate schedules.
    Adds the surface the training methods use on a torch optimizer: ``state`` (``param ->`` its
    momentum buffer, which mask updates zero where the structure changed), ``zero_grad``,
    ``state_dict`` / ``load_state_dict`` (keyed by param-store name, evaluated in ``scope``).
    """

    def __init__(self, lr: float, momentum: float, nesterov: bool, lr_lambda: Callable[[int], float],
                 scope: Callable[[], contextlib.AbstractContextManager]) -> None:
        super().__init__(
            torch.optim.lr_scheduler.LambdaLR,
            {
                "optimizer": torch.optim.SGD,
                "optim_args": {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0},
                "lr_lambda": lr_lambda,
            },
        )
        self._scope = scope

    @property
    def state(self) -> Mapping[Tensor, dict]:
        return _PerParameterState(self.optim_objs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.optim_objs:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        with self._scope():
            return self.get_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with self._scope():
            store = pyro.get_param_store()
            names = {store.param_name(p): p for p in self.optim_objs}
            if set(names) != set(state):
                raise ValueError(f"optimizer state names {sorted(state)} do not match the parameters {sorted(names)}")
            for name, p in names.items():
                scheduler = self.optim_objs[p]
                scheduler.load_state_dict(state[name]["scheduler"])
                scheduler.optimizer.load_state_dict(state[name]["optimizer"])


class StructuredSVI(SVI):
    """:class:`pyro.infer.SVI` whose step also runs a training method's structure hooks.

    ``step(*args, t=t)`` is ``SVI.step`` (loss and gradients, optimizer, clear gradients) with:
    optional latent values drawn before the step (``draw``), and the method's hooks -- on a
    structure-update step ``t`` the guide's structure moves and no optimizer step is taken,
    otherwise ``method.before_optimizer_step()`` / ``after_optimizer_step()`` frame the step.
    A non-finite loss raises :class:`~bayessparse.errors.TrainingDiverged` before anything moves.
    """

    def __init__(self, model: Callable, guide: SparseGuide, optim: ScheduledSGD, loss: Any, method: TrainingMethod,
                 *, scale: float = 1.0, draw: Callable[[], Mapping[str, Tensor]] | None = None) -> None:
        super().__init__(poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale), optim, loss)
        self.structured_guide = guide
        self.method = method
        self.draw = draw

    def step(self, *args: Any, t: int, **kwargs: Any) -> float:
        update = self.method.wants_update(t)
        values = self.draw() if self.draw is not None else {}
        dense = DenseGradients() if update else contextlib.nullcontext()
        with poutine.trace(param_only=True) as param_capture, DrawnLatents(values), dense:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
        try:
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss}")
            if update:
                self.structured_guide.update_structure(self.method, t, dense.grads, self.optim)
            else:
                self.method.before_optimizer_step()
                self.optim(params)
                self.method.after_optimizer_step()
        finally:
            for p in params:  # as SVI.step's zero_grads, but freeing the memory
                p.grad = None
        return loss


class PyroEngine:
    """The ``--engine pyro`` training step of a :class:`~bayessparse.train.Run`.

    Built in two phases by :func:`bayessparse.train.build_run`: the optimizer first (the method's
    ``setup`` receives it), then :meth:`bind` once the method exists. All Pyro state lives in a
    param-store scope of its own, so runs in one process never share parameters; the store holds
    the network's own ``nn.Parameter`` objects (``net.<name>``), so the run's model state dict is
    the param store, and the checkpoint's ``optimizer`` entry is the Pyro optimizer's state.

    ``validate``: Pyro's runtime validation (support / shape / NaN checks at every site of every
    step) during training steps. Off by default -- it costs about a fifth of a small network's
    step and the plain loop has no equivalent; the tests run this model and guide with it on.
    """

    def __init__(self, cfg: Any, model: torch.nn.Module, num_data: int, lr_lambda: Callable[[int], float],
                 *, validate: bool = False) -> None:
        self.cfg = cfg
        self.net = model
        self.num_data = int(num_data)
        self.validate = validate
        self._store: dict[str, Any] = {"params": {}, "constraints": {}}
        self.optimizer = ScheduledSGD(cfg.lr, cfg.momentum, cfg.nesterov and cfg.momentum > 0, lr_lambda, self.scope)
        self.svi: StructuredSVI | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        """This run's param store (``pyro.get_param_store().scope``)."""
        return pyro.get_param_store().scope(self._store)

    def bind(self, method: TrainingMethod) -> "PyroEngine":
        """Build model, guide, ELBO and SVI for ``method``; register the parameters and their optimizers."""
        random_mask = getattr(method, "random_mask", None)
        keep = random_mask.keep if random_mask is not None else 1.0
        self.model = SparseNetModel(self.net, self.num_data, self.cfg.weight_decay, keep_prob=keep)
        self.guide = SparseGuide(self.model, getattr(method, "masks", None))
        draw = None
        if random_mask is not None:
            names = self.model.weight_names
            if [id(w) for w in random_mask.weights] != [id(self.guide.means[n]) for n in names]:
                raise ValueError("the random mask's weights are not the guide's means, in order")
            draw = random_mask_draw(random_mask, names)
        self.svi = StructuredSVI(self.model, self.guide, self.optimizer, CancellingTrace_ELBO(), method,
                                 scale=1.0 / self.num_data, draw=draw)
        with self.scope():
            params = [pyro.param(param_site(name), p) for name, p in self.net.named_parameters()]
            self.optimizer(params)  # creates every parameter's SGD and LambdaLR now (no gradients: no step)
        return self

    def step(self, run: Any, x: Tensor, y: Tensor) -> float:
        """One SVI step on the mini-batch, the lr schedule, ``run.step``; returns the negative per-example ELBO."""
        with self.scope(), pyro.validation_enabled(self.validate):
            try:
                loss = self.svi.step(x, y, t=run.step)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc} at epoch {run.epoch + 1}, step {run.step}") from None
            self.optimizer.step()  # the learning-rate schedules
        run.step += 1
        return loss
