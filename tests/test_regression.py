"""Sparse networks on regression data: the Gaussian likelihood, the run folder, MC over Z, both engines."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import models
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.likelihoods import GaussianRegressor, gaussian_nll, negative_log_likelihood
from bayessparse.regressors import MC_SAMPLES, mc_predictions, network_predictions
from bayessparse.train import build_run, fit, load_finished, train
from bayessparse.uncertainty.regression import mixture_cdf
from bayessparse.uncertainty.reliability import INTERVAL_LEVELS, plot_interval_calibration

#: a regression run small enough for tests: two epochs of a thin MLP on diabetes (266 training examples)
SMALL = {"data": "diabetes", "model": "mlp", "width": 0.25, "epochs": 2, "batch_size": 32, "lr": 0.05,
         "weight_decay": 0.05, "update_interval": 5}


def test_the_gaussian_nll_is_the_normal_log_density():
    g = torch.Generator().manual_seed(0)
    mean, y, log_s = torch.randn(7, 1, generator=g), torch.randn(7, generator=g), torch.tensor(-0.3)
    expected = -torch.distributions.Normal(mean[:, 0], log_s.exp()).log_prob(y).mean()
    assert gaussian_nll(mean, y, log_s).item() == pytest.approx(expected.item(), rel=1e-6)
    net = GaussianRegressor(torch.nn.Linear(3, 1), noise_scale=0.5)
    assert negative_log_likelihood(net, mean, y).item() == pytest.approx(
        -torch.distributions.Normal(mean[:, 0], 0.5).log_prob(y).mean().item(), rel=1e-6)
    logits, labels = torch.randn(4, 3, generator=g), torch.tensor([0, 2, 1, 1])
    assert negative_log_likelihood(torch.nn.Linear(3, 3), logits, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item())
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        gaussian_nll(torch.randn(7, 2), y, log_s)
    with pytest.raises(ValueError, match="noise_scale"):
        GaussianRegressor(torch.nn.Linear(3, 1), noise_scale=0.0)


def test_the_noise_is_a_plain_parameter_next_to_the_prunable_weights():
    from bayessparse.sparsity.density import prunable_weights

    net = GaussianRegressor(models.build("mlp", 1, (10,), width=0.25))
    assert "log_noise" not in prunable_weights(net) and all(n.startswith("net.") for n in prunable_weights(net))
    run = build_run(resolve(SMALL, {"method": "rigl"}))
    decayed = [g for g in run.optimizer.param_groups if g["weight_decay"] > 0]
    assert all(p is not run.model.log_noise for g in decayed for p in g["params"])


@pytest.fixture(scope="module")
def cigl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("regression") / "cigl"
    metrics = train(resolve(SMALL, {"method": "cigl", "drop_rate": 0.2}), out, progress=False)
    return out, metrics


def test_a_regression_run_writes_the_contract_with_regression_metrics(cigl_run):
    out, metrics = cigl_run
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.json", "checkpoint.pt", "reliability.png"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "regression" and saved["data"] == "diabetes" and saved["method"] == "cigl"
    for key in ("rmse", "nll", "coverage_50", "coverage_90", "coverage_95", "noise_scale", "density", "parameters",
                "inference_ms_per_example", "train_seconds", "val_rmse", "val_nll"):
        assert math.isfinite(saved[key]), key
    assert not {"accuracy", "ece", "brier"} & set(saved)
    assert 0 <= saved["coverage_50"] <= saved["coverage_90"] <= saved["coverage_95"] <= 1
    assert saved["noise_scale"] < 1.0  # learned down from 1 (the targets are standardised)
    assert [set(h) for h in saved["history"]] == [{"epoch", "train_loss", "val_rmse", "val_nll"}] * 2
    assert saved["density"] == pytest.approx(0.1, abs=0.01)


def test_the_metrics_are_those_of_the_saved_model(cigl_run):
    out, metrics = cigl_run
    run, model = load_finished(out)
    predictions = network_predictions(model, run.data.test)
    scores = predictions.scores()
    assert {k: scores[k] for k in ("rmse", "nll", "coverage_90")} == {k: metrics[k] for k in ("rmse", "nll", "coverage_90")}
    mean = predictions.means[0]
    assert scores["rmse"] == pytest.approx(float((mean - predictions.targets).pow(2).mean().sqrt()))
    assert predictions.variances[0, 0].item() == pytest.approx(metrics["noise_scale"] ** 2, rel=1e-6)


def test_mc_over_the_random_mask_is_a_mixture_of_the_draws(cigl_run):
    out, metrics = cigl_run
    assert metrics["mc_samples"] == MC_SAMPLES
    run, model = load_finished(out)
    mc = mc_predictions(run, model, run.data.test, samples=MC_SAMPLES, seed=run.cfg.seed)
    assert mc.means.shape == (MC_SAMPLES, len(run.data.test))
    assert mc.scores()["nll"] == pytest.approx(metrics["mc_nll"], rel=1e-9)
    assert mc.means.std(0).mean() > 1e-3  # drop rate 0.2: the draws' means differ
    single = network_predictions(model, run.data.test)
    assert not torch.allclose(mc.means.mean(0), single.means[0])  # MC is not the averaged network
    # the mixture's NLL is the log-mean-exp over the draws of the Gaussian densities
    log_p = torch.distributions.Normal(mc.means, mc.variances.sqrt()).log_prob(mc.targets)
    expected = -(torch.logsumexp(log_p, 0) - math.log(MC_SAMPLES)).mean().item()
    assert mc.scores()["nll"] == pytest.approx(expected, rel=1e-9)


def test_a_run_without_random_mask_has_no_mc_scores(tmp_path):
    metrics = train(resolve(SMALL, {"method": "rigl"}), tmp_path / "rigl", progress=False)
    assert "mc_nll" not in metrics and math.isfinite(metrics["nll"])


def test_regression_training_learns_a_better_predictive_than_the_prior_guess():
    """Thirty epochs beat the constant predictive N(0, 1) of the standardised targets on held-out data."""
    cfg = resolve(SMALL, {"method": "rigl", "epochs": 30, "width": 1.0})
    run = build_run(cfg)
    model = fit(run, None, progress=False)
    scores = network_predictions(model, run.data.val).scores()
    y = torch.cat([t for _, t in torch.utils.data.DataLoader(run.data.val, batch_size=1000)]).double()
    baseline_nll = -torch.distributions.Normal(0.0, 1.0).log_prob(y).mean().item()
    assert scores["rmse"] < 0.85 * float(y.pow(2).mean().sqrt())
    assert scores["nll"] < baseline_nll - 0.1


def test_the_pyro_engine_trains_the_same_regression_network():
    """Without a random mask both engines take the same steps: the ELBO's Normal likelihood and prior are
    the plain loop's Gaussian NLL and weight decay."""
    runs = {}
    for engine in ("plain", "pyro"):
        run = build_run(resolve(SMALL, {"method": "rigl", "engine": engine}))
        fit(run, None, progress=False)
        runs[engine] = run
    plain, pyro_ = (dict(runs[e].model.named_parameters()) for e in ("plain", "pyro"))
    assert set(plain) == set(pyro_)
    for name in plain:
        assert torch.allclose(plain[name], pyro_[name], atol=1e-5), name
    assert runs["plain"].model.log_noise.item() != 0.0  # the noise moved, identically


