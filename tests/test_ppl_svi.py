"""``--engine pyro``: the run-folder contract, exact resume, isolated param stores, the CLI."""

import copy
import json

import pyro
import pytest
import torch

import bayessparse.train as train_module
from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.errors import TrainingDiverged
from bayessparse.files import load_torch
from bayessparse.folders import LOCK, MARKER
from bayessparse.ppl.svi import ScheduledSGD, random_mask_draw
from bayessparse.train import build_run, train, train_step

DIGITS = {"data": "digits", "model": "cnn2d", "sparsity": 0.8, "batch_size": 32, "lr": 0.05, "update_interval": 10,
          "engine": "pyro"}


def _momenta(state):
    """``param-store name -> momentum buffer`` of a saved ScheduledSGD state."""
    buffers = state["optimizer"]["state"]
    return {name: buffers[i]["momentum_buffer"] for i, name in enumerate(state["names"]) if i in buffers}


def _batches(run, n, seed=1):
    x, y = run.data.train.tensors
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(len(y), (32,), generator=g)
        yield x[idx], y[idx]


def test_run_folder_contract_and_pyro_state_in_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(resolve(DIGITS, {"method": "cigl", "epochs": 2}), out, progress=False)
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "checkpoint.pt", "reliability.png", LOCK, MARKER}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "cigl" and saved["accuracy"] > 0.5 and len(saved["history"]) == 2
    assert saved["density"] == pytest.approx(0.2, abs=0.01)
    state = load_torch(out / "checkpoint.pt")
    assert state["scheduler"] is None and state["config"]["engine"] == "pyro"
    run = build_run(resolve(DIGITS, {"method": "cigl", "epochs": 2}))
    names = {f"net.{n}" for n, _ in run.model.named_parameters()}
    assert set(state["optimizer"]["names"]) == names  # the Pyro optimizer's state, by param-store name
    momenta = _momenta(state["optimizer"])
    assert momenta.keys() == names and momenta["net.classifier.weight"].abs().sum() > 0
    assert state["optimizer"]["scheduler"]["last_epoch"] > 0
    assert state["engine"] == {}  # CigL's guide has no parameters of its own (q(Z) = p(Z), point mass)
    assert "final_model" in state


def test_build_run_uses_a_pyro_optimizer_and_an_isolated_param_store():
    run = build_run(resolve(DIGITS, {"method": "rigl"}))
    assert isinstance(run.optimizer, ScheduledSGD) and isinstance(run.optimizer, pyro.optim.PyroOptim)
    assert run.scheduler is None and run.engine is not None
    assert len(pyro.get_param_store()) == 0  # the run's parameters live in its own scope
    with run.engine.scope():
        store = pyro.get_param_store()
        assert {store.param_name(p) for p in run.model.parameters()} == set(store.keys())
        for name, p in run.model.named_parameters():
            assert store[f"net.{name}"] is p  # the param store holds the network's own parameters


@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_two_runs_in_one_process_do_not_interfere(method):
    """Each run's parameters and optimizer live in its own param-store scope.

    CigL's Z is conditioned on the run's own RandomMask generator: the engine's own draw comes from
    torch's global random state, which two interleaved runs share.
    """
    cfg = resolve(DIGITS, {"method": method})

    def build(cfg):
        run = build_run(cfg)
        if method == "cigl":
            run.engine.svi.draw = random_mask_draw(run.method.random_mask, run.engine.model.weight_names)
        return run

    alone = build(cfg)
    for x, y in _batches(alone, 12):
        train_step(alone, x, y)
    a, b = build(cfg), build(cfg.replace(seed=5))
    for (xa, ya), (xb, yb) in zip(_batches(a, 12), _batches(b, 12, seed=2)):
        train_step(a, xa, ya)
        train_step(b, xb, yb)
    assert not torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    for key, value in alone.model.state_dict().items():
        assert torch.equal(value, a.model.state_dict()[key]), key
    assert len(pyro.get_param_store()) == 0


