"""The trainer: the loop shared by every method, engine and task.

The run's engine (:mod:`bayessparse.engines`, by the config's ``engine`` and ``kernels``) takes each step:
``plain`` (the default: the task's negative log-likelihood of a mini-batch, SGD with (Nesterov) momentum and
weight decay on conv / linear weights only, a per-step learning-rate schedule, :mod:`bayessparse.optim`),
``pyro`` (one ``pyro.infer.SVI`` step on the ELBO whose maximisation the plain step is; same method hooks,
same weights for the same seed) or ``sparse-kernels``. The method's hooks (:mod:`bayessparse.method`) decide
everything sparse; the data's task (:mod:`bayessparse.tasks`) owns the network head, the loss, the scores
and the figure. Everything else -- data order, epochs, checkpoints, averaging, evaluation, the run folder --
is this loop's.

Runs are reproducible and resumable: all randomness comes from ``cfg.seed`` (the data from
``cfg.data_seed``), a checkpoint is written atomically after every epoch, and a resumed run
ends bit-identical to an uninterrupted one on the same machine.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

import models
from bayessparse import checkpoints, distributed
from bayessparse import data as datasets
from bayessparse.batches import batch_sizes, batches, inputs, num_batches
from bayessparse.config import DEFAULTS, TrainConfig, dump_yaml, read_yaml, resolve
from bayessparse.engines import Engine, build_engine, check_distributed
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import save_torch, write_json, write_text
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.kernels.inference import sparse_inference
from bayessparse.method import TrainingMethod
from bayessparse.methods import build_method, check_method
from bayessparse.rng import preserved_random_state, seed_everything
from bayessparse.sparsifier import Sparsifier
from bayessparse.sparsity.density import prunable_weights
from bayessparse.tasks import Task
from bayessparse.version import TRAINING_VERSION

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"
RELIABILITY = "reliability.png"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def load_data(cfg: TrainConfig) -> datasets.DataBundle:
    return datasets.load(
        cfg.data, data_seed=cfg.data_seed, root=cfg.data_root, label_noise=cfg.label_noise, n_samples=cfg.n_samples
    )


def measured_density(model: nn.Module) -> float:
    """Fraction of non-zero entries over all prunable weights, counted from the weights themselves."""
    weights = list(prunable_weights(model).values())
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    return nonzero / sum(w.numel() for w in weights)


@dataclass
class Run:
    """The live state of one training run: what the checkpoint saves and restores."""

    cfg: TrainConfig
    data: datasets.DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None  # None: the engine schedules its own learning rate (pyro)
    method: TrainingMethod
    generator: torch.Generator
    device: torch.device
    sparsifier: Sparsifier  # the method on the model and optimizer: the plain step, the epoch and step counts
    engine: Engine  # who takes the steps (bayessparse.engines)
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    world: distributed.World = field(default_factory=distributed.World)  # the processes of a torchrun launch
    net: nn.Module | None = None  # what the plain step runs forward: the model, under DDP when distributed

    @property
    def task(self) -> Task:
        """The data's task (:mod:`bayessparse.tasks`): the loss, the scores and the figure."""
        return self.data.task

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(self.data.train, self.cfg.batch_size)

    @property
    def step(self) -> int:
        """Optimizer steps taken (update steps included): the sparsifier's count."""
        return self.sparsifier.t

    @step.setter
    def step(self, value: int) -> None:
        self.sparsifier.t = value

    @property
    def epoch(self) -> int:
        """Epochs finished: the sparsifier's count."""
        return self.sparsifier.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.sparsifier.epoch = value

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method": self.method.state_dict(),
            "engine": self.engine.state_dict(),
            **checkpoints.progress_state(self),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:  # the pyro engine's optimizer schedules its own learning rate
            self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        self.engine.load_state_dict(state.get("engine") or {})
        checkpoints.load_progress(self, state)


def build_run(cfg: TrainConfig, data: datasets.DataBundle | None = None) -> Run:
    """Data, model, optimizer, schedule and method of a fresh run, seeded from ``cfg.seed``."""
    check_method(cfg.method)
    device = resolve_device(cfg.device)
    data = data if data is not None else load_data(cfg)  # before seeding: generators may touch global RNGs
    seed_everything(cfg.seed)
    model = build_network(cfg, data).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = num_batches(data.train, cfg.batch_size)
    engine = build_engine(cfg, model, len(data.train), steps_per_epoch)
    method = build_method(cfg, model, generator)
    data.task.check_method(method, cfg.method, cfg.data)
    sparsifier = Sparsifier(model, engine.optimizer, method, cfg.epochs * steps_per_epoch, steps_per_epoch)
    engine.bind(method)
    world = distributed.world()
    check_distributed(cfg, engine, world.size)
    return Run(cfg, data, model, engine.optimizer, engine.scheduler, method, generator, device, sparsifier, engine,
               world=world, net=distributed.wrap(model, device))


