"""Cached study cells follow the code: every finished unit's recorded training version is checked against the
current one (a stale cell is trained again by default, kept and reported with ``--reuse-stale``), and the
study's machine-readable record of its cells, ``results.json``."""

import json
from pathlib import Path

import pytest

from bayessparse.cli import main
from bayessparse.errors import ConfigError
from bayessparse.folders import LOCK, exclusive
from bayessparse.workflows.study import run_study
from bayessparse.workflows.study.cells import SCORES, Cell
from bayessparse.workflows.study.records import records_text
from bayessparse.workflows.study.stale import remove_unit, scan
from bayessparse.version import TRAINING_VERSION

V = TRAINING_VERSION

TINY = """
seeds: [0]
base: {data: digits, model: mlp, width: 0.25, epochs: 1, update_interval: 5}
calibration:
  setups:
    mlp: {}
  sparsities: [0.9]
  rows: [dense, rigl, cigl]
"""


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def _units(root: Path) -> dict[str, Cell]:
    """One finished unit of each kind, with the files training and scoring write, at the current version."""
    run = Cell({"data": "d", "model": "m", "method": "rigl", "seed": 0}, str(root / "d-m" / "rigl-1" / "seed-0"))
    folder = Path(run.folder)
    _write(folder / "metrics.json", {"accuracy": 0.1 + 0.2, "nll": 1 / 3, "parameters": 123, "method": "rigl",
                                     "world_size": 1, "training_version": V, "history": [{"epoch": 1}],
                                     "rank_weight_checksums": [1, 2]})
    _write(folder / "checkpoint.pt", "weights")
    _write(folder / SCORES, {"model": {"test": {"accuracy": 0.3}}})

    dst = Cell({"data": "d", "model": "m", "method": "rigl", "seed": 0}, str(root / "d-m" / "dst-rigl-2" / "seed-0"),
               "dst", members=2)
    folder = Path(dst.folder)
    for i in range(2):
        _write(folder / f"member-{i}" / "metrics.json", {"accuracy": 0.8 + i / 100, "training_version": V})
        _write(folder / f"member-{i}" / "checkpoint.pt", "weights")
    _write(folder / "ensemble.json", {"kind": "dst", "name": "DST(RigL) x2", "seed": 0, "plan": None,
                                      "members": [{"accuracy": 0.8}, {"accuracy": 0.81}],
                                      "ensemble": {"accuracy": 0.825, "nll": 0.5, "n_test": 360},
                                      "diversity": {"disagreement": 0.1}, "cost": {"flops_proxy": 0.2}})
    _write(folder / SCORES, {"model": {"test": {"accuracy": 0.825}}})

    imp = Cell({"data": "d", "model": "m", "method": "dense", "seed": 0}, str(root / "d-m" / "imp-dense-3" / "seed-0"),
               "imp", imp={"rounds": 2, "prune_fraction": 0.2})
    folder = Path(imp.folder)
    _write(folder / "imp.json", [{"round": r, "density": 0.8 ** r, "test_error": 0.1 * r, "training_version": V}
                                 for r in range(3)])
    _write(folder / "imp_state.pt", "state")

    gp_config = {"method": "dgp", "data": "digits", "seed": 0, "epochs": 2, "hidden_dims": 3}
    gp = Cell(gp_config, str(root / "digits-deep-gp" / "dgp-4" / "seed-0"), "deep-gp", ("metrics",))
    _write(Path(gp.folder) / "metrics.json", {"method": "dgp", "nll": 0.25, "training_version": V, "history": []})
    return {"run": run, "dst": dst, "imp": imp, "deep-gp": gp}


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_a_unit_is_stale_when_any_finished_part_recorded_another_version_or_none(tmp_path):
    units = _units(tmp_path / "runs")
    cells = list(units.values())
    assert scan(cells) == []  # all at the current version
    # a run made before versions were recorded, one ensemble member, one IMP round, a deep GP of a later version
    _edit(Path(units["run"].folder) / "metrics.json", lambda r: r.pop("training_version"))
    _edit(Path(units["dst"].folder) / "member-1" / "metrics.json", lambda r: r.update(training_version=V - 1))
    _edit(Path(units["imp"].folder) / "imp.json", lambda r: r[1].update(training_version=V - 1))
    _edit(Path(units["deep-gp"].folder) / "metrics.json", lambda r: r.update(training_version=V + 1))
    found = {s.folder: s.versions for s in scan(cells)}
    assert found == {units["run"].folder: (None,), units["dst"].folder: (V - 1,), units["imp"].folder: (V - 1,),
                     units["deep-gp"].folder: (V + 1,)}


