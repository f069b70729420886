"""The evaluate job: calibration, temperature scaling, OOD detection and corruption robustness of a finished run.

:func:`evaluate_run` reads a run folder (:func:`bayessparse.train.load_finished`), evaluates the
model that ``metrics.json`` describes and writes, atomically:

* ``RUN/eval.json`` (written last, so its presence means the evaluation finished):
    - ``test``: accuracy, nll, ece, adaptive_ece, classwise_ece, mce, brier on the test split;
    - ``temperature_scaled``: the same after temperature scaling fitted on the validation split
      (:mod:`bayessparse.uncertainty.temperature`) plus ``temperature`` and the validation NLL
      before / after (``val_nll``, ``val_nll_scaled``) — the classic post-hoc baseline;
    - ``ood``: the OOD set (:mod:`bayessparse.data.ood`; the dataset's default unless named),
      and AUROC / AUPR / FPR95 per score (``max_softmax``, ``entropy`` and, with per-sample
      predictions, ``mutual_information``; OOD is the positive class, see
      :mod:`bayessparse.uncertainty.ood`), also for the temperature-scaled model;
    - ``corruptions``: accuracy, nll, ece, brier (and the temperature-scaled nll / ece) per
      corruption and severity 1..5 (:mod:`bayessparse.data.corruptions`, or a CIFAR-10-C folder),
      the clean values, and the mean over corruptions per severity;
    - ``mc_predictive`` (``samples > 0``): the same test metrics of the Monte Carlo posterior
      predictive, ``lppd`` (the test set's log pointwise predictive density
      ``Σ_n log (1/S) Σ_s p(y_n | θ_s)``: ``sum``, per-example ``mean``), ``latents`` (per layer: the
      mean over draws of the fraction of active weights ``Z`` keeps, ``E_q[Z]``, the density, and
      for the Gaussian family the weight scales) and, with ``arviz``, ``loo``: PSIS-LOO on (at most
      :data:`LOO_MAX`) *training* examples -- ``elpd``, ``se``, ``p_loo``, ``n`` and ArviZ's Pareto-k
      counts (``good`` ``k ≤ good_k``, ``bad`` ``≤ 1``, ``very_bad``);
* ``RUN/reliability_temperature.png``: reliability diagram of the temperature-scaled model
  (the plain one is the run's ``reliability.png``);
* ``RUN/ood_scores.png``: histograms of the in- vs out-of-distribution scores;
* ``RUN/corruptions.png``: accuracy and ECE against severity, one line per corruption.

Per-sample predictions: by default the run's single network is evaluated (``(N, C)``
probabilities). ``sample_probs(dataset) -> (S, N, C)`` replaces it everywhere (MC samples of the
posterior predictive, ensemble members): metrics then use the predictive mean, the mutual
information becomes available, and the temperature is fitted on ``log p̄`` (see
:func:`~bayessparse.uncertainty.temperature.fit_temperature`).

Every input problem (not a run folder, an unfinished run, an unknown OOD set, a bad corruptions
folder, ``n_bins < 1``) raises :class:`~bayessparse.errors.ConfigError` before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from bayessparse.batches import batches
from bayessparse.data.corruptions import (
    SEVERITIES,
    corruption_names,
    corruption_suite,
    folder_corruption_suite,
    input_kind,
    materialize,
)
from bayessparse.data.ood import check_ood, make_ood
from bayessparse.config import DEFAULTS, MAX_BINS, read_yaml
from bayessparse.data import task_of
from bayessparse.errors import ConfigError
from bayessparse.files import save_figure, write_atomic, write_json
from bayessparse.predict import predict_logits
from bayessparse.uncertainty.calibration import (
    adaptive_calibration_error,
    classwise_calibration_error,
    maximum_calibration_error,
)
from bayessparse.uncertainty.metrics import expected_calibration_error, nll, predictive_mean, summary
from bayessparse.uncertainty.ood import SCORES, ood_metrics, ood_scores
from bayessparse.uncertainty.reliability import plot_reliability
from bayessparse.uncertainty.temperature import apply_temperature, fit_temperature, temperature_nll

__all__ = ["EVAL", "LOO_MAX", "calibration_summary", "evaluate_run", "format_summary", "pareto_k_counts"]

EVAL = "eval.json"
CORRUPTIONS_PNG = "corruptions.png"
OOD_PNG = "ood_scores.png"
RELIABILITY_TS_PNG = "reliability_temperature.png"
NO_OOD = "none"

SampleProbs = Callable[[Dataset], Tensor]


def calibration_summary(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, ece, adaptive_ece, classwise_ece, mce, brier of ``(N, C)`` / ``(S, N, C)`` probabilities."""
    return {
        **summary(probs, labels, n_bins),
        "adaptive_ece": adaptive_calibration_error(probs, labels, n_bins),
        "classwise_ece": classwise_calibration_error(probs, labels, n_bins),
        "mce": maximum_calibration_error(probs, labels, n_bins),
    }


