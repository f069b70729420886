"""Methods side by side: every (method, seed) pair trained from one base config, then tabulated.

Layout of the output folder::

    OUT/results.json                 {"runs": [metrics records], "summary": {method: {metric: {mean, std, ci95, n}}}}
    OUT/table.md                     the printed table: mean ± 95 % confidence half-width over seeds
    OUT/reliability-METHOD.png       reliability diagram of each method (test predictions pooled over seeds;
                                     for regression data the calibration of its central intervals)
    OUT/reliability-overlay.png      all methods on one set of axes
    OUT/METHOD/seed-S/               one run folder per pair (the train run-folder contract)
    OUT/KIND-METHOD-xM/seed-S/       one ensemble folder per (ensemble entry, seed) (see bayessparse.workflows.ensembles)

An entry of ``methods`` is a method (``cigl``: one run per seed), a method with post-hoc temperature
scaling (``rigl+ts``: the same runs as ``rigl``, ``T`` fitted on the validation split), or a FreeTickets ensemble:
``edst:METHOD:M`` (EDST, one run with M phases), ``dst:METHOD:M`` (M independent runs) and
``METHOD:M`` for ``dst:METHOD:M`` (``dense:3`` is a deep ensemble). Ensemble rows are named
``EDST(RigL) x3``, ``DST(CigL) x3``, ``dense x3``; their accuracy / nll / ece / brier are those of the
ensemble, density is the mean member density and train_seconds the total. For seed ``S`` a DST
ensemble's members use seeds ``S*M .. S*M+M-1`` (ensembles of different seeds share no member) and
an EDST run uses seed ``S``.

On a regression dataset (``diabetes``) the table reports RMSE, NLL and the coverage of the central 50 / 90 /
95 % intervals instead of accuracy, ECE and Brier (:mod:`bayessparse.regressors`); temperature scaling and
ensembles are classification-only there.

Re-running the same command continues interrupted runs and re-uses finished ones. ``workers`` trainings
run side by side, one process each (the numbers do not depend on it).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


from bayessparse.config import TrainConfig, resolve
from bayessparse.workflows.ensembles import KINDS, PREDICTIONS, ensemble, ensemble_name, ensemble_probs
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import load_torch, write_json, write_text
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.methods import METHODS, check_method
from bayessparse.jobs import run_jobs
from bayessparse.data import task_of
from bayessparse.tasks import CLASSIFICATION, REGRESSION, ClassPredictions, Task
from bayessparse.distributed import launch
from bayessparse.workflows.predictors import labels_of, model_predictor, temperature_scaled
from bayessparse.stats import interval
from bayessparse.rng import preserved_random_state
from bayessparse.train import METRICS, build_run, load_data, load_finished, train
from bayessparse.uncertainty.metrics import summary as test_summary

DEFAULT_METHODS = ("dense", "rigl", "rigl+ts", "cigl")
TEMPERATURE_SUFFIX = "+ts"
#: compare's own defaults, under a YAML file and the flags: the main job trains long enough for sparse
#: training to turn over-confident (at 10 epochs every method is still under-confident; README and
#: docs/results.md), and stays within a few minutes on 2 cores; ``train`` keeps the short default.
COMPARE_DEFAULTS: dict[str, Any] = {"epochs": 50}
#: On a regression dataset, on top of COMPARE_DEFAULTS: the setting with the lowest validation NLL of the
#: sweep in experiments/regression_sweep.md (RigL and CigL at 90 %, three seeds; the test split unseen).
REGRESSION_DEFAULTS: dict[str, Any] = {"model": "mlp", "epochs": 100, "batch_size": 32, "lr": 0.05,
                                       "weight_decay": 0.05}
#: compare's defaults by task, on top of COMPARE_DEFAULTS (:func:`task_defaults`)
TASK_DEFAULTS: dict[Task, dict[str, Any]] = {REGRESSION: REGRESSION_DEFAULTS}
#: The table of a classification dataset; a regression dataset's reports the predictive's RMSE, NLL and
#: central-interval coverage (:attr:`bayessparse.tasks.Task.columns`).
TABLE_METRICS = CLASSIFICATION.columns
REGRESSION_METRICS = REGRESSION.columns
#: With deep GP rows (``--with-deep-gp``) every row also reports its cost to predict and its size.
COST_METRICS = ("inference_ms_per_example", "parameters")
#: The deep GP baselines ``--with-deep-gp`` adds (:mod:`bayessparse.baselines`), by row name.
#: the rows of ``--with-deep-gp``: two deep GPs on the raw inputs, and a GP on the features of the runs' own network
DEEP_GPS = {"DGP (raw inputs)": "dgp", "DSPP (raw inputs)": "dspp", "SV-DKL": "svdkl"}
#: The fields of the deep GP rows' config that compare sets itself (the networks' data, split, seeds and bins),
#: with where each comes from; ``--deep-gp-set`` refuses them.
DEEP_GP_SET_BY_COMPARE = {
    "method": "one row per method: DGP, DSPP and SV-DKL",
    "trunk": "the networks' --model",
    "data": "from --data",
    "data_seed": "from --set data_seed",
    "n_samples": "from --n-samples",
    "seed": "from --seeds",
    "ece_bins": "from --set ece_bins",
}


def task_defaults(data: str) -> dict[str, Any]:
    """compare's defaults for dataset ``data`` on top of :data:`COMPARE_DEFAULTS` (its task's)."""
    return TASK_DEFAULTS.get(task_of(data), {})


def default_methods(task: Task = CLASSIFICATION) -> list[str]:
    """dense, RigL, RigL + temperature scaling (where the task takes it) and CigL: those of them that are registered."""
    methods = [m for m in DEFAULT_METHODS if m.removesuffix(TEMPERATURE_SUFFIX) in METHODS]
    return [m for m in methods if not m.endswith(TEMPERATURE_SUFFIX) or "ts" in task.posthoc]


@dataclass(frozen=True)
class Entry:
    """One row of the table: a method (``kind=None``, one run per seed) or an ensemble of ``members``;
    ``temperature``: the same runs, temperature-scaled on the validation split (no extra training)."""

    method: str
    kind: str | None = None
    members: int = 1
    temperature: bool = False

    @property
    def name(self) -> str:
        """The row name: the method, ``rigl+ts``, e.g. ``EDST(RigL) x3``, or a deep GP (``DGP``, ``DSPP``)."""
        if self.kind == "deep-gp":
            return next(name for name, method in DEEP_GPS.items() if method == self.method)
        if self.kind is not None:
            return ensemble_name(self.kind, self.method, self.members)
        return self.method + (TEMPERATURE_SUFFIX if self.temperature else "")

    @property
    def label(self) -> str:
        """The row's name in file names."""
        return self.folder + (TEMPERATURE_SUFFIX if self.temperature else "")

    @property
    def folder(self) -> str:
        if self.kind == "deep-gp":
            return f"deep-gp-{self.method}"
        return self.method if self.kind is None else f"{self.kind}-{self.method}-x{self.members}"

    @property
    def job(self) -> str:
        """What trains the row: a ``run``, an ``ensemble`` or a ``deep-gp``."""
        return "run" if self.kind is None else ("deep-gp" if self.kind == "deep-gp" else "ensemble")


