"""Training a deep GP baseline into a run folder, resumably, and loading it back.

One step is Adam on the negative per-example objective of a mini-batch (the DGP's ELBO, the DSPP's
predictive log-likelihood; :func:`bayessparse.baselines.deep_gp.objective`), estimated with
``num_samples`` samples of the DGP's layers and ``likelihood_samples`` draws of the softmax likelihood.
All randomness comes from ``cfg.seed`` (the data splits from ``cfg.data_seed``, the same as the neural
runs'): k-means and the batch order draw from one ``torch.Generator``, the initial parameters and the
Monte Carlo draws from the global torch RNG. Evaluation draws from its own seeded stream
(:mod:`bayessparse.baselines.gp_predict`), so that validating after every epoch does not change the
training.

The run folder (kind ``"deep-gp"``, one writer at a time, see :mod:`bayessparse.folders`) holds
``config.yaml`` (the :class:`DeepGPConfig`), ``checkpoint.pt`` (after every epoch, atomically: model,
optimizer and every RNG state as tensors, so that a resumed run ends bit-identical to an uninterrupted
one; ``finished`` at the end), ``metrics.json`` and, for a classifier, ``reliability.png``. The metrics
use the keys of a neural run where they apply -- ``accuracy``, ``nll``, ``ece``, ``brier`` and their
``val_`` versions, ``method``, ``data``, ``model``, ``seed``, ``epochs``, ``train_seconds``, ``history``
-- and add ``inference_ms_per_example`` (test-set prediction time with ``eval_samples`` draws, per
example) and ``parameters`` (every model and likelihood parameter, variational ones included). A
regressor reports ``rmse``, ``nll`` (of the predictive mixture) and ``coverage_50/90/95`` instead of
the classification metrics (:mod:`bayessparse.uncertainty.regression`), in standardised target units.

A run whose parameters diverge -- a NaN or infinite loss, a NaN kernel matrix or one no jitter makes
positive definite, a parameter NaN or infinite at the end of an epoch, a predictive that is not finite --
stops with :class:`~bayessparse.errors.TrainingDiverged`, one line naming the epoch and the step; the
checkpoint of the last finished epoch stays in place, as for a network run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gpytorch
import torch
from linear_operator.utils.errors import NanError, NotPSDError
from tqdm.auto import tqdm

from bayessparse import checkpoints
from bayessparse import data as datasets
from bayessparse.baselines.deep_gp import TwoLayerDGP, TwoLayerDSPP, build_model, free_parameters, objective
from bayessparse.baselines.deep_kernel import DeepKernelGP, build_deep_kernel
from bayessparse.baselines.gp_config import DEFAULTS, DeepGPConfig
from bayessparse.baselines.gp_predict import DeepGPPredictor, predict
from bayessparse.batches import batches, num_batches
from bayessparse.config import default_model, read_yaml
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import save_torch, write_json, write_text
from bayessparse.version import TRAINING_VERSION
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.rng import preserved_random_state, seed_everything

KIND = "deep-gp"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"
RELIABILITY = "reliability.png"
#: The entries every deep GP checkpoint holds (:meth:`GPRun.state_dict`).
CHECKPOINT_KEYS = ("config", "model", "optimizer", "generator", "torch_rng", "epoch", "step", "history")


@dataclass
class GPRun:
    """The live state of one deep GP run: what the checkpoint saves and restores."""

    cfg: DeepGPConfig
    data: datasets.DataBundle
    model: TwoLayerDGP | TwoLayerDSPP | DeepKernelGP
    optimizer: torch.optim.Adam
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def objective(self) -> gpytorch.mlls.MarginalLogLikelihood:
        return objective(self.model, len(self.data.train), self.cfg.beta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **checkpoints.progress_state(self),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoints.load_progress(self, state)


def flat_inputs(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """Every input of ``dataset``, flattened to ``(N, D)`` (digits ``(1, 8, 8)`` -> 64)."""
    return torch.cat([x.flatten(1) for x, _ in batches(dataset, 4096)])


def check_deep_gp_data(cfg: DeepGPConfig, data: datasets.DataBundle | None = None) -> datasets.DataBundle:
    """``cfg``'s data (loaded from ``cfg.data``, ``cfg.data_seed`` and ``cfg.n_samples`` when not given), checked against the fields
    that depend on it: the ``num_inducing`` k-means centres need as many training examples. The checks of
    :class:`DeepGPConfig` need no data; these are the rest (a :class:`ConfigError` names the field)."""
    data = data if data is not None else datasets.load(cfg.data, data_seed=cfg.data_seed, n_samples=cfg.n_samples)
    train = data.train_eval if data.train_eval is not None else data.train
    if cfg.num_inducing > len(train):
        raise ConfigError(f"num_inducing must be <= the {len(train)} training examples of {cfg.data}, "
                          f"got {cfg.num_inducing}")
    return data


def build_gp_run(cfg: DeepGPConfig, data: datasets.DataBundle | None = None) -> GPRun:
    """Data, model and optimizer of a fresh run, seeded from ``cfg.seed``. SV-DKL's network trains at
    ``trunk_lr``, everything else at ``lr`` (one Adam)."""
    data = check_deep_gp_data(cfg, data)
    x = flat_inputs(data.train_eval if data.train_eval is not None else data.train)
    seed_everything(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.method == "svdkl":
        model = build_deep_kernel(x, data.input_shape, cfg.trunk or default_model(cfg.data), data.num_classes, data.task,
                                  hidden_dims=cfg.hidden_dims, num_inducing=cfg.num_inducing, generator=generator)
        trunk = {id(p) for p in model.trunk.parameters()}
        groups = [{"params": list(model.trunk.parameters()), "lr": cfg.trunk_lr},
                  {"params": [p for p in model.parameters() if id(p) not in trunk]}]
    else:
        model = build_model(cfg.method, x, data.num_classes, data.task, hidden_dims=cfg.hidden_dims,
                            num_inducing=cfg.num_inducing, num_quad_sites=cfg.num_quad_sites, generator=generator)
        groups = [{"params": list(model.parameters())}]
    return GPRun(cfg, data, model, torch.optim.Adam(groups, lr=cfg.lr), generator)


def non_finite_parameter(run: GPRun) -> str | None:
    """The name of the first parameter of the run's model (likelihood included) holding a NaN or an infinity."""
    return next((name for name, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())), None)


