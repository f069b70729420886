"""The study's units of work: a training (a run, an ensemble or an IMP sweep) and what is scored on it.

Every unit lives in a folder named after its resolved configuration (a short hash of the fields
its method reads, the seed aside, then ``seed-S``; see :func:`folder_for`), so two sections that
need the same training share it, and a re-run of the study finds finished units and skips them.
A unit's scores are cached in ``FOLDER/study.json``; the worker that owns the folder is its only
writer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayessparse.config import TrainConfig, resolve
from bayessparse.files import write_json

SCORES = "study.json"


@dataclass(frozen=True)
class Cell:
    """One run folder and what to score on it.

    ``predictions`` are ``"model"``, ``"ts"`` or ``"mc"`` (:class:`bayessparse.study.rows.Row`); ``kind`` is ``"run"``,
    ``"dst"`` / ``"edst"`` (a FreeTickets ensemble of ``members``) or ``"imp"`` (a sweep of
    ``rounds`` with ``prune_fraction``).
    """

    config: dict[str, Any]
    folder: str
    kind: str = "run"
    predictions: tuple[str, ...] = ("model",)
    corruptions: bool = False
    ood: bool = False
    mc_samples: int = 16
    members: int = 1
    imp: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> TrainConfig:
        return resolve(self.config)


#: config fields that only some methods read; the others' folders do not depend on them
METHOD_FIELDS = {
    "drop_rate": ("cigl", "cigl-pa", "rigl-wdp"),
    "averaging_start": ("cigl", "cigl-pa", "vcigl"),
    "guide": ("vcigl",),
    "keep_prior": ("vcigl",),
    "keep_init": ("vcigl",),
    "keep_shape": ("vcigl",),
    "keep_temperature": ("vcigl",),
    "explore_c": ("dst-ee",),
}


#: config fields added after the first study, with the default that reproduces the earlier training: a field
#: at that default stays out of the hash, so adding a field to the config never orphans finished runs
LATER_FIELDS = {"kernels": "dense", "fused_mask": False}


def folder_for(root: Path, cfg: TrainConfig, kind: str = "run", extra: dict[str, Any] | None = None) -> str:
    """``ROOT/DATA-MODEL/KIND-METHOD-HASH/seed-S``: the hash covers every config field the method reads but
    the seed (so a new default for, say, CigL's drop rate leaves the other methods' finished runs valid),
    and a field of :data:`LATER_FIELDS` only when it is not at its default."""
    key = {k: v for k, v in cfg.to_dict().items()
           if k != "seed" and cfg.method in METHOD_FIELDS.get(k, (cfg.method,))
           and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    if cfg.method == "dense":
        key.pop("sparsity")
    digest = hashlib.sha1(json.dumps([key, kind, extra or {}], sort_keys=True).encode()).hexdigest()[:10]
    name = cfg.method if kind == "run" else f"{kind}-{cfg.method}"
    return str(root / f"{cfg.data}-{cfg.model}" / f"{name}-{digest}" / f"seed-{cfg.seed}")


def merge(cells: list[Cell]) -> list[Cell]:
    """One cell per folder, scoring the union of what the cells asked for."""
    out: dict[str, Cell] = {}
    for c in cells:
        if c.folder in out:
            o = out[c.folder]
            c = Cell(c.config, c.folder, c.kind, tuple(dict.fromkeys(o.predictions + c.predictions)),
                     o.corruptions or c.corruptions, o.ood or c.ood, max(o.mc_samples, c.mc_samples), c.members, c.imp)
        out[c.folder] = c
    return list(out.values())


def check_cells(cells: list[Cell]) -> None:
    """Every dataset, model and method the cells name can be built (a ConfigError names the first that cannot)."""
    import models
    from bayessparse.methods import check_method
    from bayessparse.train import load_data

    seen = set()
    for cell in cells:
        cfg = cell.cfg
        check_method(cfg.method)
        key = (cfg.data, cfg.data_root, cfg.n_samples, cfg.label_noise, cfg.data_seed, cfg.model, cfg.width)
        if key not in seen:
            seen.add(key)
            data = load_data(cfg)
            models.build(cfg.model, data.num_classes, data.input_shape, width=cfg.width)


def _read(folder: Path) -> dict[str, Any]:
    path = folder / SCORES
    return json.loads(path.read_text()) if path.exists() else {}


def _missing(card: dict[str, Any] | None, cell: Cell) -> bool:
    return card is None or (cell.corruptions and "corruptions" not in card) or (cell.ood and "ood" not in card)


def _score_run(cell: Cell, folder: Path) -> dict[str, Any]:
    from bayessparse import predictors as P
    from bayessparse.train import METRICS, load_finished, train

    if not (folder / METRICS).exists():
        train(cell.cfg, folder, resume=True, progress=False)
    scores = _read(folder)
    todo = [p for p in cell.predictions if _missing(scores.get(p), cell)]
    if todo:
        run, model = load_finished(folder)
        base = P.model_predictor(run, model)
        for p in todo:
            extra: dict[str, Any] = {}
            if p == "model":
                predict = base
            elif p == "ts":
                predict, extra["temperature"] = P.temperature_scaled(run, base)
            else:
                predict, extra["samples"] = P.mc_predictor(run, model, cell.mc_samples), cell.mc_samples
            extra.update(run.method.summary())  # e.g. vcigl's learned keep probabilities
            scores[p] = {**P.scorecard(run, predict, corruptions=cell.corruptions, ood=cell.ood), **extra}
        write_json(folder / SCORES, scores)
    return scores


def _score_ensemble(cell: Cell, folder: Path) -> dict[str, Any]:
    from bayessparse import predictors as P
    from bayessparse.ensembles import RESULTS, ensemble, member_dir
    from bayessparse.train import load_finished

    if not (folder / RESULTS).exists():
        ensemble(cell.cfg, cell.kind, cell.members, folder, dense_reference=None, progress=False)
    scores = _read(folder)
    if _missing(scores.get("model"), cell):
        result = json.loads((folder / RESULTS).read_text())
        loaded = [load_finished(member_dir(folder, i)) for i in range(cell.members)]
        predict = P.ensemble_predictor([P.model_predictor(run, model) for run, model in loaded])
        card = P.scorecard(loaded[0][0], predict, corruptions=cell.corruptions, ood=cell.ood)
        scores["model"] = {**card, "cost": result["cost"], "diversity": result["diversity"],
                           "members": [m["accuracy"] for m in result["members"]]}
        write_json(folder / SCORES, scores)
    return scores


def _score_imp(cell: Cell, folder: Path) -> dict[str, Any]:
    from bayessparse.sparsity.imp import RESULTS, STATE, imp, resolve_settings

    settings = resolve_settings(cell.imp, epochs=cell.cfg.epochs)
    done = (folder / RESULTS).exists() and len(json.loads((folder / RESULTS).read_text())) == settings.rounds + 1
    if not done:
        imp(cell.cfg, folder, settings, resume=(folder / STATE).exists(), progress=False, echo=False)
    return {"rounds": json.loads((folder / RESULTS).read_text())}


def score(cell: Cell) -> dict[str, Any]:
    """Train the cell's unit if its folder holds no finished one, score what is missing; return the scores."""
    folder = Path(cell.folder)
    if cell.kind == "run":
        return _score_run(cell, folder)
    if cell.kind == "imp":
        return _score_imp(cell, folder)
    return _score_ensemble(cell, folder)