def _shift_summary(probs: Tensor, labels: Tensor, n_bins: int, scaled: Tensor | None) -> dict[str, float]:
    out = summary(probs, labels, n_bins)
    if scaled is not None:
        out["nll_temperature_scaled"] = nll(scaled, labels)
        out["ece_temperature_scaled"] = expected_calibration_error(scaled, labels, n_bins)
    return out


class _Predictor:
    """Probabilities and (predictive) logits of the evaluated model on any dataset."""

    def __init__(self, model, batch_size: int, device, sample_probs: SampleProbs | None):
        self.model, self.batch_size, self.device, self.sample_probs = model, batch_size, device, sample_probs

    def __call__(self, dataset: Dataset) -> tuple[Tensor, Tensor, Tensor]:
        """``(probs (N, C) or (S, N, C), logits of the predictive mean (N, C), labels)``."""
        if self.sample_probs is None:
            logits, labels = predict_logits(self.model, dataset, self.batch_size, self.device)
            return logits.softmax(-1), logits, labels
        probs = self.sample_probs(dataset)
        if not isinstance(probs, Tensor) or probs.dim() != 3 or probs.shape[1] != len(dataset):
            shape = getattr(probs, "shape", probs)
            raise ValueError(f"sample_probs must return (S, N, C) with N = {len(dataset)}, got {shape}")
        probs = probs.detach().double().cpu()
        labels = torch.cat([y for _, y in batches(dataset, self.batch_size)])
        return probs, predictive_mean(probs).clamp_min(1e-300).log(), labels


#: Training examples PSIS-LOO is computed on at most (a seeded subsample beyond; ``evaluate_run(loo_max=...)``).
LOO_MAX = 2000
#: PSIS fits its Pareto tail to the largest ``ceil(min(S/5, 3·sqrt(S)))`` weights and needs more than
#: 4 of them: below this many draws ArviZ reports k = inf for every example.
PSIS_MIN_SAMPLES = 21


def _loo_subset(data: Any, max_examples: int, seed: int, batch_size: int) -> tuple[Dataset, Tensor, int]:
    """The training examples LOO runs on (``train_eval`` if any: no augmentation), their labels, and ``len(train)``."""
    train = data.train_eval if data.train_eval is not None else data.train
    total = len(train)
    if total > max_examples:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_examples].sort().values
        if isinstance(train, TensorDataset):
            train = TensorDataset(*(t[idx] for t in train.tensors))
        else:
            train = Subset(train, idx.tolist())
    labels = torch.cat([y for _, y in batches(train, batch_size)])
    return train, labels, total


def pareto_k_counts(pareto_k: Any, good_k: float) -> dict[str, int]:
    """ArviZ's Pareto-k bins (as ``print(az.loo(...))``): good ``k ≤ good_k``, bad ``(good_k, 1]``,
    very bad ``k > 1`` (and ``inf`` / ``nan``: no tail fit)."""
    k = np.asarray(pareto_k, dtype=float).reshape(-1)
    return {"good": int((k <= good_k).sum()), "bad": int(((k > good_k) & (k <= 1.0)).sum()),
            "very_bad": int(((k > 1.0) | np.isnan(k)).sum())}