def test_sparse_kernels_train_the_same_regression_network():
    runs = {}
    for kernels in ("dense", "sparse"):
        run = build_run(resolve(SMALL, {"method": "cigl", "width": 1.0, "kernels": kernels}))
        fit(run, None, progress=False)
        runs[kernels] = run
    for (name, a), b in zip(runs["dense"].model.named_parameters(), runs["sparse"].model.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_vcigl_learns_its_keep_probabilities_on_regression(tmp_path):
    metrics = train(resolve(SMALL, {"method": "vcigl"}), tmp_path / "vcigl", progress=False)
    assert metrics["task"] == "regression" and math.isfinite(metrics["mc_nll"])
    assert metrics["keep_probability"] != pytest.approx(0.99, abs=1e-7)  # learned, not the prior's


def test_a_resumed_regression_run_ends_bit_identical(tmp_path, monkeypatch):
    import bayessparse.train as T

    cfg = resolve(SMALL, {"method": "cigl", "drop_rate": 0.2, "epochs": 3})
    whole = train(cfg, tmp_path / "whole", progress=False)
    real, calls = T.train_epoch, []

    def interrupted(run, progress):
        calls.append(run.epoch)
        if len(calls) == 2:  # after epoch 1 and its checkpoint
            raise KeyboardInterrupt
        return real(run, progress)

    monkeypatch.setattr(T, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(T, "train_epoch", real)
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    for key in ("rmse", "nll", "coverage_90", "noise_scale", "mc_nll"):
        assert resumed[key] == whole[key], key


def test_the_train_command_prints_the_regression_scores(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bayessparse.cli", "train", "--data", "diabetes", "--model", "mlp", "--epochs", "1",
           "--method", "rigl", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "metrics.json").read_text())
    assert f"rmse {saved['rmse']:.4f}  nll {saved['nll']:.4f}  coverage_90 {saved['coverage_90']:.4f}" in done.stdout


def test_methods_and_workflows_that_need_classes_refuse_regression_data(tmp_path):
    with pytest.raises(ConfigError, match="predicts classes only"):
        build_run(resolve(SMALL, {"method": "cigl-pa"}))
    from bayessparse.workflows.ensembles import ensemble

    with pytest.raises(ConfigError, match="regression dataset"):
        ensemble(resolve(SMALL, {"method": "rigl"}), "dst", 2, tmp_path / "ens", progress=False)
    assert not (tmp_path / "ens").exists()


def test_evaluate_refuses_a_regression_run_in_one_line(cigl_run):
    out, _ = cigl_run
    before = sorted(p.name for p in out.iterdir())
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", "evaluate", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "regression dataset" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def _curve(fig: Figure) -> np.ndarray:
    ax = fig.axes[0]
    return next(line for line in ax.get_lines() if line.get_gid() != "diagonal").get_ydata()


def test_interval_calibration_plot_follows_the_diagonal_only_when_calibrated(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(20000, generator=g, dtype=torch.float64)
    mean = torch.zeros_like(y)
    calibrated = _curve(plot_interval_calibration({"right": mixture_cdf(mean, torch.ones_like(y), y)},
                                                  tmp_path / "a.png"))
    narrow = _curve(plot_interval_calibration({"narrow": mixture_cdf(mean, torch.full_like(y, 0.25), y)},
                                              tmp_path / "b.png"))
    levels = np.array(INTERVAL_LEVELS)
    assert np.abs(calibrated - levels).max() < 0.015
    # intervals half as wide as they should be: N(0, 1) targets inside ±z·0.5 cover 2Φ(z/2) − 1 < α
    from scipy.stats import norm

    expected = 2 * norm.cdf(norm.ppf(0.5 + levels / 2) / 2) - 1
    assert np.abs(narrow - expected).max() < 0.015 and (narrow < levels).all()
    assert (tmp_path / "a.png").stat().st_size > 1000