def build_network(cfg: TrainConfig, data: datasets.DataBundle) -> nn.Module:
    """The run's network (:func:`models.build`) inside its task's head (:meth:`bayessparse.tasks.Task.network`:
    for regression data a one-output network in a :class:`~bayessparse.likelihoods.GaussianRegressor`, which
    learns the noise scale with it)."""
    return data.task.network(models.build(cfg.model, data.num_classes, data.input_shape, width=cfg.width))


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, total: int | None = None) -> float:
    """One step of the shared algorithm, by the run's engine; returns the mini-batch loss. ``total``: the
    global batch's size when ``(x, y)`` is this process's part of it (a distributed run, plain engine)."""
    return run.engine.step(run, x, y, total)


def check_finite(run: Run) -> None:
    """Raise :class:`TrainingDiverged` if a weight or a BatchNorm statistic is NaN or infinite.

    The loss check of every step sees a divergence one step late; this one, at the end of each
    epoch, catches the last step's (before the validation pass would trip over the NaN outputs).
    """
    for name, tensor in [*run.model.named_parameters(), *run.model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(f"{name} became non-finite at epoch {run.epoch + 1}, step {run.step}")


def train_epoch(run: Run, progress: bool) -> float:
    """One pass over the shuffled training set; returns the mean training loss."""
    run.model.train()
    loss_sum, count = 0.0, 0
    stream = batches(run.data.train, run.cfg.batch_size, shuffle=True, generator=run.generator, device=run.device,
                     world=run.world)
    bar = tqdm(stream, total=run.steps_per_epoch, desc=f"epoch {run.epoch + 1}", leave=False, disable=not progress)
    sizes = batch_sizes(run.data.train, run.cfg.batch_size)  # of the global batches (a rank loads its part)
    for (x, y), size in zip(bar, sizes):
        loss_sum += train_step(run, x, y, size) * len(y)
        count += len(y)
    return loss_sum / max(count, 1)


def validation_scores(run: Run, model: nn.Module) -> dict[str, float]:
    """Validation scores of ``model`` (:meth:`bayessparse.tasks.Task.validation_scores`); non-finite outputs
    (finite weights too large for the forward pass) are a divergence, and so is a regression head's noise
    scale whose square is not a finite positive number."""
    return run.task.validation_scores(model, run.data.val, run.cfg.eval_batch_size, run.device, run.cfg.ece_bins,
                                      where=f"epoch {run.epoch}, step {run.step}", scale=run.data.target_scale)


def recalibrate_batchnorm(run: Run, model: nn.Module) -> None:
    """Re-estimate BatchNorm statistics of ``model`` with one pass over the (un-augmented) training set."""
    train_set = run.data.train_eval if run.data.train_eval is not None else run.data.train
    update_bn(inputs(train_set, run.cfg.eval_batch_size, run.device), model)


def fit(run: Run, checkpoint: Path | None = None, progress: bool = True) -> nn.Module:
    """Train from ``run.epoch`` to ``cfg.epochs``; checkpoint after every epoch; return the model to evaluate."""
    cfg = run.cfg
    epochs = tqdm(range(run.epoch, cfg.epochs), initial=run.epoch, total=cfg.epochs, desc=cfg.method, disable=not progress)
    for _ in epochs:
        start, saved = time.perf_counter(), run.epoch
        try:
            loss = train_epoch(run, progress)
            check_finite(run)
            run.sparsifier.end_of_epoch()
            run.train_seconds += time.perf_counter() - start
            current = run.method.current_model(run.model, lambda m: recalibrate_batchnorm(run, m))
            val = validation_scores(run, current)
        except TrainingDiverged as exc:
            kept = f"the checkpoint of epoch {saved} is kept" if saved and checkpoint else "nothing was saved"
            raise TrainingDiverged(f"{exc}; {kept}") from None
        score = run.task.score
        run.history.append({"epoch": run.epoch, "train_loss": loss, f"val_{score}": val[score], "val_nll": val["nll"]})
        epochs.set_postfix(loss=f"{loss:.3f}", **{f"val_{score[:4]}": f"{val[score]:.3f}"})
        if checkpoint is not None:
            save_torch(checkpoint, run.state_dict())
    return run.sparsifier.final_model(lambda m: recalibrate_batchnorm(run, m))


def inference_model(run: Run, model: nn.Module) -> nn.Module:
    """The network to predict with: for a run trained on sparse kernels (``kernels`` not ``"dense"``),
    a copy whose sparse enough linear layers are CSR (:func:`bayessparse.kernels.inference.sparse_inference`;
    same predictions within float rounding); else ``model`` itself."""
    if run.cfg.kernels == "dense":
        return model
    return sparse_inference(model)


def evaluate_model(run: Run, model: nn.Module) -> tuple[dict[str, Any], Any]:
    """Test-set metrics of ``model`` plus the run's identity; also returns the test predictions the run's
    figure is drawn from (:meth:`bayessparse.tasks.Task.test_metrics`)."""
    cfg = run.cfg
    metrics, predictions = run.task.test_metrics(run, model, inference_model(run, model))
    metrics.update(
        density=measured_density(model),
        parameters=sum(int(torch.count_nonzero(p)) for p in model.parameters()),  # non-zero ones
        method=cfg.method,
        sparsity=cfg.effective_sparsity,
        seed=cfg.seed,
        epochs=cfg.epochs,
        train_seconds=run.train_seconds,
        data=cfg.data,
        model=cfg.model,
        history=run.history,
        training_version=TRAINING_VERSION,
    )
    return metrics, predictions


def prepare_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> Path | None:
    """Check the run folder against ``resume``; return the checkpoint to resume from, if any."""
    checkpoint = out / CHECKPOINT
    if resume:
        return checkpoint if checkpoint.exists() else None
    if checkpoint.exists() or (out / METRICS).exists():
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return None


def load_finished(run_dir: str | Path) -> tuple[Run, nn.Module]:
    """Rebuild a finished run from its folder: the run (state at the end of training) and its evaluated model.

    The evaluated model is the one ``metrics.json`` describes (for CigL the averaged network).
    The caller's global random states (torch, numpy, python) are left as they were.
    """
    with preserved_random_state():
        return _load_finished(Path(run_dir))


def _load_finished(run_dir: Path) -> tuple[Run, nn.Module]:
    check_kind(run_dir, "run")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG})")
    cfg = resolve(read_yaml(run_dir / CONFIG))
    state = read_checkpoint(run_dir / CHECKPOINT)
    check_same_config(cfg, state["config"], run_dir / CHECKPOINT)
    if "final_model" not in state:
        raise ConfigError(f"the run in {run_dir} has not finished (resume it with: bayessparse train --out {run_dir} --resume)")
    run = build_run(cfg)
    restore(run, state, run_dir / CHECKPOINT)
    final = run.method.evaluated_structure(run.model)
    with checkpoints.fitting(run_dir / CHECKPOINT):
        final.load_state_dict(state["final_model"])
    final.eval()
    return run, final


