"""Training as stochastic variational inference: the ``--engine pyro`` step.

One training step is one :class:`pyro.infer.SVI` step on the per-example ELBO of
:class:`~bayessparse.ppl.model.SparseNetModel` with the guide
:class:`~bayessparse.ppl.guide.SparseGuide` (both under ``poutine.scale(1/N)``), estimated by
:class:`~bayessparse.ppl.elbo.CancellingTrace_ELBO` and optimised by a Pyro optimizer (SGD with
(Nesterov) momentum and the run's learning-rate schedule, no weight decay: the prior is the
decay). Everything around the step -- data order, epochs, checkpoints, weight averaging,
evaluation, the run folder -- is the trainer's (:mod:`bayessparse.train`), which takes
:meth:`PyroEngine.step` from the engine registry (:mod:`bayessparse.engines`, ``pyro``).

The run's training method keeps its role (:mod:`bayessparse.method`):

* structure-update steps (``method.wants_update(t)``): the guide's structure ``M`` moves
  (:meth:`SparseGuide.update_structure`) by the dense gradient ``∂L/∂(Z⊙W)`` recorded by
  :class:`DenseGradients`; no optimizer step, as in the plain loop;
* otherwise ``method.before_optimizer_step()``, the Pyro optimizer, ``method.after_optimizer_step()``.
  For CigL these are :class:`~bayessparse.sparsity.random_mask.RandomMask`'s ``use_thinned_`` /
  ``merge_``: the step is restricted to the coordinates the step's ``Z`` keeps (dropped means
  keep their values; their momentum receives no gradient), CigL's update rule.
* CigL's ``Z``: the guide's ``Z`` sites sample ``q(Z) = p(Z) = Bernoulli(p₀)`` (Pyro draws them);
  the values are handed to the method's ``RandomMask`` (:class:`LatentCapture`,
  ``RandomMask.use_draw``) so that its step restriction knows which active weights were dropped.
* a method with a ``variational`` attribute (``vcigl``) chooses the guide's family; it receives the
  guide (``attach_guide``) to build its averaged output from the learned keep probabilities.

Given the same random masks (conditioned in the tests), both engines produce the same weights
(``tests/test_ppl_equivalence.py``).
"""

from __future__ import annotations

import contextlib
import warnings
import functools
import math
from collections.abc import Mapping
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from torch import Tensor

from bayessparse.errors import TrainingDiverged
from bayessparse.method import TrainingMethod
from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, likelihood_of, z_site

__all__ = ["DenseGradients", "DrawnLatents", "LatentCapture", "PyroEngine", "ScheduledSGD", "StructuredSVI",
           "random_mask_draw"]


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


