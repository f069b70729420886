"""The ``bayessparse`` command line.

Every user mistake (a bad flag value, an unknown dataset, a missing file) ends the command with
one line on stderr and exit code 2, before anything is written. A diverged run exits with 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bayessparse import smoke
from bayessparse.config import FIELD_NAMES, read_yaml, resolve
from bayessparse.errors import ConfigError, RankMismatch, TrainingDiverged, WriteError
from bayessparse.methods import check_method
from bayessparse.data import task_of
from bayessparse.workflows.uci.rows import ROWS

# flag -> config field, for the flags every training command shares
RUN_FLAGS: dict[str, tuple[str, type]] = {
    "--data": ("data", str),
    "--data-root": ("data_root", str),
    "--model": ("model", str),
    "--method": ("method", str),
    "--sparsity": ("sparsity", float),
    "--epochs": ("epochs", int),
    "--batch-size": ("batch_size", int),
    "--lr": ("lr", float),
    "--seed": ("seed", int),
    "--drop-rate": ("drop_rate", float),
    "--label-noise": ("label_noise", float),
    "--n-samples": ("n_samples", int),
    "--engine": ("engine", str),
    "--device": ("device", str),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_run_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of config fields (flags override it)")
    for flag, (name, kind) in RUN_FLAGS.items():
        if flag not in skip:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=f"config field '{name}'")
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
        help=f"any other config field ({', '.join(FIELD_NAMES)})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set on the command line (flags and --set FIELD=VALUE)."""
    given = {name: getattr(args, name) for name, _ in RUN_FLAGS.values() if getattr(args, name, None) is not None}
    for name, value in _assignments(args.assignments, "--set").items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown config field '{name}' in --set")
        given[name] = value.split(",") if name == "step_milestones" else value
    return given


def _config_layers(args: argparse.Namespace, saved: Path | None = None) -> list[dict[str, Any]]:
    layers = [read_yaml(saved)] if saved is not None and saved.exists() else []
    if args.config is not None:
        layers.append(read_yaml(args.config))
    layers.append(_overrides(args))
    return layers


def _resumed(out: Path, kind: str, config: str, state: str) -> Path:
    """The saved config of the folder ``--resume`` continues, checked before it is read."""
    from bayessparse.folders import check_kind, check_writable

    if not out.is_dir():
        raise ConfigError(f"--resume: {out} does not exist, so there is nothing to resume")
    check_writable(out)
    check_kind(out, kind)
    if (out / state).exists() and not (out / config).is_file():
        raise ConfigError(f"--resume: {out} has {state} but its {config} is missing, so it cannot be resumed")
    return out / config


def cmd_train(args: argparse.Namespace) -> int:
    from bayessparse import distributed
    from bayessparse.train import CHECKPOINT, CONFIG, train

    saved = _resumed(args.out, "run", CONFIG, CHECKPOINT) if args.resume else None
    cfg = resolve(*_config_layers(args, saved))
    _check_sparsity_has_a_method(cfg, _overrides(args))
    world = distributed.init_from_environment(cfg.device)  # torchrun: one process per rank
    try:
        metrics = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.close()
    if not world.main:
        return 0
    scores = "  ".join(f"{key} {metrics[key]:.4f}" for key in (*task_of(cfg.data).headline, "density"))
    print(f"{cfg.method} on {cfg.data}: {scores}  ({metrics['train_seconds']:.1f} s)  -> {args.out}")
    return 0


def _check_sparsity_has_a_method(cfg, flags: dict[str, Any]) -> None:
    """A sparsity asked for on the command line (``--sparsity``, ``--set sparsity=``) with the dense method
    would train a dense network without a word: refuse it, naming the fix. A config file is not checked: a
    resolved config (``config.yaml`` of a run, what compare hands to torchrun) lists every field."""
    if cfg.method == "dense" and "sparsity" in flags:
        raise ConfigError(f"sparsity {cfg.sparsity:g} needs a sparse method: add --method "
                          "(e.g. rigl, cigl; dense training ignores the sparsity)")


