"""The reproduction study: its specification, the folders it shares, its report, resuming and locking."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.folders import LOCK
from bayessparse.stats import interval
from bayessparse.workflows.study import _locked, run_study
from bayessparse.workflows.study.cells import folder_for
from bayessparse.workflows.study.spec import read_spec

TINY = """
seeds: [0, 1]
base: {data: digits, model: mlp, epochs: 2, update_interval: 5}
mc_samples: 3
calibration:
  setups:
    mlp: {}
  sparsities: [0.9]
  rows: [dense, rigl, rigl+ts, rigl+mcdp, cigl]
  corruptions: [mlp]
  reliability: {setup: mlp, sparsity: 0.9}
drop_rate: {setups: [mlp], rates: [0.02, 0.2], sparsities: [0.9]}
"""


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,needle",
    [
        ("base: {}\n", "'seeds' is missing"),
        ("seeds: [0]\ncolour: red\n", "unknown study field 'colour'"),
        ("seeds: [0]\ncalibration: {setups: {a: {}}, rows: [rigl, lottery]}\n", "unknown row 'lottery'"),
        ("seeds: [0]\ncalibration: {setups: {a: {}}, rows: [rigl], sparsities: [1.5]}\n", "calibration.sparsities"),
        ("seeds: [0]\ncalibration: {setups: {a: {model: transformer}}, rows: [rigl]}\n", "unknown model"),
        ("seeds: [0]\ndrop_rate: {setups: [a], rates: [0.1], sparsities: [0.9]}\n", "needs the 'calibration'"),
        ("seeds: [0]\ncalibration: {setups: {a: {}}, rows: [rigl], corruptions: [b]}\n", "unknown setup 'b'"),
        ("seeds: [zero]\n", "'seeds'"),
        ("seeds: [0]\ndeep_gp: {regression: {config: {data: diabetes}, rows: [rigl+ts]}}\n", "'deep_gp.regression.rows'"),
        ("seeds: [0]\ndeep_gp: {setups: [a], rows: [rigl]}\n", "needs the 'calibration' section"),
    ],
)
def test_bad_specification_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, needle):
    out = tmp_path / "out"
    code = main(["study", "--config", str(_spec(tmp_path, text)), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err and err.startswith("bayessparse: error:")
    assert not out.exists()


def test_quick_and_config_exclude_each_other(tmp_path, capsys):
    code = main(["study", "--quick", "--config", str(_spec(tmp_path, TINY)), "--out", str(tmp_path / "o")])
    assert code == 2 and "exclude" in capsys.readouterr().err


def test_committed_specifications_are_valid():
    root = Path(__file__).resolve().parents[1] / "experiments"
    full, quick = read_spec(root / "study.yaml"), read_spec(root / "study_quick.yaml")
    assert len(full.seeds) >= 3 and full.calibration.sparsities == (0.8, 0.9, 0.95, 0.98)
    assert {"cnn1d", "mlp", "digits"} <= set(full.calibration.setups)
    assert full.drop_rate.rates == (0.01, 0.02, 0.03, 0.05, 0.1)
    assert full.freetickets is not None and len(full.imp) == 2
    assert quick.calibration is not None and quick.drop_rate is not None and quick.imp


def test_folders_depend_only_on_what_the_method_reads(tmp_path):
    base = resolve({"data": "digits", "model": "mlp"})

    def folder(**changes):
        return folder_for(tmp_path, base.replace(**changes))

    assert folder(method="rigl", drop_rate=0.01) == folder(method="rigl", drop_rate=0.1)
    assert folder(method="cigl", drop_rate=0.01) != folder(method="cigl", drop_rate=0.1)
    assert folder(method="dense", sparsity=0.9) == folder(method="dense", sparsity=0.5)
    assert folder(method="rigl", sparsity=0.9) != folder(method="rigl", sparsity=0.5)
    assert folder(method="rigl", explore_c=2.0) != folder(method="dst-ee", explore_c=2.0)
    assert folder(method="rigl", seed=0).endswith("seed-0") and folder(method="rigl", seed=3).endswith("seed-3")
    assert Path(folder(method="rigl", seed=0)).parent == Path(folder(method="rigl", seed=3)).parent
    # a field added later enters the hash only away from its default: finished runs keep their folders
    assert folder(method="rigl", kernels="sparse") != folder(method="rigl")


def test_a_later_field_at_its_default_leaves_the_folder_as_it_was(tmp_path):
    """The folder of a config is the one computed before the later fields existed (pinned hash)."""
    cfg = resolve({"data": "digits", "model": "mlp", "method": "rigl"})
    key = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "kernels", "fused_mask")
           and k not in ("drop_rate", "averaging_start", "guide", "keep_prior", "keep_init", "keep_shape",
                         "keep_temperature", "explore_c")}
    digest = hashlib.sha1(json.dumps([key, "run", {}], sort_keys=True).encode()).hexdigest()[:10]
    assert folder_for(tmp_path, cfg) == str(tmp_path / "digits-mlp" / f"rigl-{digest}" / "seed-0")


def _table(text: str, title: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under the bold ``title`` (first column -> other cells)."""
    block = text.split(f"**{title}**", 1)[1].strip().split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in block.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


@pytest.mark.slow
def test_study_trains_scores_reports_and_resumes(tmp_path):
    spec, out = _spec(tmp_path, TINY), tmp_path / "study"
    docs = tmp_path / "docs"
    docs.mkdir()
    first = run_study(spec, out, docs=docs, progress=False)
    # dense x2, rigl x2 (shared by rigl+ts and the drop-rate reference), rigl-wdp x2, cigl 0.02 (the default) x2, cigl 0.2 x2
    assert first["cells"] == 10
    report = (out / "results.md").read_text()
    assert (docs / "results.md").read_text() == report
    for name in ("sparsity-mlp.svg", "reliability-mlp-0.9.svg", "corruptions-mlp.svg", "drop-rate-mlp.svg"):
        assert (docs / "figures" / name).stat().st_size > 1000

    # the table's RigL accuracy is the mean over the seeds' metrics.json
    runs = sorted(p for p in (out / "runs").glob("digits-mlp/*/seed-*/metrics.json")
                  if re.fullmatch(r"rigl-[0-9a-f]{10}", p.parent.parent.name))
    accuracies = [json.loads(p.read_text())["accuracy"] for p in runs]
    assert len(accuracies) == 2
    assert _table(report, "accuracy")["RigL"][0] == interval(accuracies).format(4)
    # temperature scaling keeps the accuracy; MC-DP has its own numbers
    acc = _table(report, "accuracy")
    assert acc["RigL + TS"] == acc["RigL"]
    assert "CigL, drop 0.2" in report and re.search(r"\| 0\.9 \| CigL, drop 0\.02 \|", report)

    # a second run trains nothing and writes the same report
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint.pt")}
    second = run_study(spec, out, progress=False)
    assert second["cells"] == first["cells"]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint.pt")} == stamps
    assert (out / "results.md").read_text() == report


def test_a_second_study_process_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "study"
    with _locked(out):
        with pytest.raises(ConfigError, match="another process is writing it"):
            with _locked(out):
                pass
    assert (out / LOCK).exists()
    with _locked(out):  # released
        pass
