"""Engines: who takes a training step. A registry like the methods' (:mod:`bayessparse.methods`).

An engine is built from the run's config, its model, the number of training examples and the steps per
epoch, and offers

* ``optimizer`` and ``scheduler`` (``None`` when the engine schedules its own learning rate),
* ``bind(method)`` -- called once the method's masks exist (after ``method.setup``),
* ``step(run, x, y, total=None) -> float`` -- one optimizer step on a mini-batch, returning its loss,
* ``state_dict()`` / ``load_state_dict(state)`` -- what the run's checkpoint keeps under ``engine``,
* ``distributes`` -- whether a run on several processes can take its step.

The registered engines:

* ``plain`` -- :class:`~bayessparse.engines.plain.PlainEngine`, masked-dense SGD (the default);
* ``pyro`` -- :class:`~bayessparse.ppl.svi.PyroEngine`, one ``pyro.infer.SVI`` step on the ELBO whose
  maximisation the plain step is (same method hooks, same weights for the same seed);
* ``sparse-kernels`` -- :class:`~bayessparse.engines.sparse_kernels.SparseKernelEngine`, the plain step with
  the chosen linear layers on sparse kernels (``kernels: sparse`` or ``auto``).

The trainer asks :func:`build_engine` for its engine and imports none. Adding an engine is one module and one
entry in :data:`ENGINES` (and its name where :func:`engine_name` reads it from the config).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from torch import Tensor, nn

from bayessparse.engines.plain import PlainEngine
from bayessparse.engines.sparse_kernels import SparseKernelEngine
from bayessparse.errors import ConfigError
from bayessparse.optim import lr_factor

__all__ = ["ENGINES", "Engine", "build_engine", "check_distributed", "engine_name"]


class Engine(Protocol):
    optimizer: Any
    scheduler: Any
    distributes: bool

    def bind(self, method: Any) -> None: ...

    def step(self, run: Any, x: Tensor, y: Tensor, total: int | None = None) -> float: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


EngineFactory = Callable[[Any, nn.Module, int, int], Engine]


def _pyro(cfg: Any, model: nn.Module, num_data: int, steps_per_epoch: int) -> Engine:
    from bayessparse.ppl.svi import PyroEngine  # imports pyro only when asked for

    return PyroEngine(cfg, model, num_data, lr_factor(cfg, steps_per_epoch))


#: name -> factory ``(cfg, model, num_data, steps_per_epoch) -> engine``
ENGINES: dict[str, EngineFactory] = {
    "plain": PlainEngine,
    "pyro": _pyro,
    "sparse-kernels": SparseKernelEngine,
}


def engine_name(cfg: Any) -> str:
    """The engine a config asks for: ``cfg.engine``, or ``sparse-kernels`` for the plain engine with ``kernels``
    other than ``"dense"`` (another engine with them is a ConfigError)."""
    if cfg.kernels == "dense":
        return cfg.engine
    if cfg.engine != "plain":
        raise ConfigError(f"kernels={cfg.kernels!r} needs engine 'plain', not {cfg.engine!r}")
    return "sparse-kernels"


def build_engine(cfg: Any, model: nn.Module, num_data: int, steps_per_epoch: int) -> Engine:
    """The engine of ``cfg`` for ``model`` (bind it to the method once the method's masks exist)."""
    name = engine_name(cfg)
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r} (choose from: {', '.join(ENGINES)})")
    return ENGINES[name](cfg, model, num_data, steps_per_epoch)


def check_distributed(cfg: Any, engine: Engine, processes: int) -> None:
    """A run on several processes takes an engine that distributes (the plain one, dense kernels)."""
    if processes > 1 and not engine.distributes:
        wrong = {"the plain engine": f"engine {cfg.engine!r}"} if cfg.engine != "plain" else {}
        wrong.update({"kernels 'dense'": f"kernels {cfg.kernels!r}"} if cfg.kernels != "dense" else {})
        raise ConfigError(f"a run on {processes} processes takes {' and '.join(wrong)}, "
                          f"not {' and '.join(wrong.values())}")
