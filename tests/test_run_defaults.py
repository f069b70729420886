"""What a run does when the user leaves things out: the dataset's own model, a sparsity without a
sparse method, toy sizes under BAYESSPARSE_SMOKE, and a regression head that diverges on the last step."""

import subprocess
import sys

import pytest
import torch

import models
from bayessparse import data as datasets
from bayessparse import smoke
from bayessparse.config import DEFAULT_MODELS, resolve
from bayessparse.errors import TrainingDiverged
from bayessparse.train import build_run, fit, validation_scores

SMALL_REGRESSION = {"data": "diabetes", "model": "mlp", "width": 0.25, "epochs": 2, "batch_size": 32, "lr": 0.05,
                    "weight_decay": 0.05}


@pytest.mark.parametrize("name", ["mnist1d", "digits", "breast_cancer", "wine", "diabetes", "synthetic", "uci-yacht"])
def test_every_dataset_trains_its_own_model_when_none_is_named(name):
    cfg = resolve({"data": name})
    assert cfg.model == DEFAULT_MODELS[name]
    bundle = datasets.load(name)
    outputs = 1 if bundle.task == "regression" else bundle.num_classes
    net = models.build(cfg.model, outputs, bundle.input_shape)  # the natural model takes the data's shape
    assert net(bundle.train[:2][0]).shape == (2, outputs)


def test_a_named_model_wins_and_every_registered_dataset_has_a_default():
    assert resolve({"data": "digits", "model": "mlp"}).model == "mlp"
    assert resolve({}).model == "cnn1d"
    assert set(DEFAULT_MODELS) == set(datasets.DATASETS)
    assert set(DEFAULT_MODELS.values()) <= set(models.MODELS)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bayessparse", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("flags", [["--sparsity", "0.95"], ["--set", "sparsity=0.95"]])
def test_a_sparsity_without_a_sparse_method_is_refused(tmp_path, flags):
    out = tmp_path / "run"
    result = _cli("train", *flags, "--out", str(out), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "needs a sparse method" in result.stderr
    assert not out.exists()


def test_a_resolved_config_file_of_a_dense_run_still_trains(tmp_path):
    """A run's own config.yaml lists every field, the sparsity too: handed back with --config it trains."""
    (tmp_path / "c.yaml").write_text("data: digits\nmodel: mlp\nmethod: dense\nsparsity: 0.9\nepochs: 1\n")
    result = _cli("train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def test_smoke_mode_shrinks_epochs_data_and_seeds_only(monkeypatch):
    monkeypatch.setenv(smoke.ENV, "1")
    cfg = resolve({"method": "cigl", "epochs": 50, "warmup_epochs": 5, "sparsity": 0.95, "lr": 0.2})
    assert (cfg.epochs, cfg.warmup_epochs, cfg.n_samples) == (smoke.EPOCHS, smoke.EPOCHS - 1, smoke.SAMPLES)
    assert (cfg.method, cfg.sparsity, cfg.lr, cfg.model) == ("cigl", 0.95, 0.2, "cnn1d")
    assert resolve({"data": "digits"}).n_samples is None  # sets that are not generated keep their size
    assert resolve(cfg.to_dict()) == cfg  # a resumed run resolves to the same config
    assert smoke.shrink_seeds([4, 5, 6]) == [4, 5]
    monkeypatch.setenv(smoke.ENV, "0")
    assert resolve({"epochs": 50}).epochs == 50 and smoke.shrink_seeds([4, 5, 6]) == [4, 5, 6]


def test_a_noise_scale_that_overflows_is_a_divergence_not_a_traceback(monkeypatch):
    """log s stays finite (check_finite passes) while s² overflows float32: the validation pass of the
    last epoch must report a divergence, not fail inside the metrics."""
    import bayessparse.train as training

    run = build_run(resolve(SMALL_REGRESSION, {"method": "dense"}))
    original = training.train_epoch

    def last_epoch_blows_up(run, progress):
        loss = original(run, progress)
        if run.epoch == run.cfg.epochs - 1:
            with torch.no_grad():
                run.model.log_noise.fill_(100.0)  # exp(100) is inf in float32
        return loss

    monkeypatch.setattr(training, "train_epoch", last_epoch_blows_up)
    with pytest.raises(TrainingDiverged, match="noise scale became non-finite"):
        fit(run, progress=False)
    with torch.no_grad():
        run.model.log_noise.fill_(-200.0)  # s² underflows to 0
    with pytest.raises(TrainingDiverged, match="noise scale"):
        validation_scores(run, run.model)


def test_a_checkpoint_of_another_training_version_is_not_continued(tmp_path):
    """Resuming would mix two trainings: refused in one line; a checkpoint without a recorded version (written
    before versions were recorded) is continued as before, and the study sees the interrupted cell as stale."""
    from bayessparse.config import resolve
    from bayessparse.errors import ConfigError
    from bayessparse.files import load_torch, save_torch
    from bayessparse.workflows.study.cells import Cell
    from bayessparse.workflows.study.stale import recorded_versions
    from bayessparse.train import train
    from bayessparse.version import TRAINING_VERSION

    cfg = resolve({"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1, "width": 0.25})
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    (out / "metrics.json").unlink()  # as if interrupted after its last checkpoint
    state = load_torch(out / "checkpoint.pt")
    assert state["training_version"] == TRAINING_VERSION
    save_torch(out / "checkpoint.pt", {**state, "training_version": TRAINING_VERSION + 1})
    assert recorded_versions(Cell(cfg.to_dict(), str(out))) == [TRAINING_VERSION + 1]
    with pytest.raises(ConfigError, match="training version"):
        train(cfg, out, resume=True, progress=False)
    del state["training_version"]
    save_torch(out / "checkpoint.pt", state)
    assert recorded_versions(Cell(cfg.to_dict(), str(out))) == []
    assert train(cfg, out, resume=True, progress=False)["training_version"] == TRAINING_VERSION
