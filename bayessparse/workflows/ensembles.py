"""FreeTickets ensembles of sparse networks: DST Ensemble and EDST Ensemble.

Liu, Chen, Chen, Atashgahi, Yin, Kou, Shen, Pechenizkiy, Wang and Mocanu, "Deep Ensembling with No
Overhead for either Training or Testing: The All-Round Blessings of Dynamic Sparsity", ICLR 2022.

* **DST Ensemble** (``kind="dst"``): ``M`` independent sparse runs of ``cfg`` with seeds
  ``cfg.seed, cfg.seed + 1, ...``; each member is an ordinary run folder written by
  :func:`bayessparse.train.train`. With ``method="dense"`` this is a plain deep ensemble.
* **EDST Ensemble** (``kind="edst"``): ONE run, an exploration phase followed by ``M`` refinement
  phases; the model at the end of refinement phase ``i`` is member ``i``:

  - exploration (``explore_epochs``): the constant learning rate ``cfg.lr`` (after ``cfg.warmup_epochs``
    of linear warm-up, if any) with the method's normal mask updates, the RigL schedule
    (``update_interval``, ``update_alpha``, ``update_end``) laid over the phase;
  - refinement ``i`` (``refine_epochs`` each): the learning rate is reset to ``refine_lr``
    (default ``cfg.lr``) and decays within the phase by ``cfg.lr_schedule`` (cosine to 0; ``step`` with
    ``cfg.step_milestones`` as fractions of the phase; ``constant``); the method's mask updates run on the
    RigL schedule laid over the phase. The reference code refines at ``lr / 10`` then ``lr / 100`` for
    100-epoch phases; at CPU scale (MNIST-1D, cnn1d, RigL 90 %, 4-epoch phases) members refined from
    ``lr / 10`` did not recover from the jump (ensemble accuracy 0.948 vs 0.969 from ``lr``), hence the
    default; pass ``refine_lr = cfg.lr / 10`` with long phases to follow the paper;
  - before refinement phases 2..M, a **large jump**: one mini-batch's dense gradient, then
    :meth:`~bayessparse.sparsity.dst.MaskUpdater.jump` drops ``floor(0.8 nnz_l)`` active weights of every
    sparse layer by magnitude and regrows as many by gradient magnitude (grown weights 0, their momentum 0).
    Refinement 1 starts from the end of exploration with no jump, as in the reference code
    (``main_EDST.py``: the learning rate drops after exploration, ``truncate_weights(0.8)`` at later phase starts);
  - each member's BatchNorm statistics are re-estimated on the training set; for CigL a member is the weight
    average of its own refinement phase (averaging restarts with each phase, after the phase's
    ``averaging_start`` fraction and its last mask update), because the average of one phase is the CigL model
    of that basin, while averaging across a jump would mix different sparse networks;
  - the run is checkpointed after every epoch (``OUT/checkpoint.pt``) and a re-run resumes it, bit-identically
    on the same machine (the jump and the phase set-up are replayed from the saved RNG states). A member's
    ``train_seconds`` is the run's time up to that member.

  Defaults follow the reference CIFAR script (a 250-epoch single run, 150 epochs of exploration and 100 per
  member): ``explore_epochs = round(0.6 cfg.epochs)``, ``refine_epochs = round(0.4 cfg.epochs)``, so that with
  ``M = 3`` exploration is the first third of training. The jump always drops by magnitude and grows by
  gradient, whatever the method's own grow criterion (so ``static`` and SET ensembles work too).

The prediction is the mean of the member softmax outputs; every metric (ensemble and per member) is computed
on the whole test set. Diversity: prediction disagreement and mean pairwise KL between members
(:mod:`bayessparse.uncertainty.diversity`); mask overlap ``|M_i ∩ M_j| / |M_i|`` over all prunable weights.

Training cost, relative to one dense run of ``cfg.epochs`` epochs:

* ``flops_proxy = Σ_runs epochs × density / cfg.epochs`` -- the forward and backward of a prunable layer under a
  mask costs ``∝`` its density with a sparse kernel (the dense-gradient steps of RigL's mask updates, the
  non-prunable layers and BatchNorm re-estimation are ignored);
* ``train_seconds_ratio``: measured training seconds over those of a dense run of the same config
  (``OUT/dense-reference``, trained unless another finished run folder is named; on CPU masked training runs
  dense kernels, so this ratio reflects wall time, not FLOPs).

Output folder::

    OUT/ensemble.yaml      the ensemble's specification (a re-run must match it; it then resumes)
    OUT/member-I/          one run folder per member (config.yaml, checkpoint.pt with final_model, metrics.json,
                           reliability.png), loadable with bayessparse.train.load_finished
    OUT/checkpoint.pt      EDST only: the run's state after every epoch (resumable)
    OUT/dense-reference/   the dense run that the measured time ratio uses (unless disabled)
    OUT/predictions.pt     {"member_probs": (M, N, C), "labels": (N,)} on the test set
    OUT/ensemble.json      kind, members, ensemble, diversity, mask_overlap, cost
    OUT/reliability.png    reliability diagram of the ensemble
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from bayessparse.batches import batches
from bayessparse.config import TrainConfig, dump_yaml
from bayessparse.data import require_classification
from bayessparse.errors import ConfigError
from bayessparse.files import save_torch, write_json, write_text
from bayessparse.folders import LOCK, MARKER, check_kind, check_writable, exclusive, mark
from bayessparse.methods import check_method
from bayessparse.predict import predict_probs
from bayessparse.sparsity.averaging import MaskedWeightAverage
from bayessparse.sparsity.cigl import CigL
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.dst import MaskUpdater
from bayessparse.sparsity.growth import GradientGrow, MagnitudeDrop
from bayessparse.sparsity.schedule import UpdateSchedule
from bayessparse.sparsity.training import SparseTraining
from bayessparse.train import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RELIABILITY,
    Run,
    build_run,
    check_same_config,
    evaluate_model,
    fit,
    load_data,
    load_finished,
    read_checkpoint,
    recalibrate_batchnorm,
    restore,
    train,
)
from bayessparse.uncertainty.diversity import diversity
from bayessparse.uncertainty.metrics import summary
from bayessparse.uncertainty.reliability import plot_reliability

KINDS = ("dst", "edst")
SPEC = "ensemble.yaml"
RESULTS = "ensemble.json"
PREDICTIONS = "predictions.pt"
DENSE_REFERENCE = "dense-reference"
JUMP_FRACTION = 0.8

#: how tables spell the methods
DISPLAY_NAMES = {"dense": "dense", "static": "static", "set": "SET", "rigl": "RigL", "dst-ee": "DST-EE", "cigl": "CigL",
                 "rigl-wdp": "RigL+W-DP", "cigl-pa": "CigL-PA"}

__all__ = [
    "KINDS",
    "EDSTPlan",
    "Phase",
    "ensemble",
    "ensemble_name",
    "ensemble_probs",
    "member_dir",
    "mask_overlap",
    "training_cost",
    "train_dst",
    "train_edst",
    "edst_lr_factor",
    "large_jump",
    "load_member_probs",
    "format_report",
    "PhaseSchedule",
]


def ensemble_name(kind: str, method: str, members: int) -> str:
    """The table name of an ensemble: ``"EDST(RigL) x3"``, ``"DST(CigL) x3"``, ``"dense x3"`` (a deep ensemble)."""
    shown = DISPLAY_NAMES.get(method, method)
    if kind == "dst" and method == "dense":
        return f"dense x{members}"
    return f"{kind.upper()}({shown}) x{members}"


def member_dir(out: str | Path, i: int) -> Path:
    return Path(out) / f"member-{i}"


# ----------------------------------------------------------------------------- EDST plan


@dataclass(frozen=True)
class Phase:
    """One EDST phase, in epochs ``[start, end)``; ``member`` is the index it produces (None: exploration)."""

    start: int
    end: int
    member: int | None

    @property
    def epochs(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class EDSTPlan:
    """Phase lengths and learning rates of an EDST run (validated on construction)."""

    members: int
    explore_epochs: int
    refine_epochs: int
    refine_lr: float
    jump_fraction: float = JUMP_FRACTION

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        members: int,
        explore_epochs: int | None = None,
        refine_epochs: int | None = None,
        refine_lr: float | None = None,
        jump_fraction: float = JUMP_FRACTION,
    ) -> "EDSTPlan":
        """Defaults: ``0.6 cfg.epochs`` of exploration, ``0.4 cfg.epochs`` per member, ``refine_lr = cfg.lr``."""
        explore = max(1, round(0.6 * cfg.epochs)) if explore_epochs is None else explore_epochs
        refine = max(1, round(0.4 * cfg.epochs)) if refine_epochs is None else refine_epochs
        plan = cls(members, explore, refine, cfg.lr if refine_lr is None else float(refine_lr), float(jump_fraction))
        plan.check(cfg)
        return plan

    def check(self, cfg: TrainConfig) -> None:
        if isinstance(self.explore_epochs, bool) or not isinstance(self.explore_epochs, int) or self.explore_epochs < 1:
            raise ConfigError(f"explore_epochs must be an integer >= 1, got {self.explore_epochs!r}")
        if isinstance(self.refine_epochs, bool) or not isinstance(self.refine_epochs, int) or self.refine_epochs < 1:
            raise ConfigError(f"refine_epochs must be an integer >= 1, got {self.refine_epochs!r}")
        if not (self.refine_lr > 0 and math.isfinite(self.refine_lr)):
            raise ConfigError(f"refine_lr must be > 0, got {self.refine_lr!r}")
        if not (0.0 < self.jump_fraction <= 1.0):
            raise ConfigError(f"jump_fraction must be in (0, 1], got {self.jump_fraction!r}")
        if cfg.method == "cigl-pa":  # its snapshots would span the phases; a member is one phase's weight average
            raise ConfigError("method 'cigl-pa' cannot form EDST members (use cigl, or a dst ensemble)")
        if cfg.warmup_epochs >= self.explore_epochs:
            raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) must be shorter than explore_epochs ({self.explore_epochs})")

    @property
    def total_epochs(self) -> int:
        return self.explore_epochs + self.members * self.refine_epochs

    @property
    def phases(self) -> list[Phase]:
        out = [Phase(0, self.explore_epochs, None)]
        for i in range(self.members):
            start = self.explore_epochs + i * self.refine_epochs
            out.append(Phase(start, start + self.refine_epochs, i))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def edst_lr_factor(plan: EDSTPlan, cfg: TrainConfig, steps_per_epoch: int):
    """Multiplier of ``cfg.lr`` at global step ``t`` of an EDST run (see the module docstring)."""
    explore = plan.explore_epochs * steps_per_epoch
    refine = plan.refine_epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    ratio = plan.refine_lr / cfg.lr
    milestones = [int(m * refine) for m in cfg.step_milestones]

    def factor(t: int) -> float:
        if t < explore:
            return (t + 1) / warmup if t < warmup else 1.0
        u = min(t - explore - refine * min((t - explore) // refine, plan.members - 1), refine)
        if cfg.lr_schedule == "cosine":
            return ratio * 0.5 * (1.0 + math.cos(math.pi * u / refine))
        if cfg.lr_schedule == "step":
            return ratio * cfg.step_gamma ** sum(u >= m for m in milestones)
        return ratio

    return factor


class PhaseSchedule:
    """An :class:`UpdateSchedule` laid over the steps ``[start, start + inner.total_steps)`` of a longer run."""

    def __init__(self, start: int, inner: UpdateSchedule) -> None:
        self.start, self.inner = start, inner

    def is_update_step(self, t: int) -> bool:
        return self.inner.is_update_step(t - self.start)

    def fraction(self, t: int) -> float:
        return self.inner.fraction(t - self.start)

    @property
    def t_end(self) -> int:
        return self.start + self.inner.t_end

    def __repr__(self) -> str:
        return f"PhaseSchedule(start={self.start}, {self.inner})"


# ----------------------------------------------------------------------------- EDST


def _configure_phase(run: Run, plan: EDSTPlan, phase: Phase) -> None:
    """Point the method's mask-update schedule (and CigL's averaging start) at ``phase``; idempotent."""
    method, cfg, spe = run.method, run.cfg, run.steps_per_epoch
    if not isinstance(method, SparseTraining):
        return
    start, steps = phase.start * spe, phase.epochs * spe
    schedule = PhaseSchedule(start, UpdateSchedule(steps, cfg.update_interval, cfg.update_alpha, cfg.update_end))
    method.schedule = schedule
    if method.updater is not None:
        method.updater.schedule = schedule
    if isinstance(method, CigL):
        if phase.member is None:
            method.averaging_step = math.inf  # no average of the exploration phase
        else:
            method.averaging_step = start + max(int(method.averaging_start * steps), schedule.inner.t_end)


def large_jump(run: Run, fraction: float = JUMP_FRACTION) -> dict[str, Any]:
    """EDST's jump: dense gradient of one training mini-batch, then drop ``fraction`` of every sparse layer's
    active weights by magnitude and regrow as many by gradient magnitude (weights and momentum 0 there)."""
    method = run.method
    if not isinstance(method, SparseTraining):
        raise ConfigError(f"the EDST jump needs a sparse method, not '{run.cfg.method}'")
    updater = method.updater or MaskUpdater(method.masks, method.schedule, MagnitudeDrop(), GradientGrow(), run.generator)
    stream = batches(run.data.train, run.cfg.batch_size, shuffle=True, generator=run.generator, device=run.device)
    x, y = next(iter(stream))
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    with method.forward(run.model):
        F.cross_entropy(run.model(x), y).backward()
    report = updater.jump(fraction, run.optimizer, drop=MagnitudeDrop(), grow=GradientGrow())
    run.optimizer.zero_grad(set_to_none=True)
    if isinstance(method, CigL):
        method.random_mask.refresh()  # Z is drawn over the active positions of M, which moved
    return report


def _begin_phase(run: Run, plan: EDSTPlan, phase: Phase) -> None:
    """Side effects at the first epoch of a refinement phase: the jump (phases 2..M) and a fresh CigL average."""
    if phase.member is None:
        return
    if phase.member >= 1:
        large_jump(run, plan.jump_fraction)
    method = run.method
    if isinstance(method, CigL):
        method.average = MaskedWeightAverage(run.model, method.random_mask, method.snapshot)


def _save_member(run: Run, model: nn.Module, out: Path, phase: Phase, plan: EDSTPlan) -> dict[str, Any]:
    """Write member ``phase.member`` as a run folder (the train contract) and return its metrics."""
    folder = member_dir(out, phase.member)
    mark(folder, "run")
    metrics, predictions = evaluate_model(run, model)
    metrics.update(
        kind="edst", member=phase.member, phase_start_epoch=phase.start, phase_end_epoch=phase.end,
        explore_epochs=plan.explore_epochs, refine_epochs=plan.refine_epochs,
    )
    write_text(folder / CONFIG, dump_yaml(run.cfg))
    save_torch(folder / CHECKPOINT, {**run.state_dict(), "final_model": model.state_dict()})
    run.task.plot({run.cfg.method: predictions}, folder / RELIABILITY, title=f"EDST member {phase.member}",
                  n_bins=run.cfg.ece_bins)
    write_json(folder / METRICS, metrics)
    return metrics


def train_edst(cfg: TrainConfig, plan: EDSTPlan, out: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Train an EDST ensemble into ``out`` (resuming from ``out/checkpoint.pt``); return the member metrics."""
    out = Path(out)
    total = cfg.replace(epochs=plan.total_epochs)
    run = build_run(total)
    run.scheduler = LambdaLR(run.optimizer, edst_lr_factor(plan, cfg, run.steps_per_epoch))
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        state = read_checkpoint(checkpoint)
        check_same_config(total, state["config"], checkpoint, ignore=("epochs",))  # it trains phase by phase
        restore(run, state, checkpoint)
    records = []
    for phase in plan.phases:
        done = phase.member is None or (member_dir(out, phase.member) / METRICS).exists()
        if run.epoch >= phase.end and done:
            if phase.member is not None:
                records.append(_load_json(member_dir(out, phase.member) / METRICS))
            continue
        if run.epoch > phase.end:
            raise ConfigError(f"{out} is inconsistent: member {phase.member} is missing but training went past it")
        _configure_phase(run, plan, phase)
        if run.epoch == phase.start:
            _begin_phase(run, plan, phase)
        run.cfg = total.replace(epochs=phase.end)  # fit trains up to cfg.epochs
        final = fit(run, checkpoint, progress)
        if phase.member is None:
            continue
        if final is run.model:
            final = copy.deepcopy(run.model)
            recalibrate_batchnorm(run, final)
        records.append(_save_member(run, final.eval(), out, phase, plan))
    return records