def deep_gp_entries() -> list[Entry]:
    """The rows of ``--with-deep-gp``: a two-layer deep GP and a DSPP on the raw inputs, and SV-DKL on the
    features of the networks' model."""
    return [Entry(method, kind="deep-gp") for method in DEEP_GPS.values()]


def parse_entry(text: str) -> Entry:
    """``rigl`` | ``rigl+ts`` | ``edst:rigl:3`` | ``dst:cigl:3`` | ``dense:3`` (= ``dst:dense:3``), checked."""
    if text.endswith(TEMPERATURE_SUFFIX):
        base = parse_entry(text[: -len(TEMPERATURE_SUFFIX)])
        if base.kind is not None or base.temperature:
            raise ConfigError(f"bad --methods entry {text!r}: '+ts' follows a single method, e.g. rigl+ts")
        return Entry(base.method, temperature=True)
    parts = [p.strip() for p in text.split(":")]
    if len(parts) == 1:
        check_method(parts[0])
        return Entry(parts[0])
    if len(parts) not in (2, 3):
        raise ConfigError(f"bad --methods entry {text!r} (use METHOD, METHOD:M, dst:METHOD:M or edst:METHOD:M)")
    kind, method, count = parts if len(parts) == 3 else ("dst", *parts)
    if kind not in KINDS:
        raise ConfigError(f"unknown ensemble kind '{kind}' in {text!r} (choose from: {', '.join(KINDS)})")
    check_method(method)
    if not count.isdigit() or int(count) < 2:
        raise ConfigError(f"the number of members in {text!r} must be an integer >= 2")
    if kind == "edst" and method == "dense":
        raise ConfigError(f"{text!r}: EDST needs a sparse method")
    return Entry(method, kind, int(count))


