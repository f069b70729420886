"""Tests of the deep GP baselines (bayessparse.baselines), the regression metrics and the diabetes set."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import torch
import yaml
from scipy import optimize, stats

import bayessparse.baselines.gp_training as gp_training
from bayessparse.baselines import DeepGPConfig, load_deep_gp, train_deep_gp
from bayessparse.baselines.deep_gp import build_model
from bayessparse.baselines.gp_predict import predict
from bayessparse.baselines.gp_training import build_gp_run, train_epoch
from bayessparse.baselines.kmeans import kmeans
from bayessparse.data import load
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import load_torch
from bayessparse.folders import LOCK, MARKER, check_kind, folder_kind
from bayessparse.uncertainty.metrics import summary
from bayessparse.uncertainty.regression import (
    gaussian_mixture_nll,
    interval_coverage,
    mixture_cdf,
    mixture_moments,
    regression_summary,
    rmse,
)

#: Tiny models: a few inducing points and samples, so that an epoch on digits takes a fraction of a second.
TINY = {"data": "digits", "num_inducing": 8, "hidden_dims": 3, "num_samples": 2, "likelihood_samples": 3,
        "num_quad_sites": 3, "eval_samples": 4, "epochs": 1, "batch_size": 128, "lr": 0.03}
CLASSIFICATION_KEYS = ("accuracy", "nll", "ece", "brier", "val_accuracy", "val_nll", "val_ece", "val_brier")
REGRESSION_KEYS = ("rmse", "nll", "coverage_50", "coverage_90", "coverage_95",
                   "val_rmse", "val_nll", "val_coverage_50", "val_coverage_90", "val_coverage_95")
COMMON_KEYS = ("method", "data", "model", "seed", "epochs", "train_seconds", "history",
               "inference_ms_per_example", "parameters")


def tiny(**changes) -> DeepGPConfig:
    return DeepGPConfig.from_dict({**TINY, **changes})


# ---------------------------------------------------------------------------- regression metrics


def test_single_gaussian_metrics_match_scipy():
    gen = torch.Generator().manual_seed(0)
    mean, sd, noise = torch.randn(3, 500, generator=gen, dtype=torch.float64)
    sd = 0.2 + sd.abs()
    y = mean + 1.3 * sd * noise
    assert gaussian_mixture_nll(mean, sd**2, y) == pytest.approx(-stats.norm.logpdf(y, mean, sd).mean(), rel=1e-12)
    for level, covered in interval_coverage(mean, sd**2, y, (0.5, 0.9, 0.95)).items():
        lo, hi = stats.norm.interval(level, loc=mean.numpy(), scale=sd.numpy())
        assert covered == pytest.approx(((y.numpy() >= lo) & (y.numpy() <= hi)).mean(), abs=1e-12)
    assert rmse(mean, y) == pytest.approx(math.sqrt(((mean - y) ** 2).mean().item()), rel=1e-12)
    assert mixture_cdf(mean, sd**2, y).numpy() == pytest.approx(stats.norm.cdf(y, mean, sd), abs=1e-12)


def test_two_component_mixture_metrics_match_scipy():
    gen = torch.Generator().manual_seed(1)
    means = torch.stack([torch.full((60,), -1.0), torch.linspace(0.5, 3.0, 60)]).double()
    sds = torch.stack([torch.full((60,), 0.5), torch.full((60,), 1.5)]).double()
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    y = 4 * torch.rand(60, generator=gen, dtype=torch.float64) - 2
    m, s, w, yn = means.numpy(), sds.numpy(), weights.numpy(), y.numpy()
    density = w[0] * stats.norm.pdf(yn, m[0], s[0]) + w[1] * stats.norm.pdf(yn, m[1], s[1])
    assert gaussian_mixture_nll(means, sds**2, y, weights.log()) == pytest.approx(-np.log(density).mean(), rel=1e-12)
    shifted = weights.log() + 5  # log weights are normalised
    assert gaussian_mixture_nll(means, sds**2, y, shifted) == pytest.approx(-np.log(density).mean(), rel=1e-12)
    uniform = 0.5 * (stats.norm.pdf(yn, m[0], s[0]) + stats.norm.pdf(yn, m[1], s[1]))
    assert gaussian_mixture_nll(means, sds**2, y) == pytest.approx(-np.log(uniform).mean(), rel=1e-12)

    def quantile(n: int, q: float) -> float:
        cdf = lambda t: w[0] * stats.norm.cdf(t, m[0, n], s[0, n]) + w[1] * stats.norm.cdf(t, m[1, n], s[1, n]) - q
        return optimize.brentq(cdf, -50, 50, xtol=1e-12)

    coverage = interval_coverage(means, sds**2, y, (0.5, 0.9, 0.95), weights.log())
    for level, covered in coverage.items():
        inside = [quantile(n, (1 - level) / 2) <= yn[n] <= quantile(n, (1 + level) / 2) for n in range(60)]
        assert covered == pytest.approx(np.mean(inside), abs=1e-12)
    mean, var = mixture_moments(means, sds**2, weights.log())
    second = (w[:, None] * (s**2 + m**2)).sum(0)
    assert mean.numpy() == pytest.approx((w[:, None] * m).sum(0), abs=1e-12)
    assert var.numpy() == pytest.approx(second - ((w[:, None] * m).sum(0)) ** 2, abs=1e-12)
    summary_ = regression_summary(means, sds**2, y, weights.log())
    assert set(summary_) == {"rmse", "nll", "coverage_50", "coverage_90", "coverage_95"}
    assert summary_["rmse"] == pytest.approx(rmse(mean, y))


def test_regression_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="positive"):
        gaussian_mixture_nll(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        gaussian_mixture_nll(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="levels"):
        interval_coverage(torch.zeros(3), torch.ones(3), torch.zeros(3), (1.5,))


# ---------------------------------------------------------------------------- k-means and the model


def test_kmeans_places_inducing_points_at_cluster_centres():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres[:, None, :] + 0.1 * torch.randn(3, 200, 2, generator=gen)).reshape(-1, 2)
    x = x[torch.randperm(len(x), generator=gen)]
    means = torch.stack([x[(x - c).norm(dim=1) < 2].mean(0) for c in centres])

    def by_position(points):
        return points[torch.argsort(points[:, 0] * 100 + points[:, 1])]

    found = kmeans(x, 3, torch.Generator().manual_seed(1))
    assert torch.allclose(by_position(found), by_position(means), atol=1e-5)
    assert torch.equal(found, kmeans(x, 3, torch.Generator().manual_seed(1)))  # seeded
    model = build_model("dgp", x, 2, "classification", hidden_dims=2, num_inducing=3, num_quad_sites=3,
                        generator=torch.Generator().manual_seed(1))
    inducing = model.hidden.variational_strategy.inducing_points.detach()
    assert inducing.shape == (2, 3, 2)
    assert torch.allclose(by_position(inducing[0]), by_position(means), atol=1e-5)
    assert torch.equal(inducing[0], inducing[1])


@pytest.mark.parametrize("method", ["dgp", "dspp"])
def test_training_lowers_the_predictive_nll_on_the_training_set(method):
    run = build_gp_run(tiny(method=method))
    subset = torch.utils.data.TensorDataset(*(t[:300] for t in run.data.train.tensors))

    def train_nll():
        out = predict(run.model, subset, samples=8, batch_size=300, seed=0)
        return summary(out["probs"], out["labels"])["nll"]

    before = train_nll()
    for _ in range(2):
        train_epoch(run)
        run.epoch += 1
    after = train_nll()
    assert after < before - 0.2, (before, after)


# ---------------------------------------------------------------------------- the run folder


def finite_numbers(record: dict) -> bool:
    return all(math.isfinite(v) for v in record.values() if isinstance(v, (int, float)) and not isinstance(v, bool))


@pytest.mark.parametrize("method", ["dgp", "dspp"])
def test_classification_run_folder_contract(tmp_path, method):
    out = tmp_path / "run"
    metrics = train_deep_gp(tiny(method=method, epochs=2), out, progress=False)
    assert {p.name for p in out.iterdir()} == {"config.yaml", "checkpoint.pt", "metrics.json", "reliability.png",
                                               LOCK, MARKER}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in (*CLASSIFICATION_KEYS, *COMMON_KEYS):
        assert key in saved, key
    assert finite_numbers(saved) and 0 <= saved["ece"] <= 1 and saved["parameters"] > 0
    assert saved["method"] == method and saved["data"] == "digits" and saved["epochs"] == 2
    assert [h["epoch"] for h in saved["history"]] == [1, 2] and all(finite_numbers(h) for h in saved["history"])
    assert DeepGPConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())) == tiny(method=method, epochs=2)
    assert folder_kind(out) == "deep-gp"
    with pytest.raises(ConfigError, match="holds a deep GP baseline run"):
        check_kind(out, "run")
    predictor = load_deep_gp(out)
    probs = predictor(load("digits").test)
    assert probs.shape == (359, 10)
    expected = {k: saved[k] for k in CLASSIFICATION_KEYS[:4]}
    assert summary(probs, load("digits").test.tensors[1]) == pytest.approx(expected)


def test_an_existing_run_is_kept_and_a_changed_config_refused(tmp_path):
    out = tmp_path / "run"
    train_deep_gp(tiny(), out, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_deep_gp(tiny(), out, progress=False)
    with pytest.raises(ConfigError, match="lr=0.05 differs"):
        train_deep_gp(tiny(lr=0.05), out, resume=True, progress=False)


def _same(a, b, path="checkpoint") -> None:
    """Recursive equality of two checkpoints, tensors bit for bit (wall-clock times excepted)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key not in ("train_seconds",):
                _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("method", ["dgp", "dspp"])
