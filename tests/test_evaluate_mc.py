"""``bayessparse evaluate RUN --samples S --arviz OUT.nc``: the Monte Carlo posterior predictive over Z."""

import json

import arviz as az
import pytest

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.evaluate import evaluate_run
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
    record = evaluate_run(cigl_run, ood="noise", samples=4, arviz=nc, seed=3)
    mc = record["mc_predictive"]
    run, model = load_finished(cigl_run)
    probs = predictive_probs(run, model, run.data.test, 4, seed=3)
    expected = summary(probs, run.data.test.tensors[1])
    for key in ("accuracy", "nll", "ece", "brier"):
        assert mc[key] == pytest.approx(expected[key], rel=1e-6), key
    assert mc["keep_probability"] == pytest.approx(0.8)
    assert record["test"]["accuracy"] != mc["accuracy"] or record["test"]["nll"] != mc["nll"]
    assert set(mc["ood"]) == {"max_softmax", "entropy", "mutual_information"}
    assert 0.0 <= mc["ood"]["mutual_information"]["auroc"] <= 1.0

    idata = az.from_netcdf(nc)
    n = len(run.data.test)
    assert idata.log_likelihood["y"].shape == (1, 4, n)
    assert idata.posterior_predictive["y"].shape == (1, 4, n)
    assert idata.observed_data["y"].shape == (n,)
    assert mc["loo"]["elpd"] == pytest.approx(float(az.loo(idata)["elpd_loo"]))
    assert nc.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((cigl_run / "eval.json").read_text())["mc_predictive"]["samples"] == 4


def test_arviz_without_samples_is_one_line_exit_2(cigl_run, tmp_path, capsys):
    before = sorted(p.name for p in cigl_run.iterdir())
    code = main(["evaluate", str(cigl_run), "--arviz", str(tmp_path / "x.nc"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--samples" in err
    assert sorted(p.name for p in cigl_run.iterdir()) == before and not (tmp_path / "x.nc").exists()
