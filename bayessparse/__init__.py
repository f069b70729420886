"""bayessparse: calibrated dynamic sparse training, framed as Bayesian inference on Pyro.

``bayessparse.sparsify(model, optimizer, method, sparsity=..., total_steps=...)`` attaches a method to
your own model, optimizer and loop (:mod:`bayessparse.sparsifier`, docs/custom_loop.md); the command
line is ``bayessparse`` (:mod:`bayessparse.cli`).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Sparsifier", "sparsify"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``import bayessparse`` (and the command line's start) stays light
    if name in __all__:
        from bayessparse import sparsifier

        return getattr(sparsifier, name)
    raise AttributeError(f"module 'bayessparse' has no attribute {name!r}")