def test_resume_after_an_interrupted_epoch_is_bit_identical(tmp_path, monkeypatch, method):
    cfg = tiny(method=method, epochs=2)
    straight = train_deep_gp(cfg, tmp_path / "straight", progress=False)
    real, calls = gp_training.train_step, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 9 + 4:  # digits: 9 steps per epoch; stop in the middle of epoch 2
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(gp_training, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_deep_gp(cfg, tmp_path / "resumed", progress=False)
    assert load_torch(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(gp_training, "train_step", real)
    torch.manual_seed(123)  # the resumed run restores every random state it needs
    resumed = train_deep_gp(cfg, tmp_path / "resumed", resume=True, progress=False)
    _same(load_torch(tmp_path / "resumed" / "checkpoint.pt"), load_torch(tmp_path / "straight" / "checkpoint.pt"))
    timings = ("train_seconds", "inference_ms_per_example")
    assert {k: v for k, v in resumed.items() if k not in timings} == \
        {k: v for k, v in straight.items() if k not in timings}


def test_load_deep_gp_is_deterministic_and_leaves_global_rng_alone(tmp_path):
    train_deep_gp(tiny(), tmp_path / "run", progress=False)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    predictor = load_deep_gp(tmp_path / "run")
    first, second = predictor(load("digits").val), predictor(load("digits").val)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first, second)
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


def test_an_unfinished_run_does_not_load(tmp_path, monkeypatch):
    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gp_training, "evaluate", stop)
    with pytest.raises(KeyboardInterrupt):
        train_deep_gp(tiny(), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="has not finished"):
        load_deep_gp(tmp_path / "run")