def test_a_unit_with_nothing_finished_is_not_stale(tmp_path):
    root = tmp_path / "runs"
    started = Cell({"method": "rigl"}, str(root / "d-m" / "rigl-5" / "seed-0"))
    _write(Path(started.folder) / "checkpoint.pt", "half a run")
    ensemble = Cell({"method": "rigl"}, str(root / "d-m" / "edst-rigl-6" / "seed-0"), "edst", members=3)
    _write(Path(ensemble.folder) / "member-0" / "metrics.json", {"training_version": V})  # one member so far
    missing = Cell({"method": "rigl"}, str(root / "d-m" / "rigl-7" / "seed-0"))
    assert scan([started, ensemble, missing]) == []
    _edit(Path(ensemble.folder) / "member-0" / "metrics.json", lambda r: r.update(training_version=V - 1))
    assert [s.folder for s in scan([started, ensemble, missing])] == [ensemble.folder]  # its finished member


def test_a_stale_unit_is_removed_in_the_runs_folder_only_and_never_under_a_live_writer(tmp_path):
    root = tmp_path / "runs"
    units = _units(root)
    dst = Path(units["dst"].folder)
    remove_unit(dst, root)
    assert [p.name for p in dst.iterdir()] == [LOCK]  # members, ensemble.json and the cached scores are gone

    outside = tmp_path / "elsewhere" / "seed-0"
    _write(outside / "metrics.json", {"training_version": 0})
    with pytest.raises(ConfigError, match="not a folder of the study's runs"):
        remove_unit(outside, root)
    with pytest.raises(ConfigError, match="not a folder of the study's runs"):
        remove_unit(root, root)
    link = root / "d-m" / "rigl-8" / "seed-0"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(units["run"].folder), target_is_directory=True)
    with pytest.raises(ConfigError, match="link"):
        remove_unit(link, root)
    assert (outside / "metrics.json").exists() and (Path(units["run"].folder) / "metrics.json").exists()

    imp = Path(units["imp"].folder)
    with exclusive(imp, "run an IMP sweep"):
        with pytest.raises(ConfigError, match="another process is writing it"):
            remove_unit(imp, root)
    assert (imp / "imp.json").exists() and (imp / "imp_state.pt").exists()


def test_results_json_records_every_unit_compactly_with_its_exact_numbers(tmp_path):
    root = tmp_path / "runs"
    units = _units(root)
    _edit(Path(units["dst"].folder) / "member-1" / "metrics.json", lambda r: r.update(training_version=V - 1))
    text = records_text(list(units.values()), root)
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 2 + len(units)  # one line per unit
    assert not any(line.startswith(" ") for line in lines) and "0.30000000000000004" in text
    run, dst, imp, gp = json.loads(text)

    assert run == {"folder": "d-m/rigl-1/seed-0", "kind": "run", "training_version": V,
                   "config": units["run"].config,
                   "metrics": {"accuracy": 0.1 + 0.2, "nll": 1 / 3, "parameters": 123, "method": "rigl",
                               "world_size": 1, "training_version": V}}  # no history, no lists
    assert dst["folder"] == "d-m/dst-rigl-2/seed-0" and dst["kind"] == "dst" and dst["members"] == 2
    assert dst["training_version"] == [V - 1, V]  # the members disagree
    assert dst["metrics"] == {"kind": "dst", "name": "DST(RigL) x2", "seed": 0, "plan": None, "accuracy": 0.825,
                              "nll": 0.5, "n_test": 360}
    assert imp["kind"] == "imp" and imp["imp"] == {"rounds": 2, "prune_fraction": 0.2}
    assert imp["metrics"] == {"round": 2, "density": 0.8 ** 2, "test_error": 0.2, "training_version": V}
    assert gp == {"folder": "digits-deep-gp/dgp-4/seed-0", "kind": "deep-gp", "training_version": V,
                  "config": units["deep-gp"].config, "metrics": {"method": "dgp", "nll": 0.25, "training_version": V}}


