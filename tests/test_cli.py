import json
import subprocess
import sys

import pytest

from bayessparse.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--sparsity", "1.0"], "sparsity"),
        (["--sparsity", "-0.5"], "sparsity"),
        (["--data", "imagenet"], "unknown dataset 'imagenet'"),
        (["--model", "transformer"], "unknown model 'transformer'"),
        (["--method", "lottery"], "unknown method 'lottery'"),
        (["--config", "no/such/file.yaml"], "config file not found"),
        (["--epochs", "0"], "epochs"),
        (["--set", "momentum=2"], "momentum"),
        (["--set", "colour=red"], "unknown config field 'colour'"),
        (["--data", "cifar10", "--model", "resnet18", "--data-root", "nowhere"], "nowhere"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, stdout, stderr = _run(capsys, "train", "--data", "digits", "--model", "mlp", *flags, "--out", str(out), "--no-progress")
    assert code == 2
    assert stderr.count("\n") == 1 and needle in stderr and stderr.startswith("bayessparse: error:")
    assert "Traceback" not in stderr
    assert not out.exists()


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "config.yaml").write_text("data: digits\nmodel: mlp\n")
    code, _, stderr = _run(capsys, "train", "--data", "digits", "--model", "mlp", "--out", str(out), "--resume", "--no-progress")
    assert code == 2 and stderr.count("\n") == 1 and "cannot read checkpoint" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml"]


def test_bad_flag_type_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "many", "--out", "x"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_yaml_config_with_flag_override(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: digits\nmodel: mlp\nepochs: 5\nlr: 0.05\n")
    out = tmp_path / "run"
    code, stdout, _ = _run(capsys, "train", "--config", str(config), "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0 and "accuracy" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["data"] == "digits"


def test_diverged_run_exits_1_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bayessparse.cli", "train", "--data", "digits", "--model", "mlp", "--lr", "1e30",
         "--epochs", "1", "--out", str(out), "--no-progress"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "diverged" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


def test_compare_tabulates_what_exists(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = _run(
        capsys, "compare", "--data", "digits", "--model", "mlp", "--methods", "dense", "--seeds", "2",
        "--epochs", "2", "--out", str(out), "--no-progress",
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    accs = [r["accuracy"] for r in results["runs"]]
    assert results["summary"]["dense"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert "| dense |" in stdout and (out / "table.md").read_text().strip() == stdout.strip()
    assert (out / "reliability-dense.png").exists() and (out / "reliability-overlay.png").exists()


def test_compare_temperature_row_reuses_the_runs_and_keeps_accuracy(tmp_path, capsys):
    from bayessparse.workflows.predictors import labels_of, model_predictor
    from bayessparse.train import load_finished
    from bayessparse.uncertainty.temperature import fit_temperature

    out = tmp_path / "cmp"
    code, stdout, _ = _run(
        capsys, "compare", "--data", "digits", "--model", "mlp", "--methods", "rigl,rigl+ts", "--seeds", "1",
        "--epochs", "2", "--jobs", "1", "--out", str(out), "--no-progress",
    )
    assert code == 0 and "| rigl+ts |" in stdout
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["rigl"]  # one training serves both rows
    plain, scaled = json.loads((out / "results.json").read_text())["runs"]
    assert scaled["method"] == "rigl+ts" and scaled["accuracy"] == plain["accuracy"]
    run, model = load_finished(out / "rigl" / "seed-0")
    val = run.data.val
    assert scaled["temperature"] == pytest.approx(fit_temperature(model_predictor(run, model)(val), labels_of(val)))
    assert scaled["temperature"] != pytest.approx(1.0)
    assert scaled["nll"] != plain["nll"]
    assert (out / "reliability-rigl+ts.png").exists()


@pytest.mark.parametrize("entry", ["edst:rigl:3+ts", "rigl+ts+ts", "lottery+ts"])
def test_compare_rejects_bad_temperature_entries(tmp_path, capsys, entry):
    code, _, stderr = _run(capsys, "compare", "--methods", entry, "--out", str(tmp_path / "c"), "--no-progress")
    assert code == 2 and stderr.count("\n") == 1 and not (tmp_path / "c").exists()


def test_compare_bad_jobs_is_one_line(tmp_path, capsys):
    code, _, stderr = _run(capsys, "compare", "--jobs", "0", "--out", str(tmp_path / "c"), "--no-progress")
    assert code == 2 and "--jobs" in stderr and not (tmp_path / "c").exists()