#: The entries every run checkpoint holds (:meth:`Run.state_dict`).
CHECKPOINT_KEYS = ("config", "model", "optimizer", "method", "generator", "epoch", "step", "history")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint, loaded safely (:func:`~bayessparse.files.load_torch`) and checked for its entries."""
    return checkpoints.read_checkpoint(path, CHECKPOINT_KEYS, "run")


def restore(run: Run, state: dict[str, Any], path: Path) -> None:
    """``run.load_state_dict(state)``; a foreign or damaged checkpoint is a one-line error."""
    with checkpoints.fitting(path):
        run.load_state_dict(state)


def check_same_config(cfg: TrainConfig, saved: dict[str, Any], checkpoint: Path, ignore: tuple[str, ...] = ()) -> None:
    """The checkpoint must belong to the configuration it is used with (a resumed run, ``config.yaml``)."""
    checkpoints.same_config(cfg.to_dict(), saved, DEFAULTS, checkpoint, ignore)


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg`` into the run folder ``out`` and return its metrics record.

    Writes the run-folder contract: ``config.yaml`` (resolved), ``checkpoint.pt`` (after every
    epoch, resumable; the evaluated model under ``final_model`` at the end), ``metrics.json`` and
    ``reliability.png``. Every input is validated before the folder is created; the folder has one
    writer at a time (:func:`bayessparse.files.exclusive`: a second one exits with a one-line error).
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"train expects a TrainConfig (bayessparse.config.resolve(...)), got {type(cfg).__name__}")
    out = check_writable(out)
    check_kind(out, "run")
    resume_from = prepare_run_dir(cfg, out, resume)
    state = read_checkpoint(resume_from) if resume_from is not None else None
    if state is not None:
        check_same_config(cfg, state["config"], resume_from)
        checkpoints.check_resumable(state, resume_from)
    run = build_run(cfg)
    if state is not None:
        restore(run, state, resume_from)
    main = run.world.main  # with several processes rank 0 writes the folder; the others train alongside
    distributed.barrier()  # every rank has read the folder before rank 0 writes to it
    with exclusive(out, "train", kind="run") if main else contextlib.nullcontext():
        if main and prepare_run_dir(cfg, out, resume) != resume_from:  # another writer came and went meanwhile
            raise ConfigError(f"{out} changed while this run was being set up; run the command again")
        if main:
            write_text(out / CONFIG, dump_yaml(cfg))
        final = fit(run, out / CHECKPOINT if main else None, progress and main)
        distributed.broadcast_buffers(run.model, run.world)  # rank 0's BatchNorm statistics are the model's
        distributed.check_same_weights(run.model, run.world, run.device, "at the end of training")
        metrics, predictions = evaluate_model(run, final)
        metrics.update(run.method.summary(),
                       **distributed.describe(run.world, run.model, run.sparsifier.masks, run.device))
        if not main:
            return metrics
        save_torch(out / CHECKPOINT, {**run.state_dict(), "final_model": final.state_dict()})
        run.task.plot({cfg.method: predictions}, out / RELIABILITY, title=f"{cfg.method} on {cfg.data}",
                      n_bins=cfg.ece_bins)
        write_json(out / METRICS, metrics)
    return metrics