def _assignments(items: Sequence[str], flag: str) -> dict[str, str]:
    """``FIELD=VALUE`` flags as a mapping (the values are checked by the config they go to)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} expects FIELD=VALUE, got {item!r}")
        out[name] = value
    return out


def _folder(text: str) -> Path:
    """An output folder flag: a path, never the empty string (which would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, not an empty string")
    return Path(text)


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _seeds(text: str) -> list[int]:
    """``3`` means seeds 0, 1, 2; ``0,5,7`` lists them."""
    try:
        values = [int(v) for v in _names(text)]
    except ValueError:
        raise ConfigError(f"--seeds must be a count or a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"--seeds names no seed, got {text!r}")
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--seeds count must be >= 1, got {values[0]}")
        values = list(range(values[0]))
    bad = [v for v in values if not 0 <= v < 2**32]
    if bad:
        raise ConfigError(f"--seeds must lie in [0, 2^32), got {bad[0]}")
    return smoke.shrink_seeds(values)


def cmd_compare(args: argparse.Namespace) -> int:
    from bayessparse.workflows.compare import COMPARE_DEFAULTS, compare, default_methods, task_defaults

    layers = _config_layers(args)
    cfg = resolve(COMPARE_DEFAULTS, *layers)
    cfg = resolve(COMPARE_DEFAULTS, task_defaults(cfg.data), *layers)
    methods = _names(args.methods) if args.methods else default_methods(task_of(cfg.data))
    if args.deep_gp_set and not args.with_deep_gp:
        raise ConfigError("--deep-gp-set applies to the deep GP rows: add --with-deep-gp")
    if not methods:
        raise ConfigError(f"--methods names no method, got {args.methods!r}")
    compare(cfg, methods, _seeds(args.seeds), args.out, progress=not args.no_progress, workers=_workers(args.jobs),
            with_deep_gp=args.with_deep_gp, deep_gp=_assignments(args.deep_gp_set, "--deep-gp-set"),
            processes=args.processes)
    return 0


def _workers(jobs: int | None) -> int:
    from bayessparse.jobs import default_workers

    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    return default_workers() if jobs is None else jobs


def cmd_bench(args: argparse.Namespace) -> int:
    from bayessparse.workflows.bench import SETUPS, measure
    from bayessparse.files import write_json

    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    args.rounds, args.steps = smoke.shrink_count(args.rounds), smoke.shrink_count(args.steps)
    if args.kernels:
        return _bench_kernels(args)
    setups = _names(args.setups)
    if not setups:
        raise ConfigError(f"--setups names no setup, got {args.setups!r} (choose from: {', '.join(SETUPS)})")
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise ConfigError(f"unknown bench setup '{unknown[0]}' (choose from: {', '.join(SETUPS)})")
    methods = _names(args.methods)
    for method in methods:
        check_method(method)
    if "dense" not in methods:
        raise ConfigError("--methods must include dense (ratios are taken against it)")
    if args.out is not None:
        _check_output_file(args.out, "--out")
    results = []
    for name in setups:
        result = measure(name, methods, rounds=args.rounds, steps=args.steps, device=args.device)
        results.append(result)
        for key, value in {**result["ratios"], **result["update_cost"]}.items():
            print(f"{name:10s} {key:22s} {value:6.3f}")
    if args.out is not None:
        write_json(args.out, results)
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    """``bench --kernels``: the dense / masked-dense / sparse-kernel grid (:mod:`bayessparse.workflows.kernel_grid`)."""
    from bayessparse.files import write_json
    from bayessparse.workflows.kernel_grid import MODELS, markdown, measure_grid

    models = _names(args.models)
    unknown = [m for m in models if m not in MODELS]
    if not models or unknown:
        raise ConfigError(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    sparsities = _numbers(args.sparsities, "--sparsities", float)
    batches = _numbers(args.batches, "--batches", int)
    if any(not 0.0 < s < 1.0 for s in sparsities):
        raise ConfigError(f"--sparsities must lie in (0, 1), got {args.sparsities!r}")
    if any(b < 1 for b in batches):
        raise ConfigError(f"--batches must be >= 1, got {args.batches!r}")
    if args.out is not None:
        _check_output_file(args.out, "--out")
    cells = measure_grid(models, sparsities, batches, rounds=args.rounds, steps=args.steps, device=args.device,
                         progress=True)
    print(markdown(cells))
    if args.out is not None:
        write_json(args.out, cells)
    return 0


def _numbers(text: str, flag: str, kind: type) -> list:
    try:
        values = [kind(v) for v in _names(text)]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} names no value, got {text!r}")
    return values


def _check_output_file(path: Path, flag: str) -> None:
    """A file the command will (over)write: not a folder, in an existing writable folder."""
    from bayessparse.folders import check_writable

    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag}: folder {path.parent} does not exist")
    check_writable(path.parent, flag)


def cmd_imp(args: argparse.Namespace) -> int:
    from bayessparse.workflows.imp import CONFIG, STATE, best_round, format_table, imp, resolve_settings

    saved = _resumed(args.out, "imp", CONFIG, STATE) if args.resume else None
    layers = _config_layers(args, saved)
    imp_layers = [layer.pop("imp", None) for layer in layers]  # YAML files may carry an "imp:" mapping
    cfg = resolve(*layers)
    flags = {"rounds": args.rounds, "prune_fraction": args.prune_fraction, "rewind_epoch": args.rewind_epoch,
             "prune_output": args.prune_output}
    settings = resolve_settings(*imp_layers, flags, epochs=cfg.epochs)
    records = imp(cfg, args.out, settings, resume=args.resume, progress=not args.no_progress)
    best = best_round(records)
    print(format_table(records))
    kl = f"  kl {best['kl_clean']:.4f}" if "kl_clean" in best else ""
    print(
        f"best round {best['round']}: density {best['density']:.4f}  nonzero {best['nonzero']}  "
        f"test error {best['test_error']:.4f}  ece {best['ece']:.4f}{kl}  -> {args.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bayessparse.workflows.evaluate import EVAL, evaluate_run, format_summary

    record = evaluate_run(
        args.run, ood=args.ood, corruptions=args.corruptions, temperature=not args.no_temperature,
        n_bins=args.bins, corruptions_root=args.corruptions_root, samples=args.samples, arviz=args.arviz,
        seed=args.seed, progress=not args.no_progress,
    )
    print(format_summary(record))
    print(f"-> {args.run / EVAL}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bayessparse.workflows.export import export_run

    info = export_run(args.run, args.out)
    print(f"{info['path']}: {info['bytes']} bytes, {info['nnz']} non-zero weights stored sparse, "
          f"{info['bytes'] / info['state_bytes']:.3f} x the dense checkpoint's model state ({info['state_bytes']} bytes)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from bayessparse.workflows.ensembles import ensemble, format_report

    cfg = resolve(*_config_layers(args))
    edst = {"explore_epochs": args.explore_epochs, "refine_epochs": args.refine_epochs, "refine_lr": args.refine_lr}
    if args.jump_fraction is not None:
        edst["jump_fraction"] = args.jump_fraction
    result = ensemble(
        cfg, args.kind, args.members, args.out, **edst,
        dense_reference=args.dense_reference, progress=not args.no_progress,
    )
    print(format_report(result))
    print(f"-> {args.out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from bayessparse.workflows.study import default_spec, run_study

    if args.quick and args.config is not None:
        raise ConfigError("--quick and --config exclude each other (--quick is --config experiments/study_quick.yaml)")
    spec = args.config if args.config is not None else default_spec(args.quick)
    out = args.out if args.out is not None else Path("runs/study-quick" if args.quick else "runs/study")
    words = ["study", "--quick" if args.quick else f"--config {spec}"]
    words += [f"--out {out}"] + ([f"--docs {args.docs}"] if args.docs is not None else [])
    result = run_study(spec, out, workers=_workers(args.jobs), docs=args.docs, progress=not args.no_progress,
                       command="bayessparse " + " ".join(words), processes=args.processes,
                       reuse_stale=args.reuse_stale, echo=print)
    stale = (f" ({result['stale_retrained']} retrained: trained by another training version)"
             if result["stale_retrained"] else
             f" ({result['stale_kept']} trained by another training version kept: --reuse-stale)"
             if result["stale_kept"] else "")
    print(f"{result['cells']} trainings scored in {result['seconds']:.0f} s{stale} -> {', '.join(result['report'])}")
    return 0


def _splits(text: str) -> list[int]:
    """``20`` means splits 0..19; ``0,3,7`` lists them; ``2-5`` is a range."""
    try:
        if "-" in text and "," not in text:
            low, high = (int(v) for v in text.split("-"))
            return list(range(low, high + 1))
        values = [int(v) for v in _names(text)]
    except ValueError:
        raise ConfigError(f"--splits must be a count, a list 0,3,7 or a range 2-5, got {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--splits count must be >= 1, got {values[0]}")
        return list(range(values[0]))
    return values


def cmd_benchmark(args: argparse.Namespace) -> int:
    from bayessparse.workflows.uci import QUICK_SETS, QUICK_SPLITS, run_benchmark

    sets = _names(args.datasets) if args.datasets else list(QUICK_SETS if args.quick else
                                                            ("concrete", "energy", "wine", "yacht"))
    splits = _splits(args.splits) if args.splits else list(QUICK_SPLITS if args.quick else range(20))
    out = args.out if args.out is not None else Path("runs/uci-quick" if args.quick else "runs/uci")
    words = ["benchmark uci"] + (["--quick"] if args.quick else [])
    words += [f"--datasets {args.datasets}"] if args.datasets else []
    words += [f"--splits {args.splits}"] if args.splits else []
    words += [f"--rows {args.rows}"] if args.rows else []
    words += [f"--out {out}"] + ([f"--docs {args.docs}"] if args.docs is not None else [])
    result = run_benchmark(sets, splits, out, rows=_names(args.rows) if args.rows else None, quick=args.quick,
                           jobs=_workers(args.jobs), docs=args.docs, progress=not args.no_progress,
                           command="bayessparse " + " ".join(words))
    print(f"{result['units']} units ({result['trained']} trained now) in {result['seconds']:.0f} s "
          f"-> {', '.join(result['report'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bayessparse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train one run into a run folder")
    _add_run_flags(train)
    train.add_argument("--out", type=_folder, required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.set_defaults(func=cmd_train)

    comp = sub.add_parser("compare", help="train several methods x seeds and tabulate their metrics")
    _add_run_flags(comp, skip=("--method", "--seed"))
    comp.add_argument(
        "--methods",
        help="comma-separated entries (default: dense, rigl, rigl+ts, cigl; no rigl+ts on regression data): a method, METHOD+ts (its runs, "
        "temperature-scaled), or an ensemble edst:METHOD:M, dst:METHOD:M, METHOD:M (= dst:METHOD:M), "
        "e.g. cigl,edst:rigl:3,dense:3 (rows 'EDST(RigL) x3', 'dense x3')",
    )
    comp.add_argument("--jobs", type=int, default=None, help="trainings run side by side (default: one per core)")
    comp.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a list 0,1,2")
    comp.add_argument("--with-deep-gp", action="store_true",
                      help="add a 2-layer deep GP and a DSPP (GPyTorch) on the same splits, and cost columns")
    comp.add_argument("--deep-gp-set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a field of the deep GP rows' config (epochs, num_inducing, lr, ...); compare sets "
                      "method, data, data_seed, seed and ece_bins itself")
    comp.add_argument("--processes", type=int, default=1,
                      help="train each run data-parallel on this many processes (torchrun; default 1)")
    comp.add_argument("--out", type=_folder, default=Path("runs/compare"), help="output folder")
    comp.set_defaults(func=cmd_compare)

    evaluate = sub.add_parser("evaluate", help="calibration, temperature scaling, OOD and corruptions of a finished run")
    evaluate.add_argument("run", type=Path, help="run folder (written by train or compare)")
    evaluate.add_argument("--ood", help="OOD set: shuffled, noise, feature-shift, far-shift, or none (default: the dataset's)")
    evaluate.add_argument("--corruptions", action="store_true", help="corruption suite, severities 1-5")
    evaluate.add_argument("--corruptions-root", type=Path, help="CIFAR-10-C / CIFAR-100-C folder of .npy files (implies --corruptions)")
    evaluate.add_argument("--no-temperature", action="store_true", help="skip temperature scaling")
    evaluate.add_argument("--bins", type=int, default=None, help="ECE bins (default: the run's ece_bins)")
    evaluate.add_argument("--samples", type=int, default=0,
                          help="S Monte Carlo draws of the random mask Z: adds the posterior predictive")
    evaluate.add_argument("--arviz", type=Path, help="with --samples: write the draws as ArviZ InferenceData (.nc)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the OOD set, the corruptions and the draws")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_evaluate)

    bench = sub.add_parser("bench", help="step-time ratios of the methods, measured side by side")
    bench.add_argument("--setups", default="cnn1d,resnet18", help="comma-separated: cnn1d, resnet18")
    bench.add_argument("--methods", default="dense,rigl,cigl", help="comma-separated methods (must include dense)")
    bench.add_argument("--rounds", type=int, default=7)
    bench.add_argument("--steps", type=int, default=10, help="steps per method per round")
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    bench.add_argument("--out", type=Path, help="write the results as JSON")
    bench.add_argument("--kernels", action="store_true",
                       help="the sparse-kernel grid: dense / masked-dense / sparse kernels, training and inference")
    bench.add_argument("--models", default="mlp,cnn1d", help="--kernels: models (mlp at width 4, cnn1d)")
    bench.add_argument("--sparsities", default="0.9,0.95,0.98", help="--kernels: sparsities")
    bench.add_argument("--batches", default="1,256", help="--kernels: batch sizes")
    bench.set_defaults(func=cmd_bench)

    imp = sub.add_parser("imp", help="iterative magnitude pruning with rewinding: the sparse double descent")
    _add_run_flags(imp, skip=("--method",))
    imp.add_argument("--rounds", type=int, default=None, help="pruning rounds after the dense one (default 10)")
    imp.add_argument("--prune-fraction", type=float, default=None, help="fraction of survivors pruned per round (0.2)")
    imp.add_argument("--rewind-epoch", type=int, default=None, help="rewind to this epoch of dense training (0: init)")
    imp.add_argument("--prune-output", action=argparse.BooleanOptionalAction, default=None,
                     help="also prune the output layer (default: kept dense)")
    imp.add_argument("--out", type=_folder, required=True, help="sweep folder")
    imp.add_argument("--resume", action="store_true", help="continue (or extend) the sweep in --out")
    imp.set_defaults(func=cmd_imp)
    study = sub.add_parser("study", help="the reproduction study: trains, scores and writes results.md")
    study.add_argument("--config", type=Path, help="study specification (default: experiments/study.yaml)")
    study.add_argument("--quick", action="store_true", help="the CI-sized study (experiments/study_quick.yaml)")
    study.add_argument("--out", type=_folder, help="output folder (default: runs/study or runs/study-quick); "
                                                "re-running continues it")
    study.add_argument("--docs", type=Path, help="also write results.md and figures/ into this folder (e.g. docs)")
    study.add_argument("--jobs", type=int, default=None, help="trainings run side by side (default: one per core)")
    study.add_argument("--processes", type=int, default=1,
                       help="train each run data-parallel on this many processes (torchrun; default 1)")
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_argument("--reuse-stale", action="store_true",
                       help="keep cells trained by another training version (default: train them again); "
                            "the report says how many and which versions")
    study.set_defaults(func=cmd_study)

    bench_uci = sub.add_parser("benchmark", help="the UCI regression benchmark on its published splits")
    bench_uci.add_argument("suite", choices=("uci",), help="the benchmark to run (uci)")
    bench_uci.add_argument("--datasets", help="comma-separated: concrete, energy, wine, yacht (default: all four; "
                           "--quick: yacht, energy)")
    bench_uci.add_argument("--splits", help="a count (20 = splits 0..19, the default), a list 0,3,7 or a range 2-5 "
                           "(--quick: 0,1)")
    bench_uci.add_argument("--rows", help="comma-separated rows (default: all but bayesian-ridge): " + ", ".join(ROWS))
    bench_uci.add_argument("--quick", action="store_true", help="two sets, two splits, a tenth of the training")
    bench_uci.add_argument("--jobs", type=int, default=None, help="units run side by side (default: one per core)")
    bench_uci.add_argument("--out", type=_folder, help="output folder (default: runs/uci or runs/uci-quick); "
                           "re-running continues it")
    bench_uci.add_argument("--docs", type=Path, help="also write the report section into <docs>/results.md and its "
                           "figure into <docs>/figures")
    bench_uci.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench_uci.set_defaults(func=cmd_benchmark)

    export = sub.add_parser("export", help="the evaluated network of a finished run as a compact safetensors file")
    export.add_argument("run", type=Path, help="run folder (written by train or compare)")
    export.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.safetensors")
    export.set_defaults(func=cmd_export)

    ens = sub.add_parser("ensemble", help="FreeTickets DST / EDST ensembles of sparse networks")
    _add_run_flags(ens)
    ens.add_argument("--kind", required=True, help="dst (M independent runs) or edst (one run, M phases)")
    ens.add_argument("--members", type=int, default=3, help="number of members M (>= 2)")
    ens.add_argument("--out", type=_folder, required=True, help="output folder (re-running continues it)")
    ens.add_argument("--explore-epochs", type=int, help="EDST: exploration epochs (default 0.6 x --epochs)")
    ens.add_argument("--refine-epochs", type=int, help="EDST: epochs per member (default 0.4 x --epochs)")
    ens.add_argument("--refine-lr", type=float, help="EDST: lr at the start of each refinement phase (default --lr)")
    ens.add_argument("--jump-fraction", type=float, help="EDST: fraction of active weights moved by a jump (0.8)")
    ens.add_argument(
        "--dense-reference", default="auto",
        help="run folder of a finished dense run for the time ratio; auto (train one) or none",
    )
    ens.set_defaults(func=cmd_ensemble)
    return parser


#: What an interrupted command leaves, by command: how to continue it.
CONTINUE = {
    "train": "; continue with --resume",
    "imp": "; continue with --resume",
    "ensemble": "; the same command continues it",
    "study": "; the same command continues it",
    "compare": "; the same command continues it",
    "benchmark": "; the same command continues it",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds like Ctrl-C (temporary files removed)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command != "train":  # only train runs data-parallel under torchrun
            from bayessparse.distributed import check_single_process

            check_single_process(args.command)
        return handler(args)
    except (ConfigError, WriteError) as exc:
        print(f"bayessparse: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"bayessparse: training diverged: {exc}", file=sys.stderr)
        return 1
    except RankMismatch as exc:
        print(f"bayessparse: distributed run stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"bayessparse: {how}{CONTINUE.get(args.command, '')}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