@pytest.mark.parametrize("method", ["rigl", "cigl", "vcigl"])
def test_resume_from_a_middle_checkpoint_is_exact(tmp_path, method, monkeypatch):
    cfg = resolve(DIGITS, {"method": method, "epochs": 3})
    saved = []
    real_save = train_module.save_torch
    monkeypatch.setattr(train_module, "save_torch", lambda path, obj: (saved.append(copy.deepcopy(obj)), real_save(path, obj)))
    full = train(cfg, tmp_path / "full", progress=False)
    middle = next(s for s in saved if s["epoch"] == 1)
    monkeypatch.setattr(train_module, "save_torch", real_save)
    (tmp_path / "resumed").mkdir()
    real_save(tmp_path / "resumed" / "checkpoint.pt", middle)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_torch(tmp_path / "full" / "checkpoint.pt"), load_torch(tmp_path / "resumed" / "checkpoint.pt")
    for key in a["final_model"]:
        assert torch.equal(a["final_model"][key], b["final_model"][key]), key
    momenta_a, momenta_b = _momenta(a["optimizer"]), _momenta(b["optimizer"])
    assert momenta_a.keys() == momenta_b.keys() and momenta_a
    for name, buffer in momenta_a.items():
        assert torch.equal(buffer, momenta_b[name]), name
    assert a["engine"].keys() == b["engine"].keys()
    for name, value in a["engine"].items():  # vcigl: the keep logits
        assert torch.equal(value, b["engine"][name]), name
    if method == "vcigl":
        assert a["engine"] and all(".keep_prob." in k for k in a["engine"])
    assert full["accuracy"] == resumed["accuracy"] and full["nll"] == resumed["nll"]


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_with_the_epoch_and_step(tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 40 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch \d+, step \d+"):
        train(resolve(DIGITS, {"method": "rigl", "epochs": 3}), tmp_path / "run", progress=False)
    good = load_torch(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_cli_train_with_the_pyro_engine_matches_the_plain_engine(tmp_path, capsys):
    """Without weight decay the two engines are bit-identical, so are their metrics (see test_ppl_equivalence).

    RigL: the step has no randomness of its own. (CigL's Z is drawn by Pyro from the global random
    state under the Pyro engine, by the method's generator under the plain one.)
    """
    flags = ["train", "--data", "digits", "--model", "mlp", "--method", "rigl", "--epochs", "2", "--lr", "0.05",
             "--set", "weight_decay=0", "--no-progress"]
    records = {}
    for engine in ("plain", "pyro"):
        out = tmp_path / engine
        assert main([*flags, "--engine", engine, "--out", str(out)]) == 0
        assert "rigl on digits: accuracy" in capsys.readouterr().out
        records[engine] = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "nll", "ece", "brier", "density"):
        assert records["plain"][key] == records["pyro"][key], key
    assert main(["train", "--engine", "stan", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--method", "vcigl", "--engine", "plain", "--out", str(tmp_path / "y")]) == 2


def test_cli_train_and_evaluate_vcigl(tmp_path, capsys):
    """``bayessparse train --method vcigl`` runs on the Pyro engine without being told, records the learned keep
    probabilities, and its saved run gives the Monte-Carlo predictive over the learned q(Z)."""
    out = tmp_path / "vcigl"
    flags = ["train", "--data", "digits", "--model", "mlp", "--method", "vcigl", "--epochs", "2", "--no-progress"]
    assert main([*flags, "--set", "keep_init=0.9", "--out", str(out)]) == 0
    assert "vcigl on digits: accuracy" in capsys.readouterr().out
    record = json.loads((out / "metrics.json").read_text())
    config = (out / "config.yaml").read_text()
    assert "engine: pyro" in config and "keep_prior: 0.98" in config
    keep = record["keep_probabilities"]
    assert set(keep) == {"features.1.weight", "features.3.weight", "classifier.weight"}
    # started at 0.9, pulled towards the prior's 0.99 (and by the data): every layer moved
    assert all(abs(p - 0.9) > 1e-3 for p in keep.values()), keep
    assert record["keep_probability"] == pytest.approx(sum(keep.values()) / len(keep))
    assert record["accuracy"] > 0.5
    assert main(["evaluate", str(out), "--samples", "4", "--no-progress"]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["mc_predictive"]["keep_probability"] == pytest.approx(record["keep_probability"], abs=1e-6)