def _untimed(records: list[dict]) -> list[dict]:
    times = ("train_seconds", "inference_ms_per_example")
    return [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k not in times}} for r in records]


def _rel(folder: Path, root: Path) -> str:
    return folder.relative_to(root).as_posix()


@pytest.mark.slow
def test_a_stale_cell_is_kept_with_reuse_stale_and_retrained_by_default(tmp_path, capsys):
    spec, out, docs = tmp_path / "study.yaml", tmp_path / "study", tmp_path / "docs"
    spec.write_text(TINY)
    docs.mkdir()
    first = run_study(spec, out, docs=docs, progress=False)
    assert first["cells"] == 3 and first["stale_retrained"] == 0 and first["stale_kept"] == 0
    root = out / "runs"
    records = json.loads((out / "results.json").read_text())
    assert (docs / "results.json").read_text() == (out / "results.json").read_text()
    stale = next(p for p in root.glob("digits-mlp/rigl-*/seed-0"))
    fresh = next(p for p in root.glob("digits-mlp/cigl-*/seed-0"))
    recorded = json.loads((stale / "metrics.json").read_text())
    by_folder = {r["folder"]: r for r in records}
    assert len(by_folder) == 3 and {_rel(stale, root), _rel(fresh, root)} < set(by_folder)
    assert by_folder[_rel(stale, root)]["training_version"] == V
    assert by_folder[_rel(stale, root)]["metrics"] == {k: v for k, v in recorded.items() if k != "history"}

    # the RigL cell as if trained by other code; its cached scores marked so that their use shows in the report
    _edit(stale / "metrics.json", lambda r: r.update(training_version=V - 1))
    _edit(stale / SCORES, lambda s: s["model"]["test"].update(accuracy=0.123456))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("checkpoint.pt")}

    code = main(["study", "--config", str(spec), "--out", str(out), "--docs", str(docs), "--jobs", "1",
                 "--no-progress", "--reuse-stale"])
    printed = capsys.readouterr().out
    assert code == 0 and "1 of 3 cells" in printed and f"version {V - 1}" in printed
    assert {p: p.stat().st_mtime_ns for p in root.rglob("checkpoint.pt")} == stamps  # nothing trained
    report = (docs / "results.md").read_text()
    head = report.split("\n## ", 1)[0]  # above the verdicts and the sections
    assert "1 of 3 cells were trained by another training version" in head and f"version {V - 1}" in head
    assert "0.1235" in report  # the kept cell's cached scores were used
    assert {r["folder"]: r["training_version"] for r in json.loads((docs / "results.json").read_text())}[
        _rel(stale, root)] == V - 1

    # the default: the stale cell is trained again, its cached scores dropped; the other cell is kept
    second = run_study(spec, out, progress=False)
    assert second["stale_retrained"] == 1 and second["stale_kept"] == 0
    assert (stale / "checkpoint.pt").stat().st_mtime_ns != stamps[stale / "checkpoint.pt"]
    assert (fresh / "checkpoint.pt").stat().st_mtime_ns == stamps[fresh / "checkpoint.pt"]
    assert json.loads((stale / "metrics.json").read_text())["training_version"] == V
    report = (out / "results.md").read_text()
    assert "another training version" not in report and "0.1235" not in report
    assert _untimed(json.loads((out / "results.json").read_text())) == _untimed(records)  # the same numbers

    stamp = (stale / "checkpoint.pt").stat().st_mtime_ns
    third = run_study(spec, out, progress=False)
    assert third["stale_retrained"] == 0 and (stale / "checkpoint.pt").stat().st_mtime_ns == stamp
