"""End-to-end: train a tiny digits run, evaluate it (temperature, OOD, corruptions), and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import arviz as az
import matplotlib.image
import numpy as np
import pytest
import torch

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.data.corruptions import CORRUPTIONS, SEVERITIES
from bayessparse.errors import ConfigError
from bayessparse.workflows.evaluate import EVAL, calibration_summary, evaluate_run, format_summary, pareto_k_counts
from bayessparse.predict import predict_probs
from bayessparse.train import load_finished, train
from bayessparse.uncertainty.ood import ood_metrics

PNGS = ("reliability_temperature.png", "ood_scores.png", "corruptions.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch digits MLP run (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    train(resolve({"data": "digits", "model": "mlp", "epochs": 2}), out, progress=False)
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    dst = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained, dst)
    return dst, evaluate_run(dst, corruptions=True)


def check_png(path, min_width=400):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_width and img.std() > 0.05  # a real, non-blank picture


def test_eval_json_fields_and_numbers(evaluated):
    run_dir, record = evaluated
    assert json.loads((run_dir / EVAL).read_text()) == json.loads(json.dumps(record))
    assert record["data"] == "digits" and record["method"] == "dense" and record["n_test"] == 359
    test = record["test"]
    assert set(test) == {"accuracy", "nll", "ece", "adaptive_ece", "classwise_ece", "mce", "brier"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "nll", "ece", "brier"):  # the same model on the same split as training reported
        assert test[key] == pytest.approx(metrics[key], abs=1e-9)
    assert 0.8 < test["accuracy"] <= 1.0 and 0 <= test["classwise_ece"] <= test["mce"] <= 1
    assert record["files"] == list(PNGS)
    for name in PNGS:
        check_png(run_dir / name)


def test_temperature_block(evaluated):
    _, record = evaluated
    ts = record["temperature_scaled"]
    assert ts["accuracy"] == record["test"]["accuracy"]  # temperature never changes the argmax
    assert ts["val_nll_scaled"] <= ts["val_nll"]
    assert 0.05 <= ts["temperature"] <= 20 and ts["temperature"] != 1.0
    assert ts["nll"] < record["test"]["nll"]  # on this run the validation fit also helps the test NLL


def test_ood_block_matches_direct_computation(evaluated, trained):
    run_dir, record = evaluated
    ood = record["ood"]
    assert ood["set"] == "noise" and ood["n_in"] == ood["n_out"] == 359
    assert set(ood["scores"]) == {"max_softmax", "entropy"}  # no mutual information for a single model
    for m in ood["scores"].values():
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["aupr"] <= 1.0 and 0.0 <= m["fpr95"] <= 1.0
    assert ood["scores"]["entropy"]["auroc"] > 0.7  # noise images are detectable
    from bayessparse.data.ood import make_ood

    run, model = load_finished(trained)
    p_in, _ = predict_probs(model, run.data.test)
    p_out, _ = predict_probs(model, make_ood("noise", run.data.test, "image", seed=0))
    direct = ood_metrics(p_in, p_out)
    for score, values in direct.items():
        for key, value in values.items():
            assert ood["scores"][score][key] == pytest.approx(value, abs=1e-12)
    assert set(ood["scores_temperature_scaled"]) == {"max_softmax", "entropy"}


def test_corruption_block(evaluated):
    _, record = evaluated
    c = record["corruptions"]
    assert c["source"] == "generated" and c["kind"] == "image"
    assert list(c["results"]) == list(CORRUPTIONS["image"])
    for rows in c["results"].values():
        assert [r["severity"] for r in rows] == list(SEVERITIES)
        assert all(0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 for r in rows)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert c["clean"][key] == pytest.approx(record["test"][key])
    mean = c["mean"]
    assert [m["severity"] for m in mean] == list(SEVERITIES)
    assert mean[0]["accuracy"] == pytest.approx(np.mean([rows[0]["accuracy"] for rows in c["results"].values()]))
    assert mean[-1]["accuracy"] < mean[0]["accuracy"] - 0.05  # severity 5 hurts more than severity 1
    assert mean[-1]["ece"] > c["clean"]["ece"]


def test_sample_probs_hook_gives_mutual_information(run_dir):
    run, model = load_finished(run_dir)
    scales = (0.5, 1.0, 2.0)

    def sample_probs(dataset):  # three "posterior samples": the model at different temperatures
        p = [predict_probs(model, dataset)[0].log().mul(s).softmax(-1) for s in scales]
        return torch.stack(p)

    record = evaluate_run(run_dir, ood="shuffled", temperature=True, n_bins=10, sample_probs=sample_probs)
    assert record["predictive"] == "3 samples" and record["n_bins"] == 10
    assert record["ood"]["set"] == "shuffled"
    assert set(record["ood"]["scores"]) == {"max_softmax", "entropy", "mutual_information"}
    probs = sample_probs(run.data.test)
    labels = run.data.test.tensors[1]
    expected = calibration_summary(probs, labels, 10)
    for key, value in expected.items():  # the evaluator works in float64, the reference in float32
        assert record["test"][key] == pytest.approx(value, abs=1e-6)
    assert record["corruptions"] is None and record["files"] == ["reliability_temperature.png", "ood_scores.png"]


def test_without_ood_and_temperature(run_dir):
    record = evaluate_run(run_dir, ood="none", temperature=False)
    assert record["ood"] is None and record["corruptions"] is None and "temperature_scaled" not in record
    assert record["files"] == [] and (run_dir / EVAL).is_file()
    assert not any((run_dir / name).exists() for name in PNGS)


def test_without_samples_there_is_no_mc_block_and_bad_loo_max_is_refused(evaluated, run_dir):
    _, record = evaluated
    assert "mc_predictive" not in record
    assert "lppd" not in format_summary(record) and "PSIS-LOO" not in format_summary(record)
    with pytest.raises(ConfigError, match="loo_max"):
        evaluate_run(run_dir, samples=2, loo_max=0)


def test_pareto_k_counts_use_arviz_bins():
    counts = pareto_k_counts(np.array([-0.2, 0.3, 0.69, 0.71, 1.0, 1.5, np.inf, np.nan]), good_k=0.7)
    assert counts == {"good": 3, "bad": 2, "very_bad": 3}
    # the same counts as ArviZ's own table (print(az.loo(...)))
    rng = np.random.default_rng(0)
    log_lik = rng.standard_t(2, size=(1, 40, 200)) - 2.0
    idata = az.from_dict(posterior={"a": rng.normal(size=(1, 40))}, log_likelihood={"y": log_lik})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata, pointwise=True)
    table = dict(re.findall(r"\((good|bad|very bad)\)\s+(\d+)", str(loo)))
    ours = pareto_k_counts(loo.pareto_k, loo.good_k)
    assert ours == {"good": int(table["good"]), "bad": int(table["bad"]), "very_bad": int(table["very bad"])}
    assert sum(ours.values()) == 200 and min(ours.values()) > 0


def test_summary_reports_lppd_latents_and_loo_with_pareto_counts():
    row = {"accuracy": 0.9, "nll": 0.3, "ece": 0.05, "adaptive_ece": 0.05, "classwise_ece": 0.01, "mce": 0.2,
           "brier": 0.15}
    mc = {"samples": 100, **row, "lppd": {"data": "test", "n": 359, "sum": -107.7, "mean": -0.3},
          "latents": {"layers": ["a", "b"], "keep_fraction": [0.79, 0.81], "keep_probability": [0.8, 0.8],
                      "density": [1.0, 0.2], "relative_deviation": [0.1, 0.3], "scale_mean": [0.01, 0.03],
                      "snr_mean": [5.0, 7.0]},
          "loo": {"data": "train", "n": 2000, "n_train": 5000, "subsample_seed": 0, "elpd": -620.5, "se": 20.25,
                  "p_loo": 12.3, "elpd_mean": -0.31025, "good_k": 0.5,
                  "pareto_k": {"good": 1990, "bad": 9, "very_bad": 1}}}
    record = {"method": "vcigl", "data": "digits", "predictive": "single model", "n_bins": 15, "n_test": 359,
              "test": row, "mc_predictive": mc}
    text = format_summary(record)
    assert "test lppd" in text and "-107.70 (-0.3000 per example, 359 test examples)" in text
    assert "PSIS-LOO on training data" in text and "elpd -620.50 ± 20.25 (-0.3103 per example), p_loo 12.3" in text
    assert "(2000 of 5000 train, subsample seed 0)" in text
    assert "good (≤ 0.50) 1990, bad 9, very bad (> 1) 1" in text and "S < 21" not in text
    assert "0.8000 of the active weights" in text and "E_q[Z] 0.8000" in text
    assert "mean σ 0.02, mean |U|/σ 6, ‖W_s−U‖/‖U‖ 0.2" in text
    assert "PSIS-LOO elpd" not in text and "LOO" not in text.split("PSIS-LOO on training data")[0]


# ----------------------------------------------------------------------------- CLI


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_summary_and_writes_outputs(run_dir, capsys):
    code, out, err = _run(capsys, "evaluate", run_dir, "--corruptions", "--bins", "10", "--no-progress")
    assert code == 0, err
    record = json.loads((run_dir / EVAL).read_text())
    assert record["n_bins"] == 10 and record["corruptions"] is not None
    assert "temperature scaled T=" in out and "auroc" in out and "sev 5" in out and str(run_dir / EVAL) in out
    assert f"{record['test']['accuracy']:.4f}" in out


def unfinished_copy(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    del state["final_model"]
    torch.save(state, run_dir / "checkpoint.pt")


@pytest.mark.parametrize(
    "setup,flags,needle",
    [
        ("empty", [], "is not a run folder"),
        ("unfinished", [], "has not finished"),
        ("run", ["--ood", "cifar"], "unknown OOD set 'cifar'"),
        ("run", ["--ood", "feature-shift"], "does not fit"),
        ("run", ["--bins", "0"], "--bins"),
        ("run", ["--corruptions-root", "nowhere"], "only for CIFAR"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_nothing(run_dir, tmp_path, capsys, setup, flags, needle):
    target = tmp_path / "empty" if setup == "empty" else run_dir
    target.mkdir(exist_ok=True)
    if setup == "unfinished":
        unfinished_copy(run_dir)
    before = sorted(p.name for p in target.iterdir())
    code, out, err = _run(capsys, "evaluate", target, "--corruptions", "--no-progress", *flags)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bayessparse: error:") and needle in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in target.iterdir()) == before  # nothing written


def test_tabular_run_uses_far_shift_and_tabular_corruptions(tmp_path):
    out = tmp_path / "synthetic"
    train(resolve({"data": "synthetic", "model": "mlp", "epochs": 2}), out, progress=False)
    record = evaluate_run(out, corruptions=True, n_bins=10)
    assert record["ood"]["set"] == "far-shift" and record["corruptions"]["kind"] == "tabular"
    assert list(record["corruptions"]["results"]) == list(CORRUPTIONS["tabular"])
    for m in record["ood"]["scores"].values():
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["fpr95"] <= 1.0
    mean = record["corruptions"]["mean"]
    assert mean[-1]["accuracy"] < mean[0]["accuracy"]
    for name in PNGS:
        check_png(out / name)