def test_a_diverged_kernel_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from linear_operator.utils.errors import NotPSDError

    from bayessparse.baselines.deep_gp import TwoLayerDGP
    from bayessparse.errors import TrainingDiverged

    real, calls = TwoLayerDGP.forward, {"n": 0}

    def breaks(self, x):
        calls["n"] += self.training
        if calls["n"] > 9 + 2:  # digits: 9 steps per epoch
            raise NotPSDError("not positive definite")
        return real(self, x)

    monkeypatch.setattr(TwoLayerDGP, "forward", breaks)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 11"):
        train_deep_gp(tiny(epochs=2), tmp_path / "run", progress=False)
    assert load_torch(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("method", ["dgp", "dspp"])
@pytest.mark.parametrize("batch_size", [64, 1000])  # several steps per epoch; one step, the last of its epoch
def test_a_huge_learning_rate_is_a_one_line_divergence(tmp_path, method, batch_size):
    cfg = tiny(method=method, data="diabetes", lr=1e30, batch_size=batch_size, epochs=2)
    with pytest.raises(TrainingDiverged) as err:
        train_deep_gp(cfg, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "\n" not in message and re.search(r" at epoch 1, step 1; nothing was saved$", message), message
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("method,parameter", [
    ("dgp", "hidden.covar_module.raw_outputscale"),  # the next step's kernel matrix is NaN
    ("dspp", "output.variational_strategy.inducing_points"),
    ("dgp", "likelihood.mixing_weights"),  # the softmax likelihood's logits are NaN
    ("dspp", "hidden.mean_module.weights"),  # the layer's Gaussian has a NaN mean
])
def test_a_non_finite_parameter_mid_epoch_names_itself_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, method,
                                                                                  parameter):
    real = gp_training.train_step

    def poisoned(run, *args):
        value = real(run, *args)
        if run.step == 9 + 3:  # digits: 9 steps per epoch
            with torch.no_grad():
                dict(run.model.named_parameters())[parameter].fill_(math.nan)
        return value

    monkeypatch.setattr(gp_training, "train_step", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        train_deep_gp(tiny(method=method, epochs=3), tmp_path / "run", progress=False)
    assert str(err.value) == f"{parameter} became non-finite at epoch 2, step 12; the checkpoint of epoch 1 is kept"
    assert load_torch(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_parameter_left_non_finite_by_the_last_step_of_an_epoch_is_caught_before_validation(tmp_path, monkeypatch):
    real = gp_training.train_step

    def poisoned(run, *args):
        value = real(run, *args)
        if run.step == 2 * 9:  # the last step of epoch 2
            with torch.no_grad():
                run.model.likelihood.mixing_weights.fill_(math.inf)
        return value

    monkeypatch.setattr(gp_training, "train_step", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        train_deep_gp(tiny(epochs=3), tmp_path / "run", progress=False)
    assert str(err.value) == ("likelihood.mixing_weights became non-finite at epoch 2, step 18; "
                              "the checkpoint of epoch 1 is kept")


@pytest.mark.parametrize("data,key", [("digits", "probs"), ("diabetes", "variances")])
def test_a_non_finite_predictive_is_a_divergence(tmp_path, monkeypatch, data, key):
    real, calls = gp_training.predict, {"n": 0}

    def non_finite(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the validation pass after epoch 2
            out[key].view(-1)[0] = math.inf
        return out

    monkeypatch.setattr(gp_training, "predict", non_finite)
    with pytest.raises(TrainingDiverged) as err:  # one step per epoch
        train_deep_gp(tiny(data=data, epochs=2, batch_size=5000), tmp_path / "run", progress=False)
    assert str(err.value) == ("the deep GP's predictive became non-finite at epoch 2, step 2; "
                              "the checkpoint of epoch 1 is kept")
    assert load_torch(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_the_checks_that_need_the_data_are_one_function():
    from bayessparse.baselines import check_deep_gp_data

    assert len(check_deep_gp_data(DeepGPConfig(data="diabetes", num_inducing=266)).train) == 266
    with pytest.raises(ConfigError) as err:
        check_deep_gp_data(DeepGPConfig(data="diabetes", num_inducing=267))
    assert str(err.value) == "num_inducing must be <= the 266 training examples of diabetes, got 267"


# ---------------------------------------------------------------------------- regression


@pytest.mark.parametrize("method", ["dgp", "dspp"])
def test_regression_on_diabetes(tmp_path, method):
    out = tmp_path / "run"
    metrics = train_deep_gp(tiny(method=method, data="diabetes", epochs=3, batch_size=64), out, progress=False)
    for key in (*REGRESSION_KEYS, *COMMON_KEYS):
        assert key in metrics, key
    assert not any(key in metrics for key in ("accuracy", "ece", "brier"))
    assert finite_numbers(metrics) and metrics["rmse"] > 0
    assert all(0 <= metrics[f"{split}coverage_{p}"] <= 1 for split in ("", "val_") for p in (50, 90, 95))
    assert metrics["coverage_50"] <= metrics["coverage_90"] <= metrics["coverage_95"]
    assert not (out / "reliability.png").exists()
    mean, variance = load_deep_gp(out)(load("diabetes").test)
    assert mean.shape == variance.shape == (88,) and (variance > 0).all()
    assert rmse(mean.double(), load("diabetes").test.tensors[1].double()) == pytest.approx(metrics["rmse"], rel=1e-5)


def test_diabetes_bundle_is_a_standardised_regression_set():
    bundle = load("diabetes")
    assert bundle.task == "regression" and bundle.num_classes == 1 and bundle.input_shape == (10,)
    (x, y), yv, yt = bundle.train.tensors, bundle.val.tensors[1], bundle.test.tensors[1]
    assert (len(y), len(yv), len(yt)) == (266, 88, 88)
    assert y.dtype == torch.float32 and y.shape == (266,) and x.dtype == torch.float32
    assert x.mean(0).abs().max() < 1e-5 and (x.std(0, unbiased=False) - 1).abs().max() < 1e-5
    assert abs(y.mean()) < 1e-5 and abs(y.std(unbiased=False) - 1) < 1e-5
    assert torch.equal(load("diabetes").train.tensors[1], y)
    assert not torch.equal(load("diabetes", data_seed=1).train.tensors[1], y)
    assert load("digits").task == "classification"
    with pytest.raises(ConfigError, match="label_noise"):
        load("diabetes", label_noise=0.1)
    with pytest.raises(ConfigError, match="n_samples"):
        load("diabetes", n_samples=100)


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("field,value,needle", [
    ("method", "gp", "method must be 'dgp' or 'dspp'"),
    ("data", "imagenet", "data must be one of"),
    ("epochs", 0, "epochs must be >= 1"),
    ("epochs", 1.5, "epochs must be an int"),
    ("batch_size", True, "batch_size must be an int"),
    ("num_inducing", 0, "num_inducing must be >= 1"),
    ("hidden_dims", "3", "hidden_dims must be an int"),
    ("num_samples", -2, "num_samples must be >= 1"),
    ("likelihood_samples", 0, "likelihood_samples must be >= 1"),
    ("num_quad_sites", 0, "num_quad_sites must be >= 1"),
    ("eval_samples", 0, "eval_samples must be >= 1"),
    ("lr", 0.0, "lr must be > 0"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("lr", 1e39, "lr must be a finite number"),
    ("beta", -1.0, "beta must be > 0"),
    ("seed", -1, "seed must be in"),
    ("data_seed", 2**32, "data_seed must be in"),
    ("ece_bins", 0, "ece_bins must be in"),
])
def test_bad_config_fields_are_one_line_errors(field, value, needle):
    with pytest.raises(ConfigError) as err:
        DeepGPConfig(**{field: value})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_config_from_mapping(tmp_path):
    assert DeepGPConfig.from_dict({"epochs": "5", "lr": "0.1"}) == DeepGPConfig(epochs=5, lr=0.1)
    assert DeepGPConfig(lr=1).lr == 1.0 and isinstance(DeepGPConfig(lr=1).lr, float)
    with pytest.raises(ConfigError, match="unknown deep GP config field 'sparsity'"):
        DeepGPConfig.from_dict({"sparsity": 0.9})
    with pytest.raises(ConfigError, match="epochs"):
        DeepGPConfig.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match="DeepGPConfig"):
        train_deep_gp({"epochs": 1}, tmp_path / "x")
    with pytest.raises(ConfigError, match="num_inducing must be <= the 266 training examples"):
        train_deep_gp(DeepGPConfig(data="diabetes", num_inducing=300), tmp_path / "big")
    assert not (tmp_path / "big").exists() and not (tmp_path / "x").exists()


def test_the_deep_gp_follows_the_networks_generated_data_size(tmp_path):
    """n_samples sizes a generated set for the deep GP as for the networks (compare and the study pass
    theirs), and a set that is not generated refuses it."""
    from bayessparse.baselines.gp_training import check_deep_gp_data

    cfg = DeepGPConfig(method="dgp", data="mnist1d", n_samples=400, num_inducing=20)
    data = check_deep_gp_data(cfg)
    assert len(data.train) + len(data.val) + len(data.test) == 400
    with pytest.raises(ConfigError, match="n_samples"):
        check_deep_gp_data(DeepGPConfig(method="dgp", data="diabetes", n_samples=100, num_inducing=20))
    with pytest.raises(ConfigError, match="n_samples must be > 0"):
        DeepGPConfig(n_samples=0)
