"""The study's deep GP section: its specification, the cells it plans and shares, and the report it writes."""

import json
import re
from pathlib import Path

import pytest
import yaml

from bayessparse.errors import ConfigError
from bayessparse.stats import interval, paired_difference
from bayessparse.workflows.study.cells import SCORES, Cell, check_cells, gp_folder_for, score
from bayessparse.workflows.study.plan import calibration_cells, deep_gp_cells, plan
from bayessparse.workflows.study.report import Report, deep_gp_section
from bayessparse.workflows.study.spec import read_spec

SPEC = """
seeds: [0, 1, 2]
base: {data: digits, model: mlp, epochs: 2, update_interval: 5, ece_bins: 10}
calibration:
  setups:
    mlp: {}
  sparsities: [0.9, 0.95]
  rows: [rigl, cigl]
deep_gp:
  setups: [mlp]
  sparsity: 0.9
  rows: [rigl, cigl, vcigl]
  regression:
    config: {data: diabetes}
    rows: [rigl, cigl]
  gp: {epochs: 1, num_inducing: 8}
"""


def _spec(tmp_path: Path, text: str = SPEC, **deep_gp) -> Path:
    raw = yaml.safe_load(text)
    raw["deep_gp"].update(deep_gp)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------------------ specification


@pytest.mark.parametrize(
    "changes,needles",
    [
        ({"setups": [], "regression": None}, ["'deep_gp' needs 'setups'"]),
        ({"setups": ["cnn"]}, ["'deep_gp.setups'", "unknown setup 'cnn'"]),
        ({"setups": {"mlp": {}}}, ["'deep_gp.setups.mlp'", "calibration setup's name"]),
        ({"setups": {"small": {"data": "mnist1d", "data_root": "x"}}}, ["'deep_gp.setups.small'", "data_root='x'"]),
        ({"gp": {"n_samples": 500}}, ["'deep_gp.gp.n_samples'", "set by the study"]),
        ({"setups": {"noisy": {"label_noise": 0.2}}}, ["'deep_gp.setups.noisy'", "label_noise"]),
        ({"rows": ["rigl", "lottery"]}, ["'deep_gp.rows'", "unknown row 'lottery'"]),
        ({"sparsity": 1.5}, ["'deep_gp.sparsity'"]),
        ({"sparsity": [0.8, 0.9]}, ["'deep_gp.sparsity'", "one number"]),
        ({"methods": ["svgp"]}, ["'deep_gp.methods'"]),
        ({"gp": {"seed": 3}}, ["'deep_gp.gp.seed'", "set by the study"]),
        ({"gp": {"data": "wine"}}, ["'deep_gp.gp.data'"]),
        ({"gp": {"colour": 1}}, ["'deep_gp.gp'", "unknown deep GP config field 'colour'"]),
        ({"gp": {"epochs": 0}}, ["'deep_gp.gp'", "epochs"]),
        ({"gp": [1, 2]}, ["'deep_gp.gp'", "mapping"]),
        ({"colour": "red"}, ["unknown study field 'deep_gp.colour'"]),
        ({"regression": {"config": {"data": "diabetes", "method": "rigl"}, "rows": ["rigl"]}},
         ["'deep_gp.regression.config.method'"]),
        ({"regression": {"config": {"data": "diabetes"}, "rows": ["rigl+ts"]}},
         ["'deep_gp.regression.rows'", "rigl+ts"]),
        ({"regression": {"config": {"data": "diabetes"}}}, ["'deep_gp.regression.rows' is missing"]),
        ({"regression": {"config": {"data": "diabetes", "epochs": "many"}, "rows": ["rigl"]}}, ["'epochs'"]),
        ({"regression": {"config": {"data": "diabetes"}, "rows": ["rigl"], "seeds": [4]}},
         ["unknown study field 'deep_gp.regression.seeds'"]),
    ],
)
def test_a_bad_deep_gp_section_is_one_line_naming_the_field(tmp_path, changes, needles):
    path = _spec(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        read_spec(path)
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_listed_setups_need_the_calibration_section(tmp_path):
    raw = yaml.safe_load(SPEC)
    del raw["calibration"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"'deep_gp.setups' names calibration setups.*needs the 'calibration'"):
        read_spec(path)


def test_the_section_reads_back(tmp_path):
    g = read_spec(_spec(tmp_path)).deep_gp
    assert g.setups == {"mlp": {}} and g.sparsity == 0.9 and g.rows == ("rigl", "cigl", "vcigl")
    assert g.methods == ("dgp", "dspp", "svdkl") and g.gp == {"epochs": 1, "num_inducing": 8}
    assert g.regression == {"data": "diabetes"} and g.regression_rows == ("rigl", "cigl")
    own = read_spec(_spec(tmp_path, setups={"wine": {"data": "wine"}}, methods="dspp")).deep_gp
    assert own.setups == {"wine": {"data": "wine"}} and own.methods == ("dspp",)


def test_committed_specifications_have_a_deep_gp_section():
    root = Path(__file__).resolve().parents[1] / "experiments"
    full, quick = read_spec(root / "study.yaml"), read_spec(root / "study_quick.yaml")
    assert set(full.deep_gp.setups) == {"cnn1d", "digits"} and full.deep_gp.regression["data"] == "diabetes"
    assert {"cigl", "vcigl"} <= set(full.deep_gp.rows) and full.deep_gp.methods == ("dgp", "dspp", "svdkl")
    assert quick.deep_gp.gp["epochs"] <= 2 and quick.deep_gp.regression["data"] == "diabetes"


# ------------------------------------------------------------------------------------------ planning


def test_cells_per_setup_row_method_and_seed_share_the_calibration_folders(tmp_path):
    spec = read_spec(_spec(tmp_path))
    root = tmp_path / "runs"
    groups = deep_gp_cells(spec, root)
    assert list(groups) == [("classification", "mlp"), ("regression", "diabetes")]
    cls, reg = groups[("classification", "mlp")], groups[("regression", "diabetes")]
    assert list(cls) == ["rigl", "cigl", "vcigl", "dgp", "dspp", "svdkl"]
    assert list(reg) == ["rigl", "cigl", "dgp", "dspp", "svdkl"]
    assert all(len(cells) == 3 for g in groups.values() for cells in g.values())

    # the networks at the section's sparsity are the calibration section's runs; vCigL is new
    calibration = {c.folder: c for c in calibration_cells(spec, root)}
    for row in ("rigl", "cigl"):
        for seed, cell in zip(spec.seeds, cls[row]):
            shared = calibration[cell.folder]
            assert shared.config == cell.config and cell.config["seed"] == seed and cell.config["sparsity"] == 0.9
            assert cell.predictions == ("model", "metrics") and cell.task == "classification"
    assert not any(c.folder in calibration for c in cls["vcigl"])

    # deep GPs: same data, split, seed and bins as the networks, the section's overrides, a folder of their own
    for method in ("dgp", "dspp"):
        for seed, cell in zip(spec.seeds, cls[method]):
            net = cls["rigl"][seed].config
            assert cell.kind == "deep-gp" and cell.predictions == ("metrics",)
            assert {k: cell.config[k] for k in ("method", "data", "data_seed", "seed", "ece_bins", "epochs",
                                                "num_inducing")} == {
                "method": method, "data": net["data"], "data_seed": net["data_seed"], "seed": seed,
                "ece_bins": net["ece_bins"], "epochs": 1, "num_inducing": 8}
            assert re.fullmatch(rf"{re.escape(str(root))}/digits-deep-gp/{method}-[0-9a-f]{{10}}/seed-{seed}",
                                cell.folder)
        assert len({Path(c.folder).parent for c in cls[method]}) == 1
    assert Path(cls["dgp"][0].folder).parent != Path(cls["dspp"][0].folder).parent

    # regression: networks that only read metrics.json, deep GPs on the regression set
    assert all(c.task == "regression" and c.predictions == ("metrics",) for cs in reg.values() for c in cs)
    assert all("/diabetes-mlp/" in c.folder for c in reg["rigl"]) and reg["dgp"][0].config["data"] == "diabetes"
    assert "/diabetes-deep-gp/" in reg["dgp"][0].folder

    # plan: calibration 2 rows x 2 sparsities x 3 seeds, + vCigL 3, regression nets 2 x 3, deep GPs 2 x 2 x 3
    cells = {c.folder: c for c in plan(spec, root)}
    assert len(cells) == 12 + 3 + 6 + 18  # deep GPs: 3 methods x 2 groups x 3 seeds
    assert cells[cls["rigl"][0].folder].predictions == ("model", "metrics")
    assert cells[calibration_cells(spec, root)[3].folder].predictions == ("model",)  # rigl at 0.95: not asked


def test_the_deep_gp_folder_hashes_everything_but_the_seed(tmp_path):
    from bayessparse.baselines import DeepGPConfig

    cfg = DeepGPConfig(data="digits").to_dict()

    def folder(**changes):
        return gp_folder_for(tmp_path, {**cfg, **changes})

    assert Path(folder(seed=0)).parent == Path(folder(seed=4)).parent and folder(seed=4).endswith("seed-4")
    for change in ({"epochs": 3}, {"num_inducing": 50}, {"data_seed": 1}, {"method": "dspp"}, {"ece_bins": 10}):
        assert Path(folder(**change)).parent != Path(folder()).parent, change


def test_adding_the_section_leaves_every_other_cell_as_it_was(tmp_path):
    """The committed study with and without its deep GP section: the same folders, configs and scoring
    (the shared runs also read metrics.json), so finished runs of the full study are found again."""
    full = Path(__file__).resolve().parents[1] / "experiments" / "study.yaml"
    raw = yaml.safe_load(full.read_text())
    del raw["deep_gp"]
    without = tmp_path / "without.yaml"
    without.write_text(yaml.safe_dump(raw))
    root = Path("runs/study/runs")
    before = {c.folder: c for c in plan(read_spec(without), root)}
    after = {c.folder: c for c in plan(read_spec(full), root)}
    assert set(before) < set(after)
    for folder, c in before.items():
        a = after[folder]
        assert (a.config, a.kind, a.corruptions, a.ood, a.members, a.mc_samples, a.task) == (
            c.config, c.kind, c.corruptions, c.ood, c.members, c.mc_samples, c.task)
        assert a.predictions[:len(c.predictions)] == c.predictions and set(a.predictions) <= {*c.predictions, "metrics"}


def test_check_cells_refuses_a_data_set_of_the_wrong_task_and_too_many_inducing_points(tmp_path):
    spec = read_spec(_spec(tmp_path, regression={"config": {"data": "wine"}, "rows": ["rigl"]}))
    cells = [c for g in deep_gp_cells(spec, tmp_path).values() for cs in g.values() for c in cs]
    with pytest.raises(ConfigError, match="data 'wine' is a classification set, but a regression cell uses it"):
        check_cells(cells)
    spec = read_spec(_spec(tmp_path, regression=None, gp={"num_inducing": 5000}))
    cells = [c for g in deep_gp_cells(spec, tmp_path).values() for cs in g.values() for c in cs]
    with pytest.raises(ConfigError, match=r"'deep_gp.gp.num_inducing' must be <= the \d+ training examples"):
        check_cells(cells)


# ------------------------------------------------------------------------------------------ scoring


def test_a_regression_cell_reads_metrics_json_and_never_the_classifier_scorecard(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"task": "regression", "rmse": 0.7, "nll": 1.1, "coverage_90": 0.9, "parameters": 10,
              "train_seconds": 1.0, "inference_ms_per_example": 0.01, "history": [{"epoch": 1}]}
    (folder / "metrics.json").write_text(json.dumps(record))  # no checkpoint: loading the run would fail
    cell = Cell({"data": "diabetes", "model": "mlp", "method": "rigl"}, str(folder), predictions=("metrics",),
                task="regression")
    scores = score(cell)
    assert scores == {"metrics": {k: v for k, v in record.items() if k != "history"}}
    assert not (folder / SCORES).exists()


def test_a_run_finished_before_the_cost_fields_gets_them_measured_once(tmp_path):
    from bayessparse.config import resolve

    cfg = resolve({"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1, "width": 0.25})
    folder = tmp_path / "rigl"
    cell = Cell(cfg.to_dict(), str(folder), predictions=("model", "metrics"))
    first = score(cell)
    recorded = json.loads((folder / "metrics.json").read_text())
    assert first["metrics"]["parameters"] == recorded["parameters"] and "costs" not in first
    assert first["model"]["test"]["nll"] == pytest.approx(recorded["nll"], rel=1e-5)
    # as a run of the first study: no parameter count, no inference time
    old = {k: v for k, v in recorded.items() if k not in ("parameters", "inference_ms_per_example")}
    (folder / "metrics.json").write_text(json.dumps(old))
    second = score(cell)
    assert second["metrics"]["parameters"] == recorded["parameters"]  # measured: the same non-zero count
    assert second["metrics"]["inference_ms_per_example"] > 0
    cached = json.loads((folder / SCORES).read_text())
    assert cached["costs"]["parameters"] == recorded["parameters"] and "metrics" not in cached
    stamp = (folder / SCORES).stat().st_mtime_ns
    assert score(cell)["metrics"] == second["metrics"] and (folder / SCORES).stat().st_mtime_ns == stamp


def test_a_deep_gp_cell_trains_once_and_reports_its_metrics(tmp_path):
    spec = read_spec(_spec(tmp_path, regression=None, methods=["dgp"], gp={"epochs": 1, "num_inducing": 8}))
    cell = deep_gp_cells(spec, tmp_path / "runs")[("classification", "mlp")]["dgp"][0]
    first = score(cell)
    written = json.loads((Path(cell.folder) / "metrics.json").read_text())
    assert first["metrics"]["nll"] == written["nll"] and first["metrics"]["method"] == "dgp"
    assert "history" not in first["metrics"] and written["epochs"] == 1
    stamp = (Path(cell.folder) / "checkpoint.pt").stat().st_mtime_ns
    assert score(cell) == first and (Path(cell.folder) / "checkpoint.pt").stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------ report

# per seed: classification (accuracy, nll, ece, brier, train s, inference ms, parameters)
NETS = {
    "rigl": [(0.95, 0.20, 0.030, 0.08, 10.0, 0.010, 9000), (0.96, 0.21, 0.035, 0.07, 11.0, 0.011, 9001),
             (0.95, 0.22, 0.032, 0.08, 10.5, 0.012, 9002)],
    "cigl": [(0.96, 0.15, 0.020, 0.06, 12.0, 0.010, 9000), (0.96, 0.16, 0.021, 0.06, 12.5, 0.011, 9001),
             (0.97, 0.15, 0.019, 0.05, 11.5, 0.012, 9002)],
    "vcigl": [(0.96, 0.17, 0.020, 0.06, 20.0, 0.010, 9100), (0.95, 0.18, 0.025, 0.06, 21.0, 0.011, 9101),
              (0.96, 0.17, 0.022, 0.06, 19.0, 0.012, 9102)],
}
GPS = {
    "dgp": [(0.93, 0.25, 0.040, 0.10, 60.0, 0.30, 20000), (0.92, 0.26, 0.045, 0.11, 62.0, 0.31, 20000),
            (0.93, 0.24, 0.041, 0.10, 61.0, 0.29, 20000)],
    "dspp": [(0.94, 0.18, 0.030, 0.09, 50.0, 0.20, 21000), (0.94, 0.19, 0.031, 0.09, 52.0, 0.21, 21000),
             (0.95, 0.18, 0.030, 0.09, 51.0, 0.22, 21000)],
    "svdkl": [(0.92, 0.30, 0.050, 0.12, 40.0, 0.05, 15000), (0.91, 0.31, 0.052, 0.12, 41.0, 0.05, 15000),
              (0.92, 0.29, 0.049, 0.11, 39.0, 0.05, 15000)],
}
CLS_KEYS = ("accuracy", "nll", "ece", "brier", "train_seconds", "inference_ms_per_example", "parameters")
# regression per seed: (rmse, nll, coverage_50, coverage_90, coverage_95, train s); cigl also has mc_* numbers
REG = {
    "rigl": [(0.70, 1.10, 0.45, 0.80, 0.86, 2.0), (0.72, 1.12, 0.44, 0.79, 0.85, 2.1),
             (0.71, 1.11, 0.46, 0.81, 0.87, 2.2)],
    "cigl": [(0.69, 1.05, 0.50, 0.90, 0.95, 2.5), (0.70, 1.06, 0.49, 0.89, 0.94, 2.6),
             (0.68, 1.04, 0.51, 0.91, 0.95, 2.4)],
    "dgp": [(0.75, 1.20, 0.48, 0.88, 0.93, 30.0), (0.76, 1.21, 0.47, 0.87, 0.93, 31.0),
            (0.74, 1.19, 0.49, 0.89, 0.94, 29.0)],
    "dspp": [(0.73, 1.15, 0.50, 0.90, 0.95, 25.0), (0.74, 1.16, 0.51, 0.91, 0.95, 26.0),
             (0.72, 1.14, 0.50, 0.90, 0.95, 24.0)],
    "svdkl": [(0.78, 1.25, 0.45, 0.85, 0.92, 5.0), (0.79, 1.26, 0.44, 0.84, 0.91, 5.1),
              (0.77, 1.24, 0.46, 0.86, 0.93, 4.9)],
}
REG_KEYS = ("rmse", "nll", "coverage_50", "coverage_90", "coverage_95", "train_seconds")


def _write(folder: str, **files) -> None:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (path / f"{name}.json").write_text(json.dumps(content))


def _fake_study(tmp_path: Path):
    """Finished folders for every deep GP cell, written as training and scoring write them; the scores the
    study's real scoring reads back from them."""
    spec = read_spec(_spec(tmp_path))
    root = tmp_path / "runs"
    groups = deep_gp_cells(spec, root)
    for row, cells in groups[("classification", "mlp")].items():
        for cell, values in zip(cells, (NETS | GPS)[row]):
            record = dict(zip(CLS_KEYS, values))
            if cell.kind == "deep-gp":
                _write(cell.folder, metrics={**record, "method": row, "history": []})
            else:
                test = {k: record[k] for k in CLS_KEYS[:4]}
                _write(cell.folder, metrics={**record, "density": 0.1, "history": []},
                       study={"model": {"test": {**test, "confidence": 0.9}}})
    for row, cells in groups[("regression", "diabetes")].items():
        for i, (cell, values) in enumerate(zip(cells, REG[row])):
            record = {**dict(zip(REG_KEYS, values)), "inference_ms_per_example": 0.01, "parameters": 5000 + i}
            if row == "cigl":  # Monte Carlo over Z: a little better than the averaged network
                record |= {f"mc_{k}": v - 0.01 for k, v in record.items() if k in REG_KEYS[:5]}
            _write(cell.folder, metrics={**record, "task": "regression"})
    cells = [c for g in groups.values() for cs in g.values() for c in cs]
    return spec, root, {c.folder: score(c) for c in cells}


def _report(spec, root, scores, figures):
    rep = Report(spec, root, scores, figures, "bayessparse study")
    deep_gp_section(rep)
    return rep, rep.text()


def _table(text: str, title: str) -> dict[str, list[str]]:
    block = text.split(f"**{title}**", 1)[1].strip().split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in block.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def _column(rows, key):
    return [dict(zip(CLS_KEYS, v))[key] for v in rows]


def test_the_section_tables_are_the_intervals_of_the_runs_metrics(tmp_path):
    spec, root, scores = _fake_study(tmp_path)
    rep, text = _report(spec, root, scores, tmp_path / "figures")
    assert "## Sparse Bayesian networks and deep GPs" in text
    cls = _table(text, "mlp: sparse networks and deep GPs")
    assert list(cls) == ["RigL", "CigL", "vCigL", "DGP (raw inputs)", "DSPP (raw inputs)", "SV-DKL"]
    for label, rows in (("CigL", NETS["cigl"]), ("vCigL", NETS["vcigl"]), ("DSPP (raw inputs)", GPS["dspp"]),
                        ("SV-DKL", GPS["svdkl"])):
        assert cls[label][:4] == [interval(_column(rows, k)).format(4) for k in CLS_KEYS[:4]]
        assert cls[label][4] == interval(_column(rows, "train_seconds")).format(1)
        assert cls[label][5] == interval(_column(rows, "inference_ms_per_example")).format(4)
    assert cls["DGP (raw inputs)"][6] == "20,000" and cls["RigL"][6] == "9,001 ± 2"

    reg = _table(text, "diabetes (regression): sparse networks and deep GPs")
    assert list(reg) == ["RigL", "CigL", "CigL + MC", "DGP (raw inputs)", "DSPP (raw inputs)", "SV-DKL"]  # MC: where recorded
    assert reg["CigL"][:5] == [interval([v[i] for v in REG["cigl"]]).format(d) for i, d in enumerate((4, 4, 3, 3, 3))]
    assert reg["CigL + MC"][1] == interval([v[1] - 0.01 for v in REG["cigl"]]).format(4)
    assert reg["CigL + MC"][5] == reg["CigL"][5] and reg["CigL + MC"][6] == "–"  # same training; MC time not recorded
    assert (tmp_path / "figures" / "deep-gp.svg").stat().st_size > 1000


def test_the_targets_are_checked_with_their_numbers_and_flip_with_them(tmp_path):
    spec, root, scores = _fake_study(tmp_path)
    rep, text = _report(spec, root, scores, tmp_path / "f")
    target = _table(text, "Target: the best sparse Bayesian row's NLL ≤ the better deep GP's at ≤ 1/3 of its "
                          "training time")
    cigl, dspp = NETS["cigl"], GPS["dspp"]
    ratio = interval(_column(cigl, "train_seconds")).mean / interval(_column(dspp, "train_seconds")).mean
    d = paired_difference(_column(cigl, "nll"), _column(dspp, "nll"))
    assert target["mlp"] == ["CigL", interval(_column(cigl, "nll")).format(4), "DSPP (raw inputs)",
                             interval(_column(dspp, "nll")).format(4), d.format(4), f"{ratio:.2f}", "met"]
    assert dict(rep.verdicts)["Sparse Bayesian nets: NLL ≤ the better deep GP's at ≤ 1/3 of its training time"] \
        == "met on 1 of 1 setups"
    # the regression target per sparse row: RigL's 90 % coverage is 0.80, CigL's 0.90 (its MC row 0.89)
    coverage = _table(text, "Target: the sparse nets' 90 % interval coverage on diabetes within 0.85-0.95")
    assert coverage["RigL"][:2] == [interval([v[3] for v in REG["rigl"]]).format(3), "not met"]
    assert coverage["CigL"][1] == "met" and coverage["CigL + MC"][1] == "met"
    assert dict(rep.verdicts)["Sparse nets' 90 % coverage within 0.85-0.95 on diabetes"] == "met by 2 of 3 rows"
    # the reading states the cost ratios it found
    assert f"{ratio:.2g}× its training time" in text

    # slower CigL runs: the time ratio passes 1/3 and the target is not met, for that reason only
    for cell in deep_gp_cells(spec, root)[("classification", "mlp")]["cigl"]:
        scores[cell.folder]["metrics"]["train_seconds"] *= 2
    rep, text = _report(spec, root, scores, tmp_path / "f")
    row = _table(text, "Target: the best sparse Bayesian row's NLL ≤ the better deep GP's at ≤ 1/3 of its "
                       "training time")["mlp"]
    assert row[5] == f"{2 * ratio:.2f}" and row[6] == "not met" and "more than 0.33" in text
    assert "its NLL is higher" not in text
    # and a deep GP better than every sparse Bayesian row fails it on the NLL too
    for cell in deep_gp_cells(spec, root)[("classification", "mlp")]["dgp"]:
        scores[cell.folder]["metrics"]["nll"] = 0.05
    rep, text = _report(spec, root, scores, tmp_path / "f")
    row = _table(text, "Target: the best sparse Bayesian row's NLL ≤ the better deep GP's at ≤ 1/3 of its "
                       "training time")["mlp"]
    assert row[2] == "DGP (raw inputs)" and row[6] == "not met" and "its NLL is higher" in text
    assert dict(rep.verdicts)["Sparse Bayesian nets: NLL ≤ the better deep GP's at ≤ 1/3 of its training time"] \
        == "met on 0 of 1 setups"


def test_the_reading_follows_the_numbers(tmp_path):
    spec, root, scores = _fake_study(tmp_path)
    _, text = _report(spec, root, scores, tmp_path / "f")
    reading = text.split("### Reading", 1)[1]
    # on mlp CigL's NLL, ECE, Brier and accuracy are all resolved better than DSPP's
    mlp = reading.split("**mlp**", 1)[1].split("\n\n", 1)[0]
    assert "CigL against DSPP (raw inputs)" in mlp
    favour = mlp.split("Resolved in the network's favour:", 1)[1].split(";", 1)[0]
    assert all(m in favour for m in ("accuracy", "NLL", "ECE", "Brier"))
    # flip: the deep GP far better on NLL for every seed -> the reading says so
    for cell in deep_gp_cells(spec, root)[("classification", "mlp")]["dspp"]:
        scores[cell.folder]["metrics"]["nll"] = 0.01
    _, text = _report(spec, root, scores, tmp_path / "f")
    mlp = text.split("### Reading", 1)[1].split("**mlp**", 1)[1].split("\n\n", 1)[0]
    gp_side = mlp.split("in the deep GP's favour:", 1)[1].split(";", 1)[0]
    assert "NLL" in gp_side and "NLL" not in mlp.split("Resolved in the network's favour:", 1)[1].split(";", 1)[0]


def test_no_section_without_the_spec_field(tmp_path):
    raw = yaml.safe_load(SPEC)
    del raw["deep_gp"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    rep = Report(read_spec(path), tmp_path, {}, tmp_path / "f", "x")
    deep_gp_section(rep)
    assert rep.blocks == [] and not deep_gp_cells(read_spec(path), tmp_path)


@pytest.mark.slow
def test_the_study_trains_the_section_end_to_end(tmp_path):
    """Tiny real trainings: networks and deep GPs on digits and diabetes, the report from their metrics."""
    from bayessparse.workflows.study import run_study

    text = (SPEC.replace("seeds: [0, 1, 2]", "seeds: [0, 1]").replace("sparsities: [0.9, 0.95]", "sparsities: [0.9]")
            .replace("rows: [rigl, cigl]\ndeep_gp", "rows: [dense, rigl, cigl]\ndeep_gp"))
    spec_path = _spec(tmp_path, text, rows=["rigl", "cigl"])
    out = tmp_path / "study"
    result = run_study(spec_path, out, progress=False)
    assert result["cells"] == 6 + 4 + 12  # calibration (RigL and CigL shared), regression nets, deep GPs
    report = (out / "results.md").read_text()
    cls = _table(report, "mlp: sparse networks and deep GPs")
    gp = sorted((out / "runs" / "digits-deep-gp").glob("dspp-*/seed-*/metrics.json"))
    assert cls["DSPP (raw inputs)"][1] == interval([json.loads(p.read_text())["nll"] for p in gp]).format(4)
    reg = _table(report, "diabetes (regression): sparse networks and deep GPs")
    assert {"RigL", "CigL", "DGP (raw inputs)", "DSPP (raw inputs)", "SV-DKL"} <= set(reg)
    assert "### Targets" in report and (out / "figures" / "deep-gp.svg").exists()


def test_scoring_counts_a_deep_gp_runs_parameters_from_its_model(tmp_path):
    """A run trained when the full Cholesky factors were counted is reported with their lower triangles."""
    from types import SimpleNamespace

    from bayessparse.baselines import DeepGPConfig, train_deep_gp
    from bayessparse.baselines.deep_gp import free_parameters
    from bayessparse.baselines.gp_training import load_deep_gp
    from bayessparse.workflows.study.cells import _score_deep_gp

    folder = tmp_path / "gp"
    train_deep_gp(DeepGPConfig(method="dgp", data="digits", epochs=1, num_inducing=8), folder, progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "parameters": 10**9}))
    model = load_deep_gp(folder).model
    full = sum(p.numel() for p in model.parameters())
    scored = _score_deep_gp(SimpleNamespace(gp=None), folder)["metrics"]["parameters"]
    assert scored == free_parameters(model) == metrics["parameters"] < full
