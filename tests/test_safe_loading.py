"""Run folders are data, never code: checkpoints load with ``weights_only=True`` (issue: code execution).

A pickle can run any callable while it is loaded (``__reduce__``); ``torch.load(weights_only=False)`` would
run it. These tests plant such a payload -- it would create a marker file -- and check that loading refuses
the file with a one-line error and that the payload never ran.
"""

import json
import os

import numpy as np
import pytest
import torch

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.files import load_torch, save_torch
from bayessparse.rng import numpy_rng_state, set_numpy_rng_state
from bayessparse.train import train


class Payload:
    """Unpickling this calls ``os.makedirs(marker)``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "hook": Payload(marker)}, path)
    with pytest.raises(ConfigError, match="refusing to load"):
        load_torch(path)
    assert not marker.exists()
    # mutation check: the same file with an unsafe load does run the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_own_checkpoints_load_safely_and_keep_the_numpy_state(tmp_path):
    np.random.seed(123)
    state = numpy_rng_state()
    expected = np.random.rand(3)
    save_torch(tmp_path / "s.pt", {"numpy_rng": state, "w": torch.ones(2)})
    loaded = load_torch(tmp_path / "s.pt")
    set_numpy_rng_state(loaded["numpy_rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_evaluate_and_resume_refuse_a_poisoned_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train(resolve({"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1}), out, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # a genuine checkpoint loads safely
    marker = tmp_path / "pwned"
    state["hook"] = Payload(marker)
    torch.save(state, out / "checkpoint.pt")
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(out), "--no-progress"]) == 2
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("refusing to load" in line for line in err)
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "metrics.json").read_text())["method"] == "rigl"