def _ensemble_record(base: TrainConfig, entry: Entry, seed: int, folder: Path, progress: bool) -> dict[str, Any]:
    """Train / resume one ensemble of the table and flatten its result into a table record."""
    cfg = base.replace(method=entry.method, seed=seed * entry.members if entry.kind == "dst" else seed)
    result = ensemble(cfg, entry.kind, entry.members, folder, dense_reference=None, progress=progress)
    members = result["members"]
    return {
        **{k: result["ensemble"][k] for k in ("accuracy", "nll", "ece", "brier")},
        "method": entry.name,
        "kind": entry.kind,
        "base_method": entry.method,
        "members": entry.members,
        "member_seeds": [m["seed"] for m in members],
        "density": statistics.fmean(m["density"] for m in members),
        "parameters": sum(m.get("parameters", math.nan) for m in members),  # an ensemble keeps every member
        "inference_ms_per_example": sum(m.get("inference_ms_per_example", math.nan) for m in members),
        "train_seconds": result["cost"]["train_seconds"],
        "flops_proxy": result["cost"]["flops_proxy"],
        "sparsity": cfg.effective_sparsity,
        "seed": seed,
        "epochs": result["cost"]["epochs"],
        "data": cfg.data,
        "model": cfg.model,
        "diversity": result["diversity"],
        "mask_overlap": result["mask_overlap"]["mean"],
    }


def table_metrics(task: Task, with_costs: bool) -> tuple[str, ...]:
    """The columns of the table: the task's (:attr:`bayessparse.tasks.Task.columns`), then the cost columns."""
    return task.columns + COST_METRICS if with_costs else task.columns


