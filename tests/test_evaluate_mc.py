"""``bayessparse evaluate RUN --samples S --arviz OUT.nc``: the Monte Carlo posterior predictive over Z."""

import json
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.workflows.evaluate import evaluate_run
from bayessparse.ppl.predictive import predictive_probs
from bayessparse.train import load_finished, train
from bayessparse.uncertainty.metrics import summary


@pytest.fixture(scope="module")
def cigl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cigl"
    train(resolve({"data": "digits", "model": "cnn2d", "method": "cigl", "sparsity": 0.8, "epochs": 2,
                   "drop_rate": 0.2, "update_interval": 10}), out, progress=False)
    return out


def test_samples_add_the_mc_predictive_next_to_the_averaged_model(cigl_run, tmp_path):
    nc = tmp_path / "idata.nc"
    record = evaluate_run(cigl_run, ood="noise", samples=24, arviz=nc, seed=3, loo_max=300)
    mc = record["mc_predictive"]
    run, model = load_finished(cigl_run)
    test_labels = run.data.test.tensors[1]
    probs = predictive_probs(run, model, run.data.test, 24, seed=3)
    expected = summary(probs, test_labels)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert mc[key] == pytest.approx(expected[key], rel=1e-6), key
    assert mc["keep_probability"] == pytest.approx(0.8)
    assert record["test"]["accuracy"] != mc["accuracy"] or record["test"]["nll"] != mc["nll"]
    assert set(mc["ood"]) == {"max_softmax", "entropy", "mutual_information"}
    assert 0.0 <= mc["ood"]["mutual_information"]["auroc"] <= 1.0

    # the test set is scored by its lppd = Σ_n log (1/S) Σ_s p(y_n | θ_s), by hand
    n_test = len(test_labels)
    by_hand = probs.double().mean(0)[torch.arange(n_test), test_labels].log()
    assert mc["lppd"] == {"data": "test", "n": n_test, "sum": pytest.approx(by_hand.sum().item(), rel=1e-9),
                          "mean": pytest.approx(by_hand.mean().item(), rel=1e-9)}
    assert mc["lppd"]["mean"] == pytest.approx(-mc["nll"], rel=1e-6)  # (nll: the float32 mean, floored)
    lat = mc["latents"]
    assert len(lat["layers"]) == len(lat["keep_fraction"]) == len(lat["keep_probability"]) == 4
    assert all(0.75 < k < 0.85 for k in lat["keep_fraction"]) and lat["keep_probability"] == pytest.approx([0.8] * 4)

    # LOO: on a seeded subsample of the training examples, with their labels
    loo = mc["loo"]
    x_train, y_train = run.data.train.tensors
    assert loo["data"] == "train" and loo["n"] == 300 and loo["n_train"] == len(y_train) and loo["subsample_seed"] == 3
    idx = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(3))[:300].sort().values
    idata = az.from_netcdf(nc)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y_train[idx].numpy())
    train_probs = predictive_probs(run, model, TensorDataset(x_train[idx], y_train[idx]), 24, seed=3)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0],
                               train_probs.double()[:, torch.arange(300), y_train[idx]].log().numpy(), rtol=1e-12)
    assert idata.log_likelihood["y"].shape == (1, 24, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = az.loo(idata, pointwise=True)
    assert loo["elpd"] == pytest.approx(float(direct["elpd_loo"])) and loo["se"] == pytest.approx(float(direct["se"]))
    assert loo["p_loo"] == pytest.approx(float(direct["p_loo"]))
    assert loo["elpd_mean"] == pytest.approx(loo["elpd"] / 300)
    assert loo["good_k"] == pytest.approx(1 - 1 / np.log10(24))
    k = direct["pareto_k"].values
    assert sum(loo["pareto_k"].values()) == 300
    assert loo["pareto_k"]["good"] == int((k <= loo["good_k"]).sum())
    assert loo["pareto_k"]["very_bad"] == int((k > 1).sum())
    # the posterior holds the latents of the same draws; the test set is in predictions
    keep = idata.posterior["keep_fraction"]
    assert keep.shape == (1, 24, 4) and ((keep >= 0) & (keep <= 1)).all()
    np.testing.assert_allclose(keep.mean("draw").values[0], lat["keep_fraction"], rtol=1e-12)
    np.testing.assert_allclose(idata.predictions["probs"].values[0], probs.double().numpy())
    np.testing.assert_array_equal(idata.predictions_constant_data["y_true"].values, test_labels.numpy())

    assert nc.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((cigl_run / "eval.json").read_text())["mc_predictive"]
    assert saved["samples"] == 24 and saved["loo"]["pareto_k"] == loo["pareto_k"]


def test_cli_prints_lppd_loo_on_training_data_and_pareto_counts(cigl_run, tmp_path, capsys):
    nc = tmp_path / "idata.nc"
    code = main(["evaluate", str(cigl_run), "--samples", "4", "--arviz", str(nc), "--ood", "none", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    mc = json.loads((cigl_run / "eval.json").read_text())["mc_predictive"]
    n_train = mc["loo"]["n_train"]
    assert mc["loo"]["n"] == n_train == 1079 and mc["loo"]["subsample_seed"] is None  # fewer than LOO_MAX: all
    lines = {line.split("  ")[1].strip() if line.startswith("  ") else line: line for line in out.splitlines()}
    assert f"{mc['lppd']['sum']:.2f} ({mc['lppd']['mean']:.4f} per example, 359 test examples)" in lines["test lppd"]
    assert f"elpd {mc['loo']['elpd']:.2f} ± {mc['loo']['se']:.2f}" in lines["PSIS-LOO on training data"]
    assert f"({n_train} of {n_train} train)" in lines["PSIS-LOO on training data"]
    # with S = 4 draws PSIS cannot fit a Pareto tail: every k is inf, and the report says why
    assert mc["loo"]["pareto_k"] == {"good": 0, "bad": 0, "very_bad": n_train}
    assert f"very bad (> 1) {n_train}; S < 21" in lines["Pareto k"]
    assert "E_q[Z] 0.8000" in lines["posterior: kept by Z"]


def test_arviz_without_samples_is_one_line_exit_2(cigl_run, tmp_path, capsys):
    before = sorted(p.name for p in cigl_run.iterdir())
    code = main(["evaluate", str(cigl_run), "--arviz", str(tmp_path / "x.nc"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--samples" in err
    assert sorted(p.name for p in cigl_run.iterdir()) == before and not (tmp_path / "x.nc").exists()