def check_finite(run: GPRun) -> None:
    """Raise :class:`TrainingDiverged` if a parameter is NaN or infinite (at the end of an epoch: the loss check
    of every step sees a divergence one step late, and the validation pass would trip over it)."""
    name = non_finite_parameter(run)
    if name is not None:
        raise TrainingDiverged(f"{name} became non-finite at epoch {run.epoch + 1}, step {run.step}")


@contextmanager
def divergence(run: GPRun, epoch: int) -> Iterator[None]:
    """The model's errors that mean diverged parameters, as :class:`TrainingDiverged` naming ``epoch`` and the step.

    A NaN kernel matrix (``NanError``), one no jitter makes positive definite (``NotPSDError``), and any
    error raised while a parameter is non-finite (e.g. a distribution refusing NaN logits) are a divergence;
    other errors pass unchanged.
    """
    try:
        yield
    except TrainingDiverged:
        raise
    except (ValueError, RuntimeError) as exc:
        where = f"at epoch {epoch}, step {run.step}"
        name = non_finite_parameter(run)
        if name is not None:
            raise TrainingDiverged(f"{name} became non-finite {where}") from None
        if isinstance(exc, NanError):
            raise TrainingDiverged(f"a kernel matrix became NaN {where}") from None
        if isinstance(exc, NotPSDError):
            raise TrainingDiverged(f"a kernel matrix lost positive definiteness {where}") from None
        raise


