"""Shared test set-up: a per-session data cache, one intra-op thread, quiet plotting.

The test models are tiny: one thread is as fast as two on an idle machine and many times faster
on a busy one (OpenMP threads spin while they wait for a core).
"""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses some tests start


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Generated datasets (MNIST-1D) are cached once per test session, never in the user's cache."""
    if "BAYESSPARSE_CACHE" not in os.environ:
        os.environ["BAYESSPARSE_CACHE"] = str(tmp_path_factory.mktemp("bayessparse-cache"))
    yield


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished 90 %-sparse RigL run on digits (1 epoch); tests copy it before changing anything."""
    from bayessparse.config import resolve
    from bayessparse.train import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(resolve({"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1}), out, progress=False)
    return out
