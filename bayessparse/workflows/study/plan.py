"""From a study specification to its cells: which trainings each section needs and what to score.

Each ``*_cells`` function returns the section's cells; :func:`plan` merges them (a training two
sections share is one cell). The same functions name the folders the report reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bayessparse.config import TrainConfig, resolve
from bayessparse.tasks import CLASSIFICATION, REGRESSION, Task
from bayessparse.workflows.study.cells import Cell, folder_for, gp_folder_for, merge
from bayessparse.workflows.study.rows import ROWS
from bayessparse.workflows.study.spec import StudySpec


def row_fields(row: str, sparsity: float, seed: int, **changes) -> dict[str, Any]:
    """The config fields ``row`` sets on top of a setup's (dense ignores the sparsity)."""
    r = ROWS[row]
    fields = {**r.changes, **changes, "method": r.method, "seed": seed}
    if r.method != "dense":
        fields["sparsity"] = sparsity
    return fields


def row_config(spec: StudySpec, setup: str, row: str, sparsity: float, seed: int, **changes):
    """The config of ``row``'s runs in ``setup`` at ``sparsity`` (dense ignores the sparsity)."""
    return spec.config(setup, **row_fields(row, sparsity, seed, **changes))


def row_cell(spec: StudySpec, root: Path, setup: str, row: str, sparsity: float, seed: int, *,
             corruptions: bool = False, ood: bool = False, **changes) -> Cell:
    cfg = row_config(spec, setup, row, sparsity, seed, **changes)
    return Cell(cfg.to_dict(), folder_for(root, cfg), predictions=(ROWS[row].predict,), corruptions=corruptions,
                ood=ood, mc_samples=spec.mc_samples)


def calibration_cells(spec: StudySpec, root: Path) -> list[Cell]:
    c = spec.calibration
    if c is None:
        return []
    return [row_cell(spec, root, setup, row, s, seed, corruptions=setup in c.corruptions)
            for setup in c.setups for row in c.rows for s in c.sparsities for seed in spec.seeds]


def drop_rate_cells(spec: StudySpec, root: Path) -> list[Cell]:
    d = spec.drop_rate
    if d is None:
        return []
    cells = []
    for setup in d.setups:
        for s in d.sparsities:
            for seed in spec.seeds:
                cells.append(row_cell(spec, root, setup, "rigl", s, seed))
                cells += [row_cell(spec, root, setup, "cigl", s, seed, drop_rate=r) for r in d.rates]
    return cells


def variational_cells(spec: StudySpec, root: Path) -> list[Cell]:
    v, d = spec.variational, spec.drop_rate
    if v is None:
        return []
    return [row_cell(spec, root, setup, row, s, seed, keep_prior=prior) for row in ("vcigl", "vcigl+mc")
            for setup in d.setups for s in d.sparsities for seed in spec.seeds for prior in v.priors]


def freetickets_cells(spec: StudySpec, root: Path) -> dict[str, list[Cell]]:
    """Row name -> one cell per seed: a dense model, a dense ensemble, DST and EDST ensembles."""
    f = spec.freetickets
    if f is None:
        return {}
    rows: dict[str, list[Cell]] = {}
    for seed in spec.seeds:
        single = row_cell(spec, root, f.setup, "dense", f.sparsity, seed, corruptions=True, ood=True)
        rows.setdefault("dense", []).append(single)
        for name, kind, method, first in (
            (f"dense x{f.members}", "dst", "dense", seed * f.members),
            (f"DST({ROWS[f.method].label}) x{f.members}", "dst", f.method, seed * f.members),
            (f"EDST({ROWS[f.method].label}) x{f.members}", "edst", f.method, seed),
        ):
            cfg = spec.config(f.setup, method=method, sparsity=f.sparsity, seed=first)
            folder = folder_for(root, cfg, kind, {"members": f.members})
            rows.setdefault(name, []).append(Cell(cfg.to_dict(), folder, kind, corruptions=True, ood=True,
                                                  members=f.members))
    return rows