def _mc_predictive(run: Any, model: Any, test_set: Dataset, labels: Tensor, samples: int, n_bins: int,
                   ood_set: Dataset | None, arviz: str | Path | None, seed: int, loo_max: int) -> dict[str, Any]:
    """Metrics of the Monte Carlo posterior predictive over the guide (and its ArviZ export, with PSIS-LOO)."""
    from bayessparse.ppl.predictive import (
        keep_probability,
        lppd,
        plot_posterior_predictive,
        predictive_probs,
        to_inference_data,
    )

    def draw(dataset: Dataset, latents: bool = False) -> Any:
        # the same seed draws the same latents (W_s, Z_s) on every dataset
        return predictive_probs(run, model, dataset, samples, run.cfg.eval_batch_size, seed=seed,
                                return_latents=latents)

    probs, latents = draw(test_set, latents=True)
    test_lppd = lppd(probs, labels)
    block: dict[str, Any] = {
        "samples": samples,
        "keep_probability": keep_probability(run),
        **calibration_summary(probs, labels, n_bins),
        "lppd": {"data": "test", "n": len(labels), "sum": float(test_lppd.sum()), "mean": float(test_lppd.mean())},
        "latents": {"layers": list(latents.layers),
                    **{k: v.mean(0).tolist() for k, v in latents.per_draw.items()},
                    **{k: v.tolist() for k, v in latents.constant.items()}},
    }
    if ood_set is not None:
        block["ood"] = ood_metrics(probs, draw(ood_set))
    if arviz is not None:
        import arviz as az

        train_set, train_labels, n_train = _loo_subset(run.data, loo_max, seed, run.cfg.eval_batch_size)
        train_probs, train_latents = draw(train_set, latents=True)
        if not torch.equal(train_latents.per_draw["keep_fraction"], latents.per_draw["keep_fraction"]):
            raise RuntimeError("the training and test predictives did not use the same posterior draws")
        subsample = len(train_labels) < n_train
        idata = to_inference_data(
            train_probs, train_labels, latents, test_probs=probs, test_labels=labels, seed=seed,
            attrs={"log_likelihood": f"{len(train_labels)} of {n_train} training examples"
                                     + (f" (random subsample, seed {seed})" if subsample else "")})
        write_atomic(arviz, lambda tmp: idata.to_netcdf(str(tmp)))
        with warnings.catch_warnings():  # its Pareto-k warning: the counts are reported below
            warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
            loo = az.loo(idata, pointwise=True)
        block["loo"] = {
            "data": "train",
            "n": int(loo["n_data_points"]),
            "n_train": n_train,
            "subsample_seed": seed if subsample else None,
            "elpd": float(loo["elpd_loo"]),
            "se": float(loo["se"]),
            "p_loo": float(loo["p_loo"]),
            "elpd_mean": float(loo["elpd_loo"]) / int(loo["n_data_points"]),
            "good_k": float(loo["good_k"]),
            "pareto_k": pareto_k_counts(loo["pareto_k"], float(loo["good_k"])),
        }
        plot_posterior_predictive(idata, Path(arviz).with_suffix(".png"),
                                  title=f"{run.cfg.method} on {run.cfg.data}: {samples} posterior draws")
    return block


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or not 1 <= n_bins <= MAX_BINS:
        raise ConfigError(f"--bins must be an integer in [1, {MAX_BINS}], got {n_bins!r}")
    return n_bins


