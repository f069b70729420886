"""``compare --with-deep-gp``: deep GP rows next to the sparse networks, every column filled, same splits."""

import json
import math
import subprocess
import sys

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
    assert set(rows) == {"method", "rigl", "cigl", "DGP", "DSPP"}
    assert "inference_ms_per_example" in rows["method"] and "parameters" in rows["method"]
    assert all("nan" not in line for line in rows.values())
    runs = json.loads((out / "results.json").read_text())["runs"]
    for record in runs:
        assert record["parameters"] > 0 and math.isfinite(record["inference_ms_per_example"])
        assert record["data"] == "digits" and record["seed"] == 0
    gp = {r["method"]: r for r in runs}
    assert gp["DGP"]["parameters"] > gp["rigl"]["parameters"]  # the GP carries its inducing points and variational parameters
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
