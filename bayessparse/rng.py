"""The process-wide random generators a run draws from: seed them, save them, restore them.

A run's randomness comes from its own ``torch.Generator`` (data order, masks) and from the global
generators of torch (CPU and CUDA), NumPy and Python (initialisation, dropout-like draws, libraries).
Checkpoints save the global ones with :func:`global_rng_state` -- tensors and plain values only, so that
they load with ``weights_only=True`` -- and a resumed run continues every stream where it stopped.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["global_rng_state", "numpy_rng_state", "preserved_random_state", "seed_everything",
           "set_global_rng_state", "set_numpy_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def numpy_rng_state() -> dict[str, Any]:
    """NumPy's global generator state as tensors and numbers, so that checkpoints load with ``weights_only=True``."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`numpy_rng_state`."""
    key = state["key"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], key, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def global_rng_state() -> dict[str, Any]:
    """The global generators' states: ``torch_rng``, ``cuda_rng`` (``None`` without CUDA), ``numpy_rng``, ``python_rng``."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": numpy_rng_state(),
        "python_rng": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`global_rng_state` (the CUDA states only where CUDA is available and they were saved)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    set_numpy_rng_state(state["numpy_rng"])
    random.setstate(state["python_rng"])


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore the global torch (CPU), numpy and python random states on exit."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