# ----------------------------------------------------------------------------- DST


def train_dst(cfg: TrainConfig, members: int, out: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Train ``members`` independent runs with seeds ``cfg.seed + i`` into ``out/member-i`` (resumed if there)."""
    records = []
    for i in range(members):
        metrics = train(cfg.replace(seed=cfg.seed + i), member_dir(out, i), resume=True, progress=progress)
        records.append({**metrics, "kind": "dst", "member": i})
    return records


# ----------------------------------------------------------------------------- evaluation


def ensemble_probs(member_probs: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction: the mean of the member softmax outputs, ``(M, N, C) -> (N, C)``."""
    if member_probs.dim() != 3:
        raise ValueError(f"member_probs must have shape (M, N, C), got {tuple(member_probs.shape)}")
    return member_probs.mean(dim=0)


def _masks(run: Run, model: nn.Module) -> dict[str, torch.Tensor]:
    """A member's masks over all prunable weights (all ones for dense training)."""
    masks = getattr(run.method, "masks", None)
    if masks is not None:
        return {n: (m != 0).cpu() for n, m in masks.masks.items()}
    return {n: torch.ones(w.shape, dtype=torch.bool) for n, w in prunable_weights(model).items()}


def mask_overlap(masks: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``overlap[i][j] = |M_i ∩ M_j| / |M_i|`` over all prunable weights; ``mean`` over the pairs ``i != j``."""
    flat = [torch.cat([m[n].flatten().bool() for n in sorted(m)]) for m in masks]
    sizes = [int(f.sum()) for f in flat]
    matrix = [[int((fi & fj).sum()) / si for fj in flat] for fi, si in zip(flat, sizes)]
    pairs = [matrix[i][j] for i in range(len(flat)) for j in range(len(flat)) if i != j]
    return {"matrix": matrix, "mean": sum(pairs) / len(pairs) if pairs else 1.0, "active": sizes}


def load_member_probs(out: str | Path, members: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Test softmax of each member's evaluated model ``(M, N, C)``, the labels and each member's masks."""
    probs, masks, labels = [], [], None
    for i in range(members):
        run, model = load_finished(member_dir(out, i))
        p, labels = predict_probs(model, run.data.test, run.cfg.eval_batch_size, run.device)
        probs.append(p)
        masks.append(_masks(run, model))
    return torch.stack(probs), labels, masks


def training_cost(
    cfg: TrainConfig, runs: Sequence[tuple[int, float]], train_seconds: float, dense: dict[str, Any] | None
) -> dict[str, Any]:
    """Cost relative to one dense run of ``cfg.epochs`` epochs; ``runs`` lists (epochs, density) per trained run."""
    flops = sum(e * d for e, d in runs) / cfg.epochs
    dense_seconds = None if dense is None else float(dense["train_seconds"]) * cfg.epochs / int(dense["epochs"])
    return {
        "epochs": sum(e for e, _ in runs),
        "density": sum(e * d for e, d in runs) / sum(e for e, _ in runs),
        "flops_proxy": flops,
        "train_seconds": train_seconds,
        "dense_train_seconds": dense_seconds,
        "train_seconds_ratio": None if not dense_seconds else train_seconds / dense_seconds,
    }


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _check_spec(out: Path, spec: dict[str, Any]) -> None:
    """A re-run must continue the same ensemble; a folder holding something else is refused."""
    path = out / SPEC
    if path.exists():
        try:
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{path} is damaged (not a YAML mapping); choose another --out")
        for key, value in spec.items():
            if saved.get(key) != value:
                raise ConfigError(f"{out} holds a different ensemble ({key} differs); choose another --out")
    elif out.exists() and any(p.name not in (LOCK, MARKER) for p in out.iterdir()):  # no content yet
        raise ConfigError(f"{out} is not empty and holds no ensemble; choose another --out")


def read_dense_reference(cfg: TrainConfig, folder: str | Path) -> dict[str, Any]:
    """The metrics of a finished dense run of ``cfg``'s data and model, for the measured time ratio."""
    path = Path(folder) / METRICS
    try:
        metrics = _load_json(path)
    except (OSError, ValueError):
        raise ConfigError(f"--dense-reference {folder} is not a finished run folder (no readable {METRICS})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("train_seconds"), (int, float)):
        raise ConfigError(f"--dense-reference {folder}: {METRICS} is not a run's metrics record")
    for name, expected in (("method", "dense"), ("data", cfg.data), ("model", cfg.model), ("epochs", cfg.epochs)):
        if metrics.get(name) != expected:
            raise ConfigError(f"--dense-reference {folder} is not a dense run of this config "
                              f"({name} {metrics.get(name)!r}, expected {expected!r})")
    return metrics


def _dense_reference(cfg: TrainConfig, out: Path, dense_reference: str | Path | None, progress: bool) -> dict | None:
    if dense_reference is None or dense_reference == "none":
        return None
    if dense_reference == "auto":
        return train(cfg.replace(method="dense"), out / DENSE_REFERENCE, resume=True, progress=progress)
    return read_dense_reference(cfg, dense_reference)


def ensemble(
    cfg: TrainConfig,
    kind: str,
    members: int,
    out: str | Path,
    *,
    explore_epochs: int | None = None,
    refine_epochs: int | None = None,
    refine_lr: float | None = None,
    jump_fraction: float = JUMP_FRACTION,
    dense_reference: str | Path | None = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a DST / EDST ensemble of ``cfg`` into ``out``, evaluate it and write ``ensemble.json``.

    Args:
        cfg: the config of one run (``cfg.epochs`` is one member's length for DST and the unit of cost).
        kind: ``"dst"`` or ``"edst"``.
        members: ``M >= 2``.
        explore_epochs, refine_epochs, refine_lr, jump_fraction: EDST phases (see :class:`EDSTPlan`).
        dense_reference: ``"auto"`` trains ``out/dense-reference`` for the measured time ratio, a path names a
            finished dense run folder, ``None`` / ``"none"`` skips the measured ratio.

    Every input is validated before anything is written. Returns the ``ensemble.json`` record.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown ensemble kind '{kind}' (choose from: {', '.join(KINDS)})")
    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise ConfigError(f"members must be an integer >= 2, got {members!r}")
    check_method(cfg.method)
    require_classification(cfg.data, "an ensemble")  # its members' probabilities are averaged
    plan = None
    if kind == "edst":
        if cfg.method == "dense":
            raise ConfigError("EDST needs a sparse method (--method static, set, rigl, dst-ee or cigl), not dense")
        if cfg.kernels != "dense":  # its large jumps move the optimizer state outside the training step
            raise ConfigError(f"EDST trains masked-dense only, not kernels={cfg.kernels!r} (DST ensembles take any)")
        if cfg.engine != "plain":  # its phase learning rates drive a torch LambdaLR over the plain optimizer
            raise ConfigError(f"EDST runs on the plain engine only, not engine '{cfg.engine}' (DST ensembles take any)")
        plan = EDSTPlan.from_config(cfg, members, explore_epochs, refine_epochs, refine_lr, jump_fraction)
    elif (explore_epochs, refine_epochs, refine_lr) != (None, None, None) or jump_fraction != JUMP_FRACTION:
        raise ConfigError("explore/refine epochs, refine lr and jump fraction apply to --kind edst only")
    if dense_reference not in (None, "auto", "none"):
        read_dense_reference(cfg, dense_reference)
    if kind == "dst" and cfg.seed + members - 1 >= 2**32:  # member i trains with seed + i
        raise ConfigError(f"seed {cfg.seed} + {members - 1} members leaves [0, 2^32): choose a smaller --seed")
    out = check_writable(out)
    check_kind(out, "ensemble")
    spec = {"kind": kind, "members": members, "config": cfg.to_dict(), "plan": plan.to_dict() if plan else None}
    _check_spec(out, spec)
    build_run(cfg, load_data(cfg))  # validates data and model before any folder exists

    with exclusive(out, "train an ensemble", kind="ensemble"):
        return _train_and_score(cfg, kind, members, plan, spec, out, dense_reference, progress)


def _train_and_score(cfg: TrainConfig, kind: str, members: int, plan: EDSTPlan | None, spec: dict[str, Any],
                     out: Path, dense_reference: str | Path | None, progress: bool) -> dict[str, Any]:
    """The members (trained or resumed), the ensemble's metrics and files, under the folder's lock."""
    write_text(out / SPEC, yaml.safe_dump(spec, sort_keys=False))
    if kind == "dst":
        records = train_dst(cfg, members, out, progress)
    else:
        records = train_edst(cfg, plan, out, progress)
    member_probs, labels, masks = load_member_probs(out, members)
    if kind == "dst" and cfg.method == "dense" and dense_reference == "auto":
        dense = records[0]  # member 0 is exactly the dense reference run
    else:
        dense = _dense_reference(cfg, out, dense_reference, progress)

    probs = ensemble_probs(member_probs)
    ensemble_metrics = summary(probs, labels, n_bins=cfg.ece_bins)
    member_rows = []
    for i, (record, mask) in enumerate(zip(records, masks)):
        row = summary(member_probs[i], labels, n_bins=cfg.ece_bins)
        row.update(
            member=i, seed=record["seed"], density=record["density"],
            mask_density=sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()),
            train_seconds=record["train_seconds"], n_test=len(labels),
        )
        member_rows.append(row)
    if kind == "dst":
        runs = [(cfg.epochs, r["mask_density"]) for r in member_rows]
        seconds = sum(r["train_seconds"] for r in records)
    else:
        runs = [(plan.total_epochs, member_rows[-1]["mask_density"])]
        seconds = records[-1]["train_seconds"]
    result = {
        "kind": kind,
        "name": ensemble_name(kind, cfg.method, members),
        "method": cfg.method,
        "data": cfg.data,
        "model": cfg.model,
        "sparsity": cfg.effective_sparsity,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "plan": plan.to_dict() if plan else None,
        "members": member_rows,
        "ensemble": {**ensemble_metrics, "n_test": len(labels)},
        "diversity": diversity(member_probs),
        "mask_overlap": mask_overlap(masks),
        "cost": training_cost(cfg, runs, seconds, dense),
        "dense_reference": None if dense is None else {k: dense[k] for k in ("accuracy", "nll", "ece", "brier", "density", "train_seconds")},
    }
    save_torch(out / PREDICTIONS, {"member_probs": member_probs, "labels": labels})
    plot_reliability(probs, labels, out / RELIABILITY, n_bins=cfg.ece_bins, title=f"{result['name']} on {cfg.data}")
    write_json(out / RESULTS, result)
    return result


def format_report(result: dict[str, Any]) -> str:
    """The printed table: ensemble, members and dense reference, then diversity, overlap and cost."""
    keys = ("accuracy", "nll", "ece", "brier", "density")
    rows = [(result["name"], {**result["ensemble"], "density": _mean(r["density"] for r in result["members"])})]
    rows += [(f"member {r['member']}", r) for r in result["members"]]
    if result["dense_reference"] is not None:
        rows.append(("dense (1 run)", result["dense_reference"]))
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |" for name, row in rows]
    d, o, c = result["diversity"], result["mask_overlap"], result["cost"]
    ratio = "n/a" if c["train_seconds_ratio"] is None else f"{c['train_seconds_ratio']:.2f}x"
    lines += [
        "",
        f"disagreement {d['disagreement']:.4f}  pairwise KL {d['pairwise_kl']:.4f}  mask overlap {o['mean']:.4f}",
        f"cost vs one dense run of {result['epochs']} epochs: FLOPs proxy {c['flops_proxy']:.3f}x "
        f"({c['epochs']} epochs at density {c['density']:.4f}), train time {ratio} ({c['train_seconds']:.1f} s)",
    ]
    return "\n".join(lines)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
