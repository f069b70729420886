"""The study's units of work: a training (a run, an ensemble, an IMP sweep or a deep GP) and what is scored on it.

Every unit lives in a folder named after its resolved configuration (a short hash of the fields
its method reads, the seed aside, then ``seed-S``; see :func:`folder_for` and, for the deep GP
baselines, :func:`gp_folder_for`), so two sections that need the same training share it, and a
re-run of the study finds finished units and skips them (unless another training version trained them:
:mod:`bayessparse.workflows.study.stale`). A unit's scores are cached in
``FOLDER/study.json``; the worker that owns the folder is its only writer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayessparse.config import TrainConfig, resolve
from bayessparse.errors import ConfigError
from bayessparse.files import write_json
from bayessparse.tasks import CLASSIFICATION, Task, named

SCORES = "study.json"


@dataclass(frozen=True)
class Cell:
    """One run folder and what to score on it.

    ``predictions`` are ``"model"``, ``"ts"`` or ``"mc"`` (:class:`bayessparse.workflows.study.rows.Row`), scored on the
    test split of a classifier, or ``"metrics"``: the run's own ``metrics.json`` (without its history), with
    the cost fields a run finished before they existed did not record measured on the finished run
    (:func:`_run_metrics`); a regression run asks for ``"metrics"`` only. ``kind`` is ``"run"``,
    ``"dst"`` / ``"edst"`` (a FreeTickets ensemble of ``members``), ``"imp"`` (a sweep of
    ``rounds`` with ``prune_fraction``) or ``"deep-gp"`` (a :class:`~bayessparse.baselines.DeepGPConfig`
    in ``config``; scored by its ``metrics.json``). ``task`` is the data set's (:mod:`bayessparse.tasks`;
    checked by :func:`check_cells` before any training).
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
    task: Task = CLASSIFICATION

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", named(self.task))  # a task's name is taken for its task

    @property
    def cfg(self) -> TrainConfig:
        return resolve(self.config)

    @property
    def gp(self) -> Any:
        """The :class:`~bayessparse.baselines.DeepGPConfig` of a ``"deep-gp"`` cell."""
        from bayessparse.baselines.gp_config import DeepGPConfig

        return DeepGPConfig.from_dict(self.config)


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


#: DeepGPConfig fields added after the first study that includes deep GPs, with the default that reproduces
#: the earlier training (the same rule as LATER_FIELDS)
GP_LATER_FIELDS: dict[str, Any] = {"n_samples": None, "trunk": None, "trunk_lr": 0.003}


def gp_folder_for(root: Path, gp: dict[str, Any]) -> str:
    """``ROOT/DATA-deep-gp/METHOD-HASH/seed-S`` of a deep GP baseline (``gp``: a DeepGPConfig's dict): the hash
    covers every field but the seed (and a field of :data:`GP_LATER_FIELDS` at its default). The network
    folders' scheme (:func:`folder_for`) is left as it was."""
    key = {k: v for k, v in gp.items() if k != "seed" and not (k in GP_LATER_FIELDS and v == GP_LATER_FIELDS[k])}
    digest = hashlib.sha1(json.dumps([key, "deep-gp"], sort_keys=True).encode()).hexdigest()[:10]
    return str(root / f"{gp['data']}-deep-gp" / f"{gp['method']}-{digest}" / f"seed-{gp['seed']}")


def merge(cells: list[Cell]) -> list[Cell]:
    """One cell per folder, scoring the union of what the cells asked for."""
    out: dict[str, Cell] = {}
    for c in cells:
        if c.folder in out:
            o = out[c.folder]
            c = Cell(c.config, c.folder, c.kind, tuple(dict.fromkeys(o.predictions + c.predictions)),
                     o.corruptions or c.corruptions, o.ood or c.ood, max(o.mc_samples, c.mc_samples), c.members, c.imp,
                     c.task)
        out[c.folder] = c
    return list(out.values())


def check_cells(cells: list[Cell]) -> None:
    """Every dataset, model and method the cells name can be built, and every data set is of the cell's task
    (a ConfigError names the first that is not)."""
    import models
    from bayessparse import data as datasets
    from bayessparse.methods import check_method
    from bayessparse.train import load_data

    def same_task(data: Any, name: str, cell: Cell) -> None:
        if data.task != cell.task:
            raise ConfigError(f"study: data '{name}' is a {data.task} set, but a {cell.task} cell uses it "
                              "(deep_gp.regression.config takes a regression set, the setups classification sets)")

    seen = set()
    for cell in cells:
        if cell.kind == "deep-gp":
            gp = cell.gp
            key = ("deep-gp", gp.data, gp.data_seed, gp.num_inducing)
            if key not in seen:
                seen.add(key)
                data = datasets.load(gp.data, data_seed=gp.data_seed)
                same_task(data, gp.data, cell)
                n = len(data.train_eval if data.train_eval is not None else data.train)
                if gp.num_inducing > n:
                    raise ConfigError(f"study field 'deep_gp.gp.num_inducing' must be <= the {n} training examples "
                                      f"of {gp.data}, got {gp.num_inducing}")
            continue
        cfg = cell.cfg
        check_method(cfg.method)
        key = (cfg.data, cfg.data_root, cfg.n_samples, cfg.label_noise, cfg.data_seed, cfg.model, cfg.width, cell.task)
        if key not in seen:
            seen.add(key)
            data = load_data(cfg)
            same_task(data, cfg.data, cell)
            models.build(cfg.model, data.num_classes, data.input_shape, width=cfg.width)


def _read(folder: Path) -> dict[str, Any]:
    path = folder / SCORES
    return json.loads(path.read_text()) if path.exists() else {}