def evaluate_run(
    run_dir: str | Path,
    ood: str | None = None,
    corruptions: bool = False,
    temperature: bool = True,
    n_bins: int | None = None,
    *,
    corruptions_root: str | Path | None = None,
    sample_probs: SampleProbs | None = None,
    samples: int = 0,
    arviz: str | Path | None = None,
    seed: int = 0,
    loo_max: int = LOO_MAX,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the finished run in ``run_dir``; write ``eval.json`` and the plots; return the record.

    Args:
        ood: OOD set name (:data:`bayessparse.data.ood.OOD_SETS`), ``None`` for the dataset's
            default, ``"none"`` to skip OOD detection.
        corruptions: evaluate the corruption suite (implied by ``corruptions_root``).
        temperature: fit and report temperature scaling.
        n_bins: ECE bins (default: the run's ``ece_bins``).
        corruptions_root: a CIFAR-10-C / CIFAR-100-C folder used instead of generated corruptions.
        sample_probs: ``dataset -> (S, N, C)`` per-sample probabilities replacing the single model.
        samples: ``S > 0`` adds an ``mc_predictive`` block: the posterior predictive by Monte Carlo
            over the guide's latents (:func:`bayessparse.ppl.predictive.predictive_probs`), next to
            the evaluated (for CigL: weight-averaged) model: test metrics, the test set's log
            pointwise predictive density ``lppd``, per-layer latent summaries, OOD mutual information.
        arviz: with ``samples``, write those draws as ArviZ InferenceData (netCDF) to this path
            (layout: :func:`bayessparse.ppl.predictive.to_inference_data`; the log-likelihood is on
            training examples, the test set in ``predictions``), report PSIS-LOO on the training
            examples with its Pareto-k counts (``loo``), and plot the posterior-predictive check
            next to it (``.png``). Neither file may be one of the run folder's own files
            (``checkpoint.pt``, ``reliability.png``, ...: :func:`bayessparse.folders.own_file`), and
            a folder of bayessparse output that they go into is held like the run folder.
        seed: seeds the OOD set, the generated corruptions, the Monte Carlo draws and LOO's subsample.
        loo_max: PSIS-LOO runs on at most this many training examples (a seeded random subsample
            beyond), as its cost is ``S`` passes over them.
    """
    from bayessparse.folders import check_kind, check_not_own_file, check_writable, exclusive, own_file, writing_into
    from bayessparse.train import CONFIG

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer in [0, 2^32), got {seed!r}")
    if n_bins is not None:
        _check_n_bins(n_bins)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"--samples must be an integer >= 0, got {samples!r}")
    if arviz is not None and samples < 1:
        raise ConfigError("--arviz needs --samples S (S >= 1): it stores the Monte Carlo draws")
    if isinstance(loo_max, bool) or not isinstance(loo_max, int) or loo_max < 1:
        raise ConfigError(f"loo_max must be an integer >= 1, got {loo_max!r}")
    if arviz is not None:
        _check_arviz_path(Path(arviz))
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder (no such folder)")
    check_kind(run_dir, "run")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG})")
    if arviz is not None:  # the draws and their plot: never one of the run's own files
        check_not_own_file(arviz, "--arviz", run_dir)
        plot = Path(arviz).with_suffix(".png")
        if (found := own_file(plot, run_dir)) is not None:
            raise ConfigError(f"--arviz {arviz}: its plot {plot.name} would overwrite {found.name} of "
                              f"{found.parent}; name another file")
    data = read_yaml(run_dir / CONFIG).get("data", DEFAULTS["data"])
    task_of(str(data)).require_classes("evaluate", str(data), "scores",
                                       f" (the run's RMSE, NLL and interval coverage are in {run_dir / 'metrics.json'})")
    check_writable(run_dir, "run folder")
    # eval.json and the plots have one writer, and so has the folder of --arviz where it holds bayessparse output
    with exclusive(run_dir, "evaluate", kind="run"), \
            (writing_into(arviz, "evaluate", held=run_dir) if arviz is not None else contextlib.nullcontext()):
        return _evaluate_run(run_dir, ood, corruptions, temperature, n_bins, corruptions_root, sample_probs,
                             samples, arviz, seed, loo_max, progress)


def _check_arviz_path(path: Path) -> None:
    """``--arviz`` names a netCDF file to (over)write, in a writable folder."""
    if path.is_dir():
        raise ConfigError(f"--arviz {path} is a folder; name a file, e.g. {path / 'posterior.nc'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--arviz: folder {path.parent} does not exist")
    if path.suffix == ".png":
        raise ConfigError(f"--arviz {path}: the posterior-predictive plot is written next to it as "
                          f"{path.with_suffix('.png').name}; name a .nc file")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {path}: {path.parent} is not writable")


def _evaluate_run(run_dir: Path, ood: str | None, corruptions: bool, temperature: bool, n_bins: int | None,
                  corruptions_root: str | Path | None, sample_probs: SampleProbs | None, samples: int,
                  arviz: str | Path | None, seed: int, loo_max: int, progress: bool) -> dict[str, Any]:
    """:func:`evaluate_run` once its arguments are checked and its folder is held."""
    from bayessparse.train import inference_model, load_finished, measured_density

    run, model = load_finished(run_dir)
    cfg, data = run.cfg, run.data
    n_bins = _check_n_bins(cfg.ece_bins if n_bins is None else n_bins)
    kind = input_kind(cfg.data, data.input_shape)
    ood_name = None if ood == NO_OOD else check_ood(ood, kind, cfg.data)
    folder_suite = folder_corruption_suite(corruptions_root, cfg.data) if corruptions_root is not None else None
    corruptions = corruptions or folder_suite is not None

    predict = _Predictor(inference_model(run, model), cfg.eval_batch_size, run.device, sample_probs)
    test_set = data.test
    if not isinstance(test_set, TensorDataset) and (ood_name is not None or (corruptions and folder_suite is None)):
        test_set = TensorDataset(*materialize(test_set, cfg.eval_batch_size))  # CIFAR: decode the images once
    probs, logits, labels = predict(test_set)
    record: dict[str, Any] = {
        "run": str(run_dir),
        "method": cfg.method,
        "data": cfg.data,
        "model": cfg.model,
        "seed": cfg.seed,
        "sparsity": cfg.effective_sparsity,
        "density": measured_density(model),
        "predictive": "single model" if sample_probs is None else f"{probs.shape[0]} samples",
        "n_bins": n_bins,
        "n_test": len(labels),
        "test": calibration_summary(probs, labels, n_bins),
    }

    temp = test_scaled = None
    written = []
    if temperature:
        _, val_logits, val_labels = predict(data.val)
        temp = fit_temperature(val_logits, val_labels)
        test_scaled = apply_temperature(logits, temp)
        record["temperature_scaled"] = {
            **calibration_summary(test_scaled, labels, n_bins),
            "temperature": temp,
            "val_nll": temperature_nll(val_logits, val_labels, 1.0),
            "val_nll_scaled": temperature_nll(val_logits, val_labels, temp),
        }
        plot_reliability(test_scaled, labels, run_dir / RELIABILITY_TS_PNG, n_bins=n_bins,
                         title=f"{cfg.method} on {cfg.data}, temperature scaled (T = {temp:.3f})")
        written.append(RELIABILITY_TS_PNG)

    ood_set = make_ood(ood_name, test_set, kind, seed=seed) if ood_name is not None else None
    if samples:
        record["mc_predictive"] = _mc_predictive(run, model, test_set, labels, samples, n_bins, ood_set, arviz, seed,
                                                 loo_max)
        written += [Path(arviz).name, Path(arviz).with_suffix(".png").name] if arviz is not None else []

    record["ood"] = None
    if ood_name is not None:
        out_probs, out_logits, _ = predict(ood_set)
        ood_block: dict[str, Any] = {"set": ood_name, "n_in": len(labels), "n_out": out_probs.shape[-2],
                                     "scores": ood_metrics(probs, out_probs)}
        if temp is not None:
            ood_block["scores_temperature_scaled"] = ood_metrics(test_scaled,
                                                                 apply_temperature(out_logits, temp))
        record["ood"] = ood_block
        plot_ood_scores(ood_scores(probs), ood_scores(out_probs), run_dir / OOD_PNG,
                        title=f"{cfg.method} on {cfg.data}: test vs OOD '{ood_name}'")
        written.append(OOD_PNG)

    record["corruptions"] = None
    if corruptions:
        suite = folder_suite if folder_suite is not None else corruption_suite(test_set, kind, seed=seed)
        results: dict[str, list[dict[str, Any]]] = {}
        total = None if folder_suite is not None else len(SEVERITIES) * len(corruption_names(kind))
        for name, severity, dataset in tqdm(suite, total=total, desc="corruptions", leave=False, disable=not progress):
            c_probs, c_logits, c_labels = predict(dataset)
            scaled = apply_temperature(c_logits, temp) if temp is not None else None
            summary = _shift_summary(c_probs, c_labels, n_bins, scaled)
            results.setdefault(name, []).append({"severity": severity, **summary})
        clean = _shift_summary(probs, labels, n_bins, test_scaled)
        mean = [
            {"severity": s, **{k: float(np.mean([rows[s - 1][k] for rows in results.values()])) for k in clean}}
            for s in SEVERITIES
        ]
        record["corruptions"] = {
            "source": "generated" if folder_suite is None else f"folder {Path(corruptions_root)}",
            "kind": kind,
            "seed": seed,
            "clean": clean,
            "results": results,
            "mean": mean,
        }
        plot_corruptions(clean, results, run_dir / CORRUPTIONS_PNG, title=f"{cfg.method} on {cfg.data}: corruptions")
        written.append(CORRUPTIONS_PNG)

    record["files"] = written
    write_json(run_dir / EVAL, record)
    return record


# ----------------------------------------------------------------------------- plots


def plot_corruptions(clean: dict[str, float], results: dict[str, list[dict[str, Any]]], path: str | Path,
                     title: str | None = None) -> Figure:
    """Accuracy (left) and ECE (right) against severity (0 = clean), one line per corruption plus the mean."""
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    severities = [0, *SEVERITIES]
    for ax, key, label in zip(axes, ("accuracy", "ece"), ("Accuracy", "ECE")):
        for name, rows in results.items():
            by_sev = {r["severity"]: r[key] for r in rows}
            ax.plot(severities, [clean[key]] + [by_sev.get(s, math.nan) for s in SEVERITIES], marker="o",
                    markersize=4, linewidth=1.4, label=name)
        mean = [clean[key]] + [float(np.nanmean([{r["severity"]: r[key] for r in rows}.get(s, math.nan)
                                                  for rows in results.values()])) for s in SEVERITIES]
        ax.plot(severities, mean, color="black", linestyle="--", linewidth=2.0, label="mean")
        ax.set_xticks(severities, ["clean", *map(str, SEVERITIES)])
        ax.set_xlabel("Severity")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3, linewidth=0.6)
        if key == "accuracy":
            ax.set_ylim(0.0, 1.0)
        else:
            ax.set_ylim(bottom=0.0)
    axes[0].legend(loc="lower left", fontsize="small", frameon=True)
    fig.suptitle(title or "Corruptions")
    save_figure(fig, path)
    return fig


_SCORE_LABELS = {"max_softmax": "max softmax probability", "entropy": "predictive entropy (nats)",
                 "mutual_information": "mutual information (nats)"}


def plot_ood_scores(scores_in: dict[str, Tensor], scores_out: dict[str, Tensor], path: str | Path,
                    title: str | None = None) -> Figure:
    """One panel per score: density histograms of the in-distribution and OOD scores on shared bins."""
    names = [n for n in SCORES if n in scores_in and n in scores_out]
    fig = Figure(figsize=(4.2 * len(names), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names):
        s_in, s_out = scores_in[name].double().numpy(), scores_out[name].double().numpy()
        lo, hi = float(min(s_in.min(), s_out.min())), float(max(s_in.max(), s_out.max()))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
        ax.hist(s_in, bins=edges, density=True, alpha=0.55, color="#1f77b4", label="in-distribution (test)")
        ax.hist(s_out, bins=edges, density=True, alpha=0.55, color="#d62728", label="OOD")
        ax.set_xlabel(_SCORE_LABELS.get(name, name))
        ax.set_ylabel("Density")
        ax.grid(True, alpha=0.3, linewidth=0.6)
    axes[0].legend(loc="upper center", fontsize="small", frameon=True)
    fig.suptitle(title or "OOD scores")
    save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------- text summary


def format_summary(record: dict[str, Any]) -> str:
    """The compact table ``bayessparse evaluate`` prints."""
    w = 32  # width of the row-label column

    def row(label: str, values, fmt: str = "9.4f") -> str:
        return f"{label:{w}s}" + "".join(f"{v:{fmt}}" if isinstance(v, float) else f"{v:>9s}" for v in values)

    cols = ("accuracy", "nll", "ece", "adaptive_ece", "classwise_ece", "mce", "brier")
    lines = [f"{record['method']} on {record['data']} ({record['predictive']}, {record['n_bins']} bins, "
             f"{record['n_test']} test examples)",
             row("", ("acc", "nll", "ece", "ada-ece", "cw-ece", "mce", "brier")),
             row("test", [record["test"][c] for c in cols])]
    ts = record.get("temperature_scaled")
    if ts:
        lines.append(row(f"temperature scaled T={ts['temperature']:.3f}", [ts[c] for c in cols]))
    mc = record.get("mc_predictive")
    if mc:
        lines.append(row(f"MC over Z, {mc['samples']} draws", [mc[c] for c in cols]))
        if "lppd" in mc:
            lp = mc["lppd"]
            lines.append(f"{'  test lppd':{w}s}{lp['sum']:.2f} ({lp['mean']:.4f} per example, {lp['n']} test examples)")
        lat = mc.get("latents")
        if lat:
            kf, kp = np.mean(lat["keep_fraction"]), np.mean(lat["keep_probability"])
            lines.append(f"{'  posterior: kept by Z':{w}s}{kf:.4f} of the active weights (mean over draws and "
                         f"{len(lat['layers'])} layers; E_q[Z] {kp:.4f})")
            if "scale_mean" in lat:
                lines.append(f"{'  posterior: weight scale':{w}s}mean σ {np.mean(lat['scale_mean']):.3g}, "
                             f"mean |U|/σ {np.mean(lat['snr_mean']):.3g}, "
                             f"‖W_s−U‖/‖U‖ {np.mean(lat['relative_deviation']):.3g}")
        if "loo" in mc:
            lo = mc["loo"]
            used = f"{lo['n']} of {lo['n_train']} train" + (f", subsample seed {lo['subsample_seed']}"
                                                              if lo["subsample_seed"] is not None else "")
            lines.append(f"{'  PSIS-LOO on training data':{w}s}elpd {lo['elpd']:.2f} ± {lo['se']:.2f} "
                         f"({lo['elpd_mean']:.4f} per example), p_loo {lo['p_loo']:.1f} ({used})")
            k = lo["pareto_k"]
            note = (f"; S < {PSIS_MIN_SAMPLES}: too few draws for the Pareto tail fit, k = inf"
                    if mc["samples"] < PSIS_MIN_SAMPLES else "")
            lines.append(f"{'  Pareto k':{w}s}good (≤ {lo['good_k']:.2f}) {k['good']}, bad {k['bad']}, "
                         f"very bad (> 1) {k['very_bad']}{note}")
    if record.get("ood"):
        o = record["ood"]
        lines.append(row(f"OOD '{o['set']}' ({o['n_out']} inputs)", ("auroc", "aupr", "fpr95")))
        for name, m in o["scores"].items():
            lines.append(row(f"  {name}", [m[k] for k in ("auroc", "aupr", "fpr95")]))
        for name, m in (mc or {}).get("ood", {}).items():
            lines.append(row(f"  {name} (MC over Z)", [m[k] for k in ("auroc", "aupr", "fpr95")]))
    if record.get("corruptions"):
        c = record["corruptions"]
        lines.append(row(f"corruptions (mean of {len(c['results'])})", ["clean", *(f"sev {s}" for s in SEVERITIES)]))
        for key in ("accuracy", "ece"):
            lines.append(row(f"  {key}", [c["clean"][key], *(r[key] for r in c["mean"])]))
    return "\n".join(lines)