class LatentCapture(Messenger):
    """Record the first value each of the named sample sites takes in a step (the guide's draw)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = set(names)
        self.values: dict[str, Tensor] = {}

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] in self.names and msg["name"] not in self.values:
            self.values[msg["name"]] = msg["value"]


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


class ScheduledSGD(PyroOptim):
    """The plain loop's optimizer as a :class:`~pyro.optim.PyroOptim`: one SGD over every parameter.

    A stock ``PyroOptim`` keeps one torch optimizer (and one scheduler) per parameter and steps them
    one by one; on a small network that per-parameter Python is a visible share of a training step.
    This one keeps a single ``torch.optim.SGD`` (momentum, optional Nesterov, no weight decay: the
    prior is the decay) and a single ``LambdaLR`` over all parameters, registered on the first call;
    each call steps the parameters that received a gradient. :meth:`step` advances the schedule.
    It has the surface the training methods use on a torch optimizer: ``state`` (``param ->`` its
    momentum buffer, which mask updates zero where the structure changed), ``zero_grad``,
    ``state_dict`` / ``load_state_dict`` (parameters identified by param-store name, in ``scope``).
    """

    def __init__(self, lr: float, momentum: float, nesterov: bool, lr_lambda: Callable[[int], float],
                 scope: Callable[[], contextlib.AbstractContextManager]) -> None:
        super().__init__(torch.optim.SGD, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0})
        self.lr_lambda = lr_lambda
        self._scope = scope
        self.optimizer: torch.optim.SGD | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._registered: set[int] = set()

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        params = list(params)
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(params, **self.pt_optim_args)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
            self._registered = {id(p) for p in params}
        elif any(id(p) not in self._registered for p in params):
            raise ValueError("ScheduledSGD: a parameter appeared after the optimizer was built; register every "
                             "parameter on the first call")
        if any(p.grad is not None for p in params):
            self.optimizer.step()

    def step(self) -> None:
        """Advance the learning-rate schedule (once per training step)."""
        if self.scheduler is not None:
            self.scheduler.step()

    @property
    def state(self) -> Mapping[Tensor, dict]:
        return self.optimizer.state if self.optimizer is not None else {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def _names(self) -> list[str]:
        store = pyro.get_param_store()
        return [store.param_name(p) for p in self.optimizer.param_groups[0]["params"]]

    def state_dict(self) -> dict[str, Any]:
        with self._scope():
            return {"names": self._names(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with self._scope():
            if "names" not in state or state["names"] != self._names():
                raise ValueError(f"optimizer state names {state.get('names')} do not match the parameters "
                                 f"{self._names()}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def get_state(self) -> dict[str, Any]:
        return self.state_dict()

    def set_state(self, state_dict: dict[str, Any]) -> None:
        self.load_state_dict(state_dict)


class StructuredSVI(SVI):
    """:class:`pyro.infer.SVI` whose step also runs a training method's structure hooks.

    ``step(*args, t=t)`` is ``SVI.step`` (loss and gradients, optimizer, clear gradients) with the
    method's hooks: on a structure-update step ``t`` the guide's structure moves and no optimizer
    step is taken, otherwise ``method.before_optimizer_step()`` / ``after_optimizer_step()`` frame
    the step. ``draw`` (tests) conditions the guide's latent sites on values drawn elsewhere. A
    non-finite loss raises :class:`~bayessparse.errors.TrainingDiverged` before anything moves.
    """

    def __init__(self, model: Callable, guide: SparseGuide, optim: Any, loss: Any, method: TrainingMethod,
                 *, draw: Callable[[], Mapping[str, Tensor]] | None = None) -> None:
        super().__init__(model, guide, optim, loss)
        self.structured_guide = guide
        self.method = method
        self.draw = draw
        self.random_mask = getattr(method, "random_mask", None)
        self.z_names = [z_site(n) for n in guide.weight_names]
        self._params: list[Tensor] | None = None

    def step(self, *args: Any, t: int, **kwargs: Any) -> float:
        update = self.method.wants_update(t)
        values = self.draw() if self.draw is not None else {}
        dense = DenseGradients() if update else contextlib.nullcontext()
        drawn = LatentCapture(self.z_names) if self.random_mask is not None else contextlib.nullcontext()
        given = DrawnLatents(values) if values else contextlib.nullcontext()
        # The parameters are the same at every step: SVI.step traces them each time, this step once.
        capture = poutine.trace(param_only=True) if self._params is None else contextlib.nullcontext()
        with capture as param_capture, given, drawn, dense, warnings.catch_warnings():
            # A NaN loss is reported once, as TrainingDiverged below, not also as Pyro's warning.
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        if self._params is None:
            self._params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
        params = self._params
        try:
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss}")
            if update:
                self.structured_guide.update_structure(self.method, t, dense.grads, self.optim)
            else:
                if self.random_mask is not None and not values:
                    self.random_mask.use_draw([drawn.values[z] for z in self.z_names])
                self.method.before_optimizer_step()
                self.optim(params)
                self.method.after_optimizer_step()
        finally:
            for p in params:  # as SVI.step's zero_grads, but freeing the memory
                p.grad = None
        return loss


class PyroEngine:
    """The ``--engine pyro`` training step of a :class:`~bayessparse.train.Run`.

    Registered as the ``pyro`` engine (:mod:`bayessparse.engines`) and built in two phases by
    :func:`bayessparse.train.build_run`: the optimizer first (the method's
    ``setup`` receives it), then :meth:`bind` once the method exists. All Pyro state lives in a
    param-store scope of its own, so runs in one process never share parameters; the store holds
    the network's own ``nn.Parameter`` objects (``net.<name>``), so the run's model state dict is
    the param store, and the checkpoint's ``optimizer`` entry is the Pyro optimizer's state.

    ``validate``: Pyro's runtime validation (support / shape / NaN checks at every site of every
    step) during training steps. Off by default -- it costs about a fifth of a small network's
    step and the plain loop has no equivalent; the tests run this model and guide with it on.
    """

    #: a run on several processes takes the plain engine (:mod:`bayessparse.engines`)
    distributes = False
    #: the Pyro optimizer schedules its own learning rate
    scheduler = None

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
        variational = dict(getattr(method, "variational", {}))
        keep = variational.pop("prior_keep", random_mask.keep if random_mask is not None else 1.0)
        self.model = SparseNetModel(self.net, self.num_data, self.cfg.weight_decay, keep_prob=keep, name="net",
                                    likelihood=likelihood_of(self.net))
        self.guide = SparseGuide(self.model, getattr(method, "masks", None), **variational)
        if random_mask is not None and [id(w) for w in random_mask.weights] != [
                id(self.guide.means[n]) for n in self.model.weight_names]:
            raise ValueError("the random mask's weights are not the guide's means, in order")
        if hasattr(method, "attach_guide"):
            method.attach_guide(self.guide, self.scope)
        self.svi = StructuredSVI(self.model, self.guide, self.optimizer, CancellingTrace_ELBO(), method)
        with self.scope():
            for n, p in self.net.named_parameters():  # the network's own tensors are the params
                pyro.param(self.model.param_name(n), p)
            cuda = [d for d in {p.device for p in self.net.parameters()} if d.type == "cuda"]
            with torch.random.fork_rng(devices=cuda), poutine.block():
                self.guide()  # creates the guide's own params (scales, keep logits), drawing nothing global
            store = pyro.get_param_store()
            # every parameter's SGD and LambdaLR now (no gradients: no step)
            self.optimizer([pyro.param(k).unconstrained() for k in store.keys()])
        return self

    def _own_params(self) -> list[str]:
        """Param-store names of the guide's own parameters (not tensors of the network): scales, keep logits."""
        network = {self.model.param_name(n) for n, _ in self.net.named_parameters()}
        with self.scope():
            return [k for k in pyro.get_param_store().keys() if k not in network]

    def own_params(self) -> dict[str, tuple[Tensor, Any]]:
        """The guide's own parameters: ``name -> (constrained value, constraint)`` (detached copies)."""
        with self.scope():
            store = pyro.get_param_store()
            return {k: (store[k].detach().clone(), store._constraints[k]) for k in self._own_params()}

    def state_dict(self) -> dict[str, Tensor]:
        """The guide's own parameters (unconstrained), by param-store name; the network's are the model's."""
        with self.scope():
            store = pyro.get_param_store()
            return {k: store._params[k].detach().clone() for k in self._own_params()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        own = self._own_params()
        if set(own) != set(state):
            raise ValueError(f"engine state names {sorted(state)} do not match the guide's parameters {sorted(own)}")
        with self.scope(), torch.no_grad():
            store = pyro.get_param_store()
            for k in own:
                store._params[k].copy_(state[k])

    def step(self, run: Any, x: Tensor, y: Tensor, total: int | None = None) -> float:
        """One SVI step on the mini-batch, the lr schedule, ``run.step``; returns the negative per-example ELBO
        (``total`` is for engines that distribute; this one runs in one process)."""
        with self.scope(), pyro.validation_enabled(self.validate):
            try:
                loss = self.svi.step(x, y, t=run.step)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc} at epoch {run.epoch + 1}, step {run.step}") from None
            self.optimizer.step()  # the learning-rate schedules
        run.step += 1
        return loss