def train_step(run: GPRun, mll: gpytorch.mlls.MarginalLogLikelihood, x: torch.Tensor, y: torch.Tensor) -> float:
    """One Adam step on ``−objective`` of a mini-batch (``num_samples`` samples of the DGP's layers, each
    with ``likelihood_samples`` draws of the softmax likelihood); returns that loss. Diverged parameters
    raise :class:`TrainingDiverged` (:func:`divergence`, a non-finite loss)."""
    run.optimizer.zero_grad(set_to_none=True)
    with divergence(run, run.epoch + 1):
        with gpytorch.settings.num_likelihood_samples(run.cfg.num_samples):
            output = run.model(x.flatten(1))
        with gpytorch.settings.num_likelihood_samples(run.cfg.likelihood_samples):
            loss = -mll(output, y)
        loss.backward()
    value = loss.item()
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {value} at epoch {run.epoch + 1}, step {run.step}")
    run.optimizer.step()
    run.step += 1
    return value


def train_epoch(run: GPRun, progress: bool = False) -> float:
    """One pass over the shuffled training set; returns the mean per-example loss."""
    run.model.train()
    mll, total, count = run.objective, 0.0, 0
    stream = batches(run.data.train, run.cfg.batch_size, shuffle=True, generator=run.generator)
    bar = tqdm(stream, total=num_batches(run.data.train, run.cfg.batch_size), desc=f"epoch {run.epoch + 1}",
               leave=False, disable=not progress)
    for x, y in bar:
        total += train_step(run, mll, x, y) * len(y)
        count += len(y)
    return total / count


def scores(run: GPRun, dataset: torch.utils.data.Dataset) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The metrics of the run's model on ``dataset`` and the predictions they come from; a predictive that is
    not finite, or cannot be computed for diverged parameters, raises :class:`TrainingDiverged`."""
    with divergence(run, run.epoch):
        out = predict(run.model, dataset, samples=run.cfg.eval_samples, batch_size=run.cfg.eval_batch_size,
                      seed=run.cfg.seed)
    if not all(bool(torch.isfinite(value).all()) for value in out.values() if value.is_floating_point()):
        raise TrainingDiverged(f"the deep GP's predictive became non-finite at epoch {run.epoch}, step {run.step}")
    task = run.data.task
    return task.scores(task.gp_predictions(out, run.data.target_scale), run.cfg.ece_bins), out


def fit(run: GPRun, checkpoint: Path | None = None, progress: bool = True, validate: bool = True) -> None:
    """Train from ``run.epoch`` to ``cfg.epochs``, validating (unless ``validate`` is false: no history then) and
    checkpointing after every epoch. A divergence (:class:`TrainingDiverged`) says whether the checkpoint of the
    last finished epoch is kept."""
    cfg = run.cfg
    epochs = tqdm(range(run.epoch, cfg.epochs), initial=run.epoch, total=cfg.epochs, desc=cfg.method,
                  disable=not progress)
    for _ in epochs:
        start, saved = time.perf_counter(), run.epoch
        try:
            loss = train_epoch(run, progress)
            check_finite(run)
            run.epoch += 1
            run.train_seconds += time.perf_counter() - start
            val, _ = scores(run, run.data.val) if validate else ({}, None)
        except TrainingDiverged as exc:
            kept = f"the checkpoint of epoch {saved} is kept" if saved and checkpoint else "nothing was saved"
            raise TrainingDiverged(f"{exc}; {kept}") from None
        if validate:
            run.history.append({"epoch": run.epoch, "train_loss": loss, **{f"val_{k}": v for k, v in val.items()}})
            epochs.set_postfix(loss=f"{loss:.3f}", val_nll=f"{val['nll']:.3f}")
        if checkpoint is not None:
            save_torch(checkpoint, run.state_dict())


def evaluate(run: GPRun) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metrics record of a trained run (module docstring) and its test predictions."""
    start = time.perf_counter()
    metrics, out = scores(run, run.data.test)
    elapsed = time.perf_counter() - start
    val, _ = scores(run, run.data.val)
    cfg = run.cfg
    metrics.update(
        {f"val_{k}": v for k, v in val.items()},
        method=cfg.method,
        data=cfg.data,
        model=(f"svdkl-{cfg.trunk or default_model(cfg.data)}-h{cfg.hidden_dims}-m{cfg.num_inducing}" if cfg.method == "svdkl"
               else f"gp2-h{cfg.hidden_dims}-m{cfg.num_inducing}"),
        seed=cfg.seed,
        epochs=cfg.epochs,
        train_seconds=run.train_seconds,
        inference_ms_per_example=1000 * elapsed / len(run.data.test),
        parameters=free_parameters(run.model),  # the Cholesky factors' lower triangles only
        history=run.history,
    )
    return metrics, out