def imp_cells(spec: StudySpec, root: Path) -> dict[tuple[str, float], list[Cell]]:
    """(study name, width) -> one IMP sweep per seed."""
    out: dict[tuple[str, float], list[Cell]] = {}
    for study in spec.imp:
        for width in study.widths:
            for seed in spec.seeds:
                cfg = resolve(spec.base, study.config, {"width": width, "seed": seed, "method": "dense"})
                settings = {"rounds": study.rounds, "prune_fraction": study.prune_fraction}
                cell = Cell(cfg.to_dict(), folder_for(root, cfg, "imp", settings), "imp", imp=settings)
                out.setdefault((study.name, width), []).append(cell)
    return out


#: a deep GP section's group: ``(task, setup)``; the regression setup is named after its data set
Group = tuple[Task, str]


def deep_gp_config(spec: StudySpec, cfg: TrainConfig, method: str, seed: int) -> Any:
    """The deep GP baseline next to the network config ``cfg``: its data, split and ECE bins, the study's
    ``seed``, the section's ``gp`` fields, :class:`~bayessparse.baselines.DeepGPConfig`'s defaults otherwise; SV-DKL's
    trunk is the networks' model."""
    from bayessparse.baselines.gp_config import DeepGPConfig

    return DeepGPConfig.from_dict({**spec.deep_gp.gp, "method": method, "data": cfg.data, "data_seed": cfg.data_seed,
                                   "n_samples": cfg.n_samples, "seed": seed, "ece_bins": cfg.ece_bins,
                                   "trunk": cfg.model if method == "svdkl" else None})


def deep_gp_groups(spec: StudySpec) -> dict[Group, tuple[dict[str, Any], tuple[str, ...]]]:
    """``(task, setup) -> (config fields over base, network rows)`` of the deep GP section, classification
    setups first."""
    g = spec.deep_gp
    if g is None:
        return {}
    groups = {(CLASSIFICATION, name): (fields, g.rows) for name, fields in g.setups.items()}
    if g.regression is not None:
        name = resolve(spec.base, g.regression).data
        groups[(REGRESSION, name)] = (g.regression, g.regression_rows)
    return groups


def deep_gp_cells(spec: StudySpec, root: Path) -> dict[Group, dict[str, list[Cell]]]:
    """``(task, setup) -> row -> one cell per seed``: the network rows (keys of ROWS) at the section's sparsity,
    then the deep GP rows (their methods, ``"dgp"`` / ``"dspp"``) on the same data, split and seeds.

    A classification setup's network cell is :func:`row_cell`'s (the calibration section's folder when the
    setup is one of its) and also reads ``metrics.json`` for the costs; a regression network cell only reads
    ``metrics.json``; a deep GP cell lives in :func:`~bayessparse.workflows.study.cells.gp_folder_for`'s folder."""
    g = spec.deep_gp
    out: dict[Group, dict[str, list[Cell]]] = {}
    for (task, name), (fields, rows) in deep_gp_groups(spec).items():
        group = out.setdefault((task, name), {})
        for row in rows:
            for seed in spec.seeds:
                cfg = resolve(spec.base, fields, row_fields(row, g.sparsity, seed))
                predictions = (ROWS[row].predict, "metrics") if task.predicts_classes else ("metrics",)
                group.setdefault(row, []).append(Cell(cfg.to_dict(), folder_for(root, cfg), predictions=predictions,
                                                      mc_samples=spec.mc_samples, task=task))
        for method in g.methods:
            for seed in spec.seeds:
                cfg = resolve(spec.base, fields, {"seed": seed})
                gp = deep_gp_config(spec, cfg, method, seed).to_dict()
                group.setdefault(method, []).append(Cell(gp, gp_folder_for(root, gp), "deep-gp", ("metrics",),
                                                         task=task))
    return out


def plan(spec: StudySpec, root: Path) -> list[Cell]:
    """Every cell of the study, merged; the cheapest kinds first so that early tables fill in soon."""
    cells = calibration_cells(spec, root) + drop_rate_cells(spec, root) + variational_cells(spec, root)
    cells += [c for cs in freetickets_cells(spec, root).values() for c in cs]
    cells += [c for cs in imp_cells(spec, root).values() for c in cs]
    cells += [c for rows in deep_gp_cells(spec, root).values() for cs in rows.values() for c in cs]
    return merge(cells)
