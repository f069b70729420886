import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from bayessparse.config import resolve
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import load_torch
from bayessparse.folders import LOCK, MARKER
from bayessparse.optim import lr_factor
from bayessparse.tasks import Classification
from bayessparse.train import build_run, measured_density, train

FAST = {"data": "digits", "model": "mlp", "epochs": 3, "batch_size": 64, "lr": 0.05}


def test_weight_decay_only_on_conv_and_linear_weights():
    run = build_run(resolve({"data": "digits", "model": "cnn2d", "weight_decay": 1e-3}))
    decayed, plain = run.optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(run.model.parameters()))
    assert run.optimizer.defaults["nesterov"] is True


def test_lr_schedules():
    cosine = lr_factor(resolve({"epochs": 10, "warmup_epochs": 2}), steps_per_epoch=10)
    assert [cosine(t) for t in (0, 9, 19)] == pytest.approx([0.05, 0.5, 1.0])
    assert cosine(20) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert cosine(99) < 0.01
    step = lr_factor(resolve({"epochs": 10, "lr_schedule": "step", "step_milestones": [0.5, 0.8]}), 10)
    assert [step(t) for t in (0, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_run_folder_contract(tmp_path):
    out = tmp_path / "run"
    metrics = train(resolve(FAST), out, progress=False)
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "checkpoint.pt", "reliability.png", LOCK, MARKER}
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "nll", "ece", "brier", "density", "method", "sparsity", "seed", "epochs", "train_seconds"):
        assert key in saved
    assert saved == json.loads(json.dumps(metrics))
    assert saved["accuracy"] > 0.85  # digits with an MLP: an easy task
    assert saved["density"] == pytest.approx(1.0) and saved["sparsity"] == 0.0 and saved["method"] == "dense"
    assert len(saved["history"]) == 3
    assert resolve(yaml.safe_load((out / "config.yaml").read_text())) == resolve(FAST)
    checkpoint = load_torch(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 3 and "final_model" in checkpoint
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    runs = [train(resolve(FAST, {"epochs": 1, "seed": s}), tmp_path / f"r{i}", progress=False) for i, s in enumerate((0, 0, 1))]
    weights = [load_torch(tmp_path / f"r{i}" / "checkpoint.pt")["model"] for i in range(3)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert runs[0]["accuracy"] == runs[1]["accuracy"]


def test_existing_run_is_not_overwritten(tmp_path):
    train(resolve(FAST, {"epochs": 1}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(resolve(FAST, {"epochs": 1}), tmp_path / "run", progress=False)


def test_resume_rejects_a_different_config(tmp_path):
    train(resolve(FAST, {"epochs": 1}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="lr=0.2 differs"):
        train(resolve(FAST, {"epochs": 1, "lr": 0.2}), tmp_path / "run", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Classification.loss
    steps_per_epoch = 17  # digits: 1078 training examples / 64

    def poisoned(task, model, logits, target):
        calls["n"] += 1
        loss = real(task, model, logits, target)
        return loss * float("nan") if calls["n"] > steps_per_epoch + 3 else loss

    monkeypatch.setattr(Classification, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2"):
        train(resolve(FAST), out, progress=False)
    good = load_torch(out / "checkpoint.pt")
    assert good["epoch"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists()


def test_measured_density_counts_zero_weights():
    run = build_run(resolve({"data": "digits", "model": "mlp"}))
    weights = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        weights[0].view(-1)[: weights[0].numel() // 2] = 0
    total = sum(w.numel() for w in weights)
    assert measured_density(run.model) == pytest.approx(1 - (weights[0].numel() // 2) / total)


def _cli(*args):
    return [sys.executable, "-m", "bayessparse.cli", "train", *args, "--no-progress"]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    """A run killed with SIGKILL mid-training and resumed ends with the weights of an uninterrupted run."""
    flags = ["--data", "mnist1d", "--model", "cnn1d", "--epochs", "5", "--seed", "3", "--set", "lr_schedule=cosine"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*flags, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    epoch = 0
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoint.pt").exists():
            epoch = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
            if epoch >= 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"run finished before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists() and 2 <= epoch < 5

    resumed = subprocess.run(_cli("--out", str(killed), "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    done = subprocess.run(_cli(*flags, "--out", str(straight)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    a, b = load_torch(killed / "checkpoint.pt"), load_torch(straight / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 5
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads((killed / "metrics.json").read_text())["accuracy"] == json.loads((straight / "metrics.json").read_text())["accuracy"]


def test_load_finished_leaves_global_random_state_alone(tmp_path):
    import random

    import numpy as np

    from bayessparse.train import load_finished

    train(resolve(FAST, {"epochs": 1}), tmp_path / "run", progress=False)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    run, model = load_finished(tmp_path / "run")
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]
    assert not model.training


def test_result_files_get_ordinary_permissions(tmp_path):
    import os

    train(resolve(FAST, {"epochs": 1}), tmp_path / "run", progress=False)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("metrics.json", "config.yaml", "checkpoint.pt", "reliability.png"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
