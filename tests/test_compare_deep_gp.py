"""``compare --with-deep-gp``: deep GP rows next to the sparse networks, every column filled, same splits."""

import json
import math
import subprocess
import sys

import pytest

from bayessparse.errors import ConfigError
from bayessparse.folders import folder_kind

ARGS = ["compare", "--data", "digits", "--model", "mlp", "--methods", "rigl,cigl", "--epochs", "2", "--seeds", "1",
        "--jobs", "1", "--no-progress"]


def test_compare_with_deep_gp_prints_every_row_and_column(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *ARGS, "--with-deep-gp", "--deep-gp-set",
                           "epochs=2", "--deep-gp-set", "num_inducing=16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "rigl", "cigl", "DGP (raw inputs)", "DSPP (raw inputs)", "SV-DKL"}
    assert "inference_ms_per_example" in rows["method"] and "parameters" in rows["method"]
    assert all("nan" not in line for line in rows.values())
    runs = json.loads((out / "results.json").read_text())["runs"]
    for record in runs:
        assert record["parameters"] > 0 and math.isfinite(record["inference_ms_per_example"])
        assert record["data"] == "digits" and record["seed"] == 0
    gp = {r["method"]: r for r in runs}
    assert gp["DGP (raw inputs)"]["parameters"] > gp["rigl"]["parameters"]  # the GP carries its inducing points and variational parameters
    assert folder_kind(out / "deep-gp-dgp" / "seed-0") == "deep-gp"
    assert (out / "reliability-deep-gp-dspp.png").is_file()


def test_deep_gp_settings_need_the_deep_gp_rows(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *ARGS, "--deep-gp-set", "epochs=2",
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "add --with-deep-gp" in proc.stderr
    assert not (tmp_path / "cmp").exists()


def test_a_bad_deep_gp_field_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *ARGS, "--with-deep-gp", "--deep-gp-set",
                           "inducing=3", "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "inducing" in proc.stderr
    assert not (tmp_path / "cmp").exists()


REGRESSION = ["compare", "--data", "diabetes", "--methods", "rigl,cigl", "--epochs", "2", "--seeds", "2", "--jobs", "1",
              "--no-progress"]


def test_compare_on_regression_data_reports_rmse_nll_and_coverage_for_every_row(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *REGRESSION, "--with-deep-gp", "--deep-gp-set",
                           "epochs=2", "--deep-gp-set", "num_inducing=16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", "rmse", "nll", "coverage_50", "coverage_90", "coverage_95", "density", "train_seconds",
                      "inference_ms_per_example", "parameters"]
    rows = {line.split("|")[1].strip(): line for line in lines[1:]}
    assert set(rows) == {"rigl", "cigl", "DGP (raw inputs)", "DSPP (raw inputs)", "SV-DKL"}
    assert all("nan" not in line and "±" in line for line in rows.values())  # two seeds: mean ± interval
    results = json.loads((out / "results.json").read_text())
    for record in results["runs"]:
        assert 0 <= record["coverage_90"] <= 1 and math.isfinite(record["rmse"]) and "accuracy" not in record
    cigl = [r for r in results["runs"] if r["method"] == "cigl"]
    assert all("mc_nll" in r for r in cigl)  # CigL's Monte Carlo predictive over Z is recorded too
    from bayessparse.stats import interval

    nll = results["summary"]["rigl"]["nll"]
    expected = interval([r["nll"] for r in results["runs"] if r["method"] == "rigl"])
    assert (nll["mean"], nll["ci95"], nll["n"]) == (expected.mean, expected.half_width, 2)
    assert (out / "rigl" / "seed-1" / "config.yaml").read_text().count("model: mlp") == 1  # the regression defaults
    for name in ("reliability-rigl.png", "reliability-deep-gp-dspp.png", "reliability-overlay.png"):
        assert (out / name).stat().st_size > 1000


def test_regression_data_refuses_temperature_scaling_and_ensembles_before_training(tmp_path):
    for entry in ("rigl+ts", "dense:2", "cigl-pa"):
        proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", "compare", "--data", "diabetes", "--methods",
                               f"rigl,{entry}", "--out", str(tmp_path / "cmp")], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (entry, proc.stderr)
        assert "regression" in proc.stderr or "classes" in proc.stderr
        assert not (tmp_path / "cmp").exists()


TINY_REGRESSION = ["compare", "--data", "diabetes", "--methods", "rigl", "--epochs", "1", "--seeds", "1", "--jobs", "1",
                   "--no-progress", "--with-deep-gp", "--deep-gp-set", "epochs=1", "--deep-gp-set", "num_inducing=8"]


def test_a_diverging_deep_gp_row_is_one_line_naming_the_row_epoch_and_step(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *TINY_REGRESSION, "--deep-gp-set", "lr=1e30",
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("bayessparse: training diverged: DGP (raw inputs) (seed 0): ")
    assert proc.stderr.endswith(" at epoch 1, step 1; nothing was saved\n")
    assert (tmp_path / "cmp" / "rigl" / "seed-0" / "metrics.json").is_file()  # the network row finished first


def test_a_diverging_network_row_names_its_row_too(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *TINY_REGRESSION[:12], "--set", "lr=1e30",
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == "bayessparse: training diverged: rigl (seed 0): loss became nan at epoch 1, step 1; " \
                          "nothing was saved\n"


def test_too_many_inducing_points_are_refused_before_any_training(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *TINY_REGRESSION, "--deep-gp-set",
                           "num_inducing=100000", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "bayessparse: error: num_inducing must be <= the 266 training examples of diabetes, " \
                          "got 100000\n"
    assert not out.exists()


def test_a_field_compare_sets_is_refused_naming_its_flag(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "bayessparse.cli", *TINY_REGRESSION, "--deep-gp-set", "seed=3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "bayessparse: error: --deep-gp-set seed: the deep GP rows' seed is set by compare " \
                          "(from --seeds)\n"
    assert not out.exists()


@pytest.mark.parametrize("field,value,source", [
    ("data", "digits", "--data"),
    ("data_seed", "1", "--set data_seed"),
    ("seed", "0", "--seeds"),
    ("ece_bins", "0", "--set ece_bins"),
    ("method", "dspp", "DGP, DSPP and SV-DKL"),
])
def test_every_field_compare_sets_is_refused_before_any_training(tmp_path, field, value, source):
    from bayessparse.workflows.compare import REGRESSION_DEFAULTS, compare
    from bayessparse.config import resolve

    base = resolve(REGRESSION_DEFAULTS, {"data": "diabetes", "epochs": 1})
    with pytest.raises(ConfigError) as err:
        compare(base, ["rigl"], [0], tmp_path / "cmp", progress=False, with_deep_gp=True,
                deep_gp={"epochs": "1", "num_inducing": "8", field: value})
    message = str(err.value)
    assert message.startswith(f"--deep-gp-set {field}: ") and "set by compare" in message and source in message
    assert "\n" not in message and not (tmp_path / "cmp").exists()