def read_gp_checkpoint(path: Path) -> dict[str, Any]:
    """A deep GP checkpoint, loaded safely and checked for its entries."""
    return checkpoints.read_checkpoint(path, CHECKPOINT_KEYS, "deep GP")


def check_same_config(cfg: DeepGPConfig, saved: dict[str, Any], checkpoint: Path) -> None:
    """The checkpoint must belong to the configuration it is used with."""
    checkpoints.same_config(cfg.to_dict(), saved, DEFAULTS, checkpoint)


def _resume_point(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, if any; a finished or started run without ``resume`` is refused."""
    checkpoint = out / CHECKPOINT
    if resume:
        return checkpoint if checkpoint.exists() else None
    if checkpoint.exists() or (out / METRICS).exists():
        raise ConfigError(f"{out} already holds a run: pass resume=True to continue it, or choose another folder")
    return None


def train_deep_gp(cfg: DeepGPConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out`` (module docstring) and return its metrics record.

    Every input is checked before the folder is created; the folder has one writer at a time.
    """
    if not isinstance(cfg, DeepGPConfig):
        raise ConfigError(f"train_deep_gp expects a DeepGPConfig, got {type(cfg).__name__}")
    out = check_writable(out, "out")
    check_kind(out, KIND)
    resume_from = _resume_point(out, resume)
    state = read_gp_checkpoint(resume_from) if resume_from is not None else None
    if state is not None:
        check_same_config(cfg, state["config"], resume_from)
        checkpoints.check_resumable(state, resume_from)
    run = build_gp_run(cfg)
    if state is not None:
        with checkpoints.fitting(resume_from):
            run.load_state_dict(state)
    with exclusive(out, "train a deep GP", kind=KIND):
        if _resume_point(out, resume) != resume_from:
            raise ConfigError(f"{out} changed while this run was being set up; run it again")
        write_text(out / CONFIG, cfg.yaml())
        fit(run, out / CHECKPOINT, progress)
        try:
            metrics, predictions = evaluate(run)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"{exc}; the checkpoint of epoch {run.epoch} is kept") from None
        metrics["training_version"] = TRAINING_VERSION
        save_torch(out / CHECKPOINT, {**run.state_dict(), "finished": True})
        task = run.data.task
        if task.predicts_classes:  # a classifier's reliability diagram (the run-folder contract above)
            task.plot({cfg.method: task.gp_predictions(predictions)}, out / RELIABILITY,
                      title=f"{cfg.method} on {cfg.data}", n_bins=cfg.ece_bins)
        write_json(out / METRICS, metrics)
    return metrics


def load_deep_gp(out: str | Path) -> DeepGPPredictor:
    """The trained model of a finished run folder as a predictor (``dataset -> probs`` or ``(mean, variance)``).

    The configuration comes from ``config.yaml`` and must match the checkpoint's; the caller's global
    random states are left as they were.
    """
    out = Path(out)
    check_kind(out, KIND)
    if not (out / CONFIG).is_file():
        raise ConfigError(f"{out} is not a deep GP run folder (no {CONFIG})")
    cfg = DeepGPConfig.from_dict(read_yaml(out / CONFIG))
    state = read_gp_checkpoint(out / CHECKPOINT)
    check_same_config(cfg, state["config"], out / CHECKPOINT)
    if not state.get("finished"):
        raise ConfigError(f"the run in {out} has not finished (resume it with train_deep_gp(..., resume=True))")
    with preserved_random_state():
        run = build_gp_run(cfg)
    with checkpoints.fitting(out / CHECKPOINT):
        run.model.load_state_dict(state["model"])
    return DeepGPPredictor(run.model, cfg)