def summarise(records: Sequence[dict[str, Any]],
              metrics: Sequence[str] = TABLE_METRICS) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and table metric over seeds: the mean, the (sample) standard deviation and the
    half-width ``ci95`` of the 95 % Student-t confidence interval of the mean (:func:`bayessparse.stats.interval`;
    nan for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        out[method] = {}
        for key in metrics:
            values = [float(r.get(key, math.nan)) for r in rows]  # nan: a run saved before the metric existed
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ci = interval(values)
            out[method][key] = {"mean": ci.mean, "std": std, "ci95": ci.half_width, "n": len(values)}
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of mean ± 95 % confidence half-width per method (the metrics the summary holds, in
    its order; the mean alone for one seed)."""
    metrics = list(next(iter(summary.values()))) if summary else list(TABLE_METRICS)
    header = "| method | " + " | ".join(metrics) + " |"
    rule = "|---" * (len(metrics) + 1) + "|"
    lines = [header, rule]
    for method, stats in summary.items():
        cells = []
        for key in metrics:
            digits = {"train_seconds": 1, "parameters": 0, "inference_ms_per_example": 3}.get(key, 4)
            mean, half = stats[key]["mean"], stats[key]["ci95"]
            cells.append(f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_predictions(run_dir: Path, entry: Entry | None = None) -> Any:
    """The test predictions of a finished row in its task's form (:mod:`bayessparse.tasks`): of a run, its
    evaluated model's; of an ensemble, the mean of its members' probabilities; of a ``+ts`` entry, the
    temperature-scaled probabilities; of a deep GP, its predictive."""
    if entry is not None and entry.kind == "deep-gp":
        from bayessparse.baselines import load_deep_gp

        from bayessparse.data import load

        predictor = load_deep_gp(run_dir)
        data = load(predictor.cfg.data, data_seed=predictor.cfg.data_seed)
        return data.task.gp_predictions(predictor.predict(data.test), data.target_scale)
    if entry is not None and entry.kind is not None:
        saved = load_torch(run_dir / PREDICTIONS)
        return ClassPredictions(ensemble_probs(saved["member_probs"]), saved["labels"])
    run, model = load_finished(run_dir)
    if entry is not None and entry.temperature:
        predict, _ = temperature_scaled(run, model_predictor(run, model))
        return ClassPredictions(predict(run.data.test).softmax(-1), labels_of(run.data.test))
    return run.task.predictions(model, run.data.test, run.cfg.eval_batch_size, run.device, run.data.target_scale)


def _temperature_record(run_dir: Path, n_bins: int) -> dict[str, Any]:
    """The run's metrics record with the test metrics of its temperature-scaled model."""
    run, model = load_finished(run_dir)
    predict, temperature = temperature_scaled(run, model_predictor(run, model))
    record = json.loads((run_dir / METRICS).read_text())
    test = test_summary(predict(run.data.test).softmax(-1), labels_of(run.data.test), n_bins)
    return {**record, **test, "method": record["method"] + TEMPERATURE_SUFFIX, "temperature": temperature}


def _job(job: tuple[str, dict[str, Any], str, Entry, bool, dict[str, Any], int]) -> dict[str, Any]:
    """One training of the table (a run, an ensemble, a deep GP), resumed if its folder holds one; worker-safe.
    A run on several processes is launched with torchrun (:func:`bayessparse.distributed.launch`). A
    divergence names the row and the seed before the training's own line (epoch, step, what was kept)."""
    what, cfg_dict, folder, entry, progress, deep_gp, processes = job
    cfg = resolve(cfg_dict)
    try:
        if what == "run" and processes > 1:
            return launch(cfg, folder, processes)
        if what == "run":
            return train(cfg, folder, resume=True, progress=progress)
        if what == "deep-gp":
            return _deep_gp_record(cfg, entry, deep_gp, Path(folder), progress)
        return _ensemble_record(cfg, entry, cfg.seed, Path(folder), progress=progress)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{entry.name} (seed {cfg.seed}): {exc}") from None


def _deep_gp_config(cfg: TrainConfig, entry: Entry, seed: int, overrides: dict[str, Any]) -> Any:
    """The deep GP row's config: the networks' data, split, seed and bins; its own defaults otherwise. An
    override of a field compare sets (:data:`DEEP_GP_SET_BY_COMPARE`) is refused."""
    from bayessparse.baselines import DeepGPConfig

    for name, source in DEEP_GP_SET_BY_COMPARE.items():
        if name in overrides:
            raise ConfigError(f"--deep-gp-set {name}: the deep GP rows' {name} is set by compare ({source})")
    return DeepGPConfig.from_dict({**overrides, "method": entry.method, "data": cfg.data, "data_seed": cfg.data_seed,
                                   "n_samples": cfg.n_samples, "seed": seed, "ece_bins": cfg.ece_bins,
                                   "trunk": cfg.model if entry.method == "svdkl" else None})


def _deep_gp_record(cfg: TrainConfig, entry: Entry, overrides: dict[str, Any], folder: Path,
                    progress: bool) -> dict[str, Any]:
    """Train / resume one deep GP row on the same data, split and seed as the networks."""
    from bayessparse.baselines import train_deep_gp

    gp = _deep_gp_config(cfg, entry, cfg.seed, overrides)
    record = train_deep_gp(gp, folder, resume=True, progress=progress)
    return {**record, "method": entry.name, "density": 1.0}


def compare(
    base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str | Path, progress: bool = True,
    workers: int = 1, with_deep_gp: bool = False, deep_gp: dict[str, Any] | None = None, processes: int = 1,
) -> dict[str, Any]:
    """Train every entry (method or ensemble, see :func:`parse_entry`) with every seed, print the table,
    write results.json and the diagrams. ``workers`` trainings run side by side (:mod:`bayessparse.jobs`).

    ``with_deep_gp`` adds the deep GP rows (:func:`deep_gp_entries`, same data, split and seeds) and the
    cost columns :data:`COST_METRICS` to every row; ``deep_gp`` overrides fields of their
    :class:`~bayessparse.baselines.DeepGPConfig` (e.g. ``{"epochs": 20}``; not the fields compare sets,
    :data:`DEEP_GP_SET_BY_COMPARE`); ``processes`` > 1 trains each run
    data-parallel on that many processes (torchrun; ensembles and deep GPs stay in one)."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"--processes must be an integer >= 1, got {processes!r}")
    entries = list(dict.fromkeys(parse_entry(m) for m in methods))
    if with_deep_gp:
        entries += deep_gp_entries()
    check_entries(base, entries, deep_gp or {})
    out = check_writable(out)
    check_kind(out, "compare")
    with exclusive(out, "compare", kind="compare"):
        return _compare(base, entries, seeds, out, progress, workers, deep_gp or {}, processes)


def check_entries(base: TrainConfig, entries: Sequence[Entry], deep_gp: dict[str, Any] | None = None) -> None:
    """Every row can be trained on ``base``'s data and model (a ConfigError names the first that cannot):
    the runs are built once, without training; a regression dataset takes no temperature scaling or ensembles;
    the deep GP rows' configs (``deep_gp``: the overrides) are made and checked against their data with
    :func:`bayessparse.baselines.check_deep_gp_data`, as their training checks them."""
    gps = [_deep_gp_config(base, entry, base.seed, deep_gp or {}) for entry in entries if entry.job == "deep-gp"]
    data = load_data(base)  # validates the data fields
    for entry in entries:
        if (entry.temperature and "ts" not in data.task.posthoc) or entry.job == "ensemble":
            data.task.require_classes(f"--methods {entry.name}: temperature scaling and ensembles", base.data, "need")
    with preserved_random_state():
        for entry in entries:
            if entry.job == "run":
                build_run(base.replace(method=entry.method), data)
        if gps:
            from bayessparse.baselines import check_deep_gp_data

            for gp in gps:
                check_deep_gp_data(gp)


def _compare(base: TrainConfig, entries: list[Entry], seeds: Sequence[int], out: Path, progress: bool,
             workers: int, deep_gp: dict[str, Any], processes: int) -> dict[str, Any]:
    """The trainings, the table and the diagrams of :func:`compare`, under the folder's lock."""
    jobs: dict[str, tuple[str, dict[str, Any], str, Entry, bool, dict[str, Any], int]] = {}
    inner_bars = progress and workers == 1  # per-epoch bars only when the trainings run in this process
    for entry in entries:
        for seed in seeds:
            folder = str(out / entry.folder / f"seed-{seed}")
            method = base.method if entry.kind == "deep-gp" else entry.method
            cfg = base.replace(method=method, seed=seed).to_dict()
            jobs.setdefault(folder, (entry.job, cfg, folder, entry, inner_bars, deep_gp, processes))
    done = dict(zip(jobs, run_jobs(_job, list(jobs.values()), workers, progress=progress, desc="trainings")))
    records = []
    for entry in entries:
        for seed in seeds:
            folder = str(out / entry.folder / f"seed-{seed}")
            records.append(_temperature_record(Path(folder), base.ece_bins) if entry.temperature else done[folder])
    with_costs = any(entry.kind == "deep-gp" for entry in entries)
    task = task_of(base.data)
    summary = summarise(records, table_metrics(task, with_costs))
    table = format_table(summary)
    print(table)
    write_text(out / "table.md", table + "\n")
    write_json(out / "results.json", {"runs": records, "summary": summary})
    _calibration_plots(task, base, entries, seeds, out)
    return {"runs": records, "summary": summary}


def _calibration_plots(task: Task, base: TrainConfig, entries: list[Entry], seeds: Sequence[int], out: Path) -> None:
    """Each row's calibration figure (:meth:`bayessparse.tasks.Task.plot`: a reliability diagram, or the
    calibration of central intervals; test predictions pooled over seeds) and all rows on one axes."""
    rows = {}
    for entry in entries:
        rows[entry.name] = task.pool([_test_predictions(out / entry.folder / f"seed-{s}", entry) for s in seeds])
        task.plot({entry.name: rows[entry.name]}, out / f"reliability-{entry.label}.png", title=entry.name,
                  n_bins=base.ece_bins)
    task.plot(rows, out / "reliability-overlay.png", title=f"{base.data}", n_bins=base.ece_bins)