def _missing(card: dict[str, Any] | None, cell: Cell) -> bool:
    return card is None or (cell.corruptions and "corruptions" not in card) or (cell.ood and "ood" not in card)


def _score_run(cell: Cell, folder: Path, processes: int = 1) -> dict[str, Any]:
    from bayessparse.workflows import predictors as P
    from bayessparse.train import METRICS, load_finished, train

    if not (folder / METRICS).exists() and processes > 1:
        from bayessparse.distributed import launch

        launch(cell.cfg, folder, processes)
    elif not (folder / METRICS).exists():
        train(cell.cfg, folder, resume=True, progress=False)
    scores = _read(folder)
    todo = [p for p in cell.predictions if p != "metrics" and _missing(scores.get(p), cell)]
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
    if "metrics" in cell.predictions:
        return {**scores, "metrics": _run_metrics(cell, folder, scores)}
    return scores


#: study.json's entry for the cost fields of metrics.json that a run finished before they existed lacks
COSTS = "costs"


def _metrics_json(folder: Path) -> dict[str, Any]:
    from bayessparse.train import METRICS

    return {k: v for k, v in json.loads((folder / METRICS).read_text()).items() if k != "history"}


def _run_metrics(cell: Cell, folder: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` of a finished run, with the cost fields it lacks filled in and cached in study.json.

    The non-zero parameter count of the evaluated network and its test-set inference time are measured the way
    training records them (:func:`bayessparse.train.evaluate_model`); for a classification cell scored by Monte
    Carlo over ``Z`` (prediction ``"mc"``) also the time of that predictive (``mc_inference_ms_per_example``).
    ``scores`` is the cell's study.json content, updated in place when something is measured."""
    metrics = _metrics_json(folder)
    measurable = ("parameters", "inference_ms_per_example") if cell.task.predicts_classes else ("parameters",)
    wanted = [k for k in measurable if k not in metrics]
    if cell.task.predicts_classes and "mc" in cell.predictions:
        wanted.append("mc_inference_ms_per_example")
    costs = scores.get(COSTS, {})
    if any(k not in costs for k in wanted):
        costs = {**costs, **_measure_costs(cell, folder, [k for k in wanted if k not in costs])}
        scores[COSTS] = costs
        write_json(folder / SCORES, {k: v for k, v in scores.items() if k != "metrics"})
    return {**{k: costs[k] for k in wanted}, **metrics}


def _measure_costs(cell: Cell, folder: Path, keys: list[str]) -> dict[str, float]:
    import time

    import torch

    from bayessparse.workflows import predictors as P
    from bayessparse.predict import predict_probs
    from bayessparse.train import inference_model, load_finished

    run, model = load_finished(folder)
    out: dict[str, float] = {}
    if "parameters" in keys:
        out["parameters"] = sum(int(torch.count_nonzero(p)) for p in model.parameters())  # non-zero ones
    if not cell.task.predicts_classes:
        return out
    test = run.data.test
    if "inference_ms_per_example" in keys:
        fast = inference_model(run, model)
        predict_probs(fast, run.data.val, run.cfg.eval_batch_size, run.device)  # warm, as after validation
        start = time.perf_counter()
        _, labels = predict_probs(fast, test, run.cfg.eval_batch_size, run.device)
        out["inference_ms_per_example"] = 1000 * (time.perf_counter() - start) / len(labels)
    if "mc_inference_ms_per_example" in keys:
        predict = P.mc_predictor(run, model, cell.mc_samples)
        predict(run.data.val)
        start = time.perf_counter()
        n = len(predict(test))
        out["mc_inference_ms_per_example"] = 1000 * (time.perf_counter() - start) / n
    return out


def _score_ensemble(cell: Cell, folder: Path) -> dict[str, Any]:
    from bayessparse.workflows import predictors as P
    from bayessparse.workflows.ensembles import RESULTS, ensemble, member_dir
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
    from bayessparse.workflows.imp import RESULTS, STATE, imp, resolve_settings

    settings = resolve_settings(cell.imp, epochs=cell.cfg.epochs)
    done = (folder / RESULTS).exists() and len(json.loads((folder / RESULTS).read_text())) == settings.rounds + 1
    if not done:
        imp(cell.cfg, folder, settings, resume=(folder / STATE).exists(), progress=False, echo=False)
    return {"rounds": json.loads((folder / RESULTS).read_text())}


def _score_deep_gp(cell: Cell, folder: Path) -> dict[str, Any]:
    """The run's metrics, its ``parameters`` counted from the trained model (each Cholesky factor's lower
    triangle, :func:`~bayessparse.baselines.deep_gp.free_parameters`, whatever count the run recorded when it
    trained; a folder without its checkpoint keeps the recorded one)."""
    from bayessparse.baselines.deep_gp import free_parameters
    from bayessparse.baselines.gp_training import CHECKPOINT, METRICS, load_deep_gp, train_deep_gp

    if not (folder / METRICS).exists():
        train_deep_gp(cell.gp, folder, resume=True, progress=False)
    metrics = _metrics_json(folder)
    if (folder / CHECKPOINT).exists():
        metrics["parameters"] = free_parameters(load_deep_gp(folder).model)
    return {"metrics": metrics}


def score(cell: Cell, processes: int = 1) -> dict[str, Any]:
    """Train the cell's unit if its folder holds no finished one, score what is missing; return the scores.
    ``processes`` > 1: a run trains data-parallel on that many processes (torchrun)."""
    folder = Path(cell.folder)
    if cell.kind == "run":
        return _score_run(cell, folder, processes)
    if cell.kind == "imp":
        return _score_imp(cell, folder)
    if cell.kind == "deep-gp":
        return _score_deep_gp(cell, folder)
    return _score_ensemble(cell, folder)
