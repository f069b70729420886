"""Iterative magnitude pruning (IMP) with rewinding, and the sparse-double-descent sweep.

The lottery-ticket procedure (Frankle & Carbin, ICLR 2019), with late rewinding (Frankle, Dziugaite, Roy &
Carbin, ICML 2020), as used for the sparse double descent (Arora, Irto, Goldt & Sanguinetti, UAI 2023):

* **round 0** trains the dense network from its initialisation ``θ0`` and keeps ``θ_rewind``: the weights at
  initialisation (``rewind_epoch = 0``) or after ``rewind_epoch`` epochs of this dense training;
* **round r = 1..R** prunes ``prune_fraction`` (0.2) of the *surviving* prunable weights of the round-(r-1)
  network, globally by ``|W|`` (one threshold across all prunable layers), rewinds every parameter and buffer
  to ``θ_rewind`` (biases and BatchNorm included; pruned weights zeroed), and retrains from scratch with the
  mask fixed: a fresh optimizer, the learning-rate schedule restarted, the full ``epochs`` again, and the
  same mini-batch order as every other round (each round is a fresh run seeded by ``cfg.seed``). Retraining
  is static sparse training (:class:`~bayessparse.sparsity.training.SparseTraining` with ``grow=None``,
  method ``static``) with IMP's masks loaded into its :class:`~bayessparse.sparsity.masks.MaskSet`; gradient
  masking keeps the pruned weights exactly 0.

The output layer (the weight of the model's last :class:`~torch.nn.Linear`, for every model) is kept dense
unless ``prune_output``: the setting ALGORITHMS.md gives for small MLPs. The head holds few weights (768 of
66,816 in the default MLP on 3 classes) and cutting them at the global threshold can disconnect whole
classes. Every density below is over the *pruned* weights (prunable weights minus the excluded output
layer); the ``nonzero`` count covers every prunable weight, output layer included, and ``nonzero_pruned``
only the pruned layers (both counted from the weights).

Counting (exact, by mask): with ``N`` prunable (non-excluded) weights the number of survivors after round
``r`` is ``round((1 - p)^r N)`` (halves up), so the density after ``R`` rounds is ``0.8^R`` to the nearest
weight. Each round removes ``survivors - round((1 - p)^r N)`` weights, which is ``round(p * survivors)`` or
one off it: removing exactly ``round(p * survivors)`` every round (what :func:`global_magnitude_prune`
does when given only ``fraction``) lets the rounding errors add up (to at most ±2.5 weights).
Ties in ``|W|`` are broken by position: earlier in module order / row-major order is pruned first.

Metrics per round (test set, clean labels): test error, NLL, ECE, Brier, the error on the (noisy) training
labels, the mean top-label confidence and, on ``synthetic`` data whose exact posterior is known,
``kl_clean = mean_x KL(p(y|x) ‖ p̂(y|x))`` against the clean Bayes posterior (the claim of Arora et al.:
the best pruned network estimates ``p(y|x)`` better than the dense one) and ``kl_noisy`` against the
conditional of the noisy training label, ``(1 - ε) p(y|x) + ε/K``, the distribution a maximum-likelihood fit
to the noisy labels converges to with unlimited data. With ``label_noise = 0`` both are equal.

Output folder::

    OUT/config.yaml         the training config and an ``imp:`` mapping of the IMP settings (a valid --config)
    OUT/imp.json            one record per finished round (R + 1 with the dense round 0), rewritten atomically
    OUT/imp_state.pt        θ_rewind, the next round's masks, the last trained network, the records
    OUT/double_descent.png  test error and NLL / ECE / KL against the number of nonzero weights (redrawn
                            after the last round, and during a long sweep every ``PLOT_INTERVAL_S`` seconds)

An interrupted sweep resumes after its last finished round (``resume=True``); the result is the same as an
uninterrupted sweep, and a resumed sweep may ask for more rounds than it was started with.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayessparse import data as datasets
from bayessparse.config import TrainConfig, coerce
from bayessparse.data.noise import noisy_label_posterior
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse import smoke
from bayessparse.files import load_torch, save_torch, write_json, write_text
from bayessparse.version import TRAINING_VERSION
from bayessparse.folders import check_kind, check_writable, exclusive
from bayessparse.plots.double_descent import best_round, plot_double_descent
from bayessparse.predict import predict_logits
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.training import SparseTraining
from bayessparse.uncertainty.metrics import summary

__all__ = [
    "IMPSettings",
    "resolve_settings",
    "output_layer",
    "excluded_layers",
    "dense_masks",
    "round_half_up",
    "survivors_after",
    "global_magnitude_prune",
    "snapshot",
    "start_round",
    "kl_to_truth",
    "evaluate_round",
    "best_round",
    "format_table",
    "imp",
]

CONFIG = "config.yaml"
RESULTS = "imp.json"
STATE = "imp_state.pt"
PLOT = "double_descent.png"
PLOT_INTERVAL_S = 30.0  # during a sweep the plot is redrawn at most this often (and always after the last round)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class IMPSettings:
    """The IMP-specific knobs (everything else is the :class:`~bayessparse.config.TrainConfig` of each round).

    Attributes:
        rounds: pruning rounds ``R`` after the dense round 0 (``>= 1``); density ``(1 - p)^R``.
        prune_fraction: fraction ``p`` of the surviving weights pruned per round, in ``(0, 1)``.
        rewind_epoch: rewind point: 0 = initialisation, ``k`` = after ``k`` epochs of the dense round.
        prune_output: also prune the output layer (default: it stays dense).
    """

    rounds: int = 10
    prune_fraction: float = 0.2
    rewind_epoch: int = 0
    prune_output: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SETTING_TYPES = typing.get_type_hints(IMPSettings)


def resolve_settings(*layers: Mapping[str, Any] | None, epochs: int | None = None) -> IMPSettings:
    """Merge layers of IMP settings over the defaults (later layers win) and validate them.

    ``epochs`` (the training epochs per round), when given, bounds ``rewind_epoch``. Under
    ``BAYESSPARSE_SMOKE=1`` (:mod:`bayessparse.smoke`) a sweep has at most 2 rounds.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError(f"imp settings must be a mapping of {', '.join(_SETTING_TYPES)}, got {layer!r}")
        for name, value in layer.items():
            if name not in _SETTING_TYPES:
                raise ConfigError(f"unknown imp setting '{name}' (choose from: {', '.join(_SETTING_TYPES)})")
            if value is not None:
                merged[name] = coerce(name, value, _SETTING_TYPES[name], what="imp setting")
    s = IMPSettings(**merged)
    if smoke.active():  # BAYESSPARSE_SMOKE=1: a toy-size sweep
        s = dataclasses.replace(s, rounds=smoke.shrink_count(s.rounds))
    if s.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {s.rounds}")
    if not 0.0 < s.prune_fraction < 1.0:
        raise ConfigError(f"prune_fraction must be in (0, 1), got {s.prune_fraction}")
    if s.rewind_epoch < 0 or (epochs is not None and s.rewind_epoch >= epochs):
        bound = f"[0, epochs = {epochs})" if epochs is not None else ">= 0"
        raise ConfigError(f"rewind_epoch must be in {bound}, got {s.rewind_epoch}")
    return s


# ---------------------------------------------------------------------------------------------- pruning
def output_layer(model: nn.Module) -> str | None:
    """Name of the output layer's weight: the ``weight`` of the last :class:`~torch.nn.Linear` in module order."""
    last = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and isinstance(getattr(module, "weight", None), nn.Parameter):
            last = f"{mod_name}.weight" if mod_name else "weight"
    return last


def excluded_layers(model: nn.Module, prune_output: bool) -> set[str]:
    """Prunable weights IMP leaves dense: the output layer unless ``prune_output``."""
    head = output_layer(model)
    return set() if prune_output or head is None else {head}


def dense_masks(model: nn.Module) -> dict[str, Tensor]:
    """All-true masks (CPU, bool) over the prunable weights: the dense round 0."""
    return {n: torch.ones(w.shape, dtype=torch.bool) for n, w in prunable_weights(model).items()}


def round_half_up(x: float) -> int:
    """``round(x)`` with halves rounded up (Python's ``round`` rounds halves to even)."""
    return math.floor(x + 0.5)


def survivors_after(total: int, fraction: float, rounds: int) -> int:
    """Surviving weights after ``rounds`` rounds that each prune ``fraction`` of the survivors: ``round((1-p)^r N)``."""
    return round_half_up((1.0 - fraction) ** rounds * total)


@torch.no_grad()
def global_magnitude_prune(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    fraction: float = 0.2,
    *,
    count: int | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Prune the smallest-magnitude surviving weights, globally across layers; return the new masks.

    Args:
        weights: ``name -> weight`` (e.g. :func:`~bayessparse.sparsity.density.prunable_weights`).
        masks: ``name -> 0/1 or bool mask`` of the same shapes; only entries with a true mask survive.
        fraction: prune ``round(fraction * survivors)`` weights (halves up), ``survivors`` counted over the
            layers not excluded. Ignored when ``count`` is given.
        count: prune exactly this many weights instead.
        exclude: layer names that are neither counted nor pruned (their masks are returned unchanged).

    The surviving entries of the non-excluded layers are concatenated in the order of ``weights``
    (row-major within a layer) and the ``k`` with the smallest ``|w|`` are pruned; equal magnitudes are
    broken by that position, earlier first (a stable sort). Already pruned entries stay pruned.
    Returns bool masks on the CPU.
    """
    exclude = set(exclude)
    unknown = exclude - set(weights)
    if unknown or set(masks) != set(weights):
        raise ValueError(f"masks must name exactly the weights and exclude only known layers; got {sorted(unknown)}")
    names = [n for n in weights if n not in exclude]
    out = {n: (masks[n] != 0).detach().to("cpu", torch.bool).clone() for n in weights}
    for n in weights:
        if out[n].shape != weights[n].shape:
            raise ValueError(f"mask {n!r} has shape {tuple(out[n].shape)}, weight has {tuple(weights[n].shape)}")
    if not names:
        return out
    flat_mask = torch.cat([out[n].flatten() for n in names])
    survivors = int(flat_mask.sum())
    k = round_half_up(fraction * survivors) if count is None else int(count)
    if not 0 <= k <= survivors:
        raise ValueError(f"cannot prune {k} of {survivors} surviving weights")
    if k == 0:
        return out
    magnitude = torch.cat([weights[n].detach().abs().flatten().to("cpu", torch.float64) for n in names])
    alive = flat_mask.nonzero().squeeze(1)
    order = torch.sort(magnitude[alive], stable=True).indices
    flat_mask[alive[order[:k]]] = False
    start = 0
    for n in names:
        numel = out[n].numel()
        out[n] = flat_mask[start : start + numel].view(out[n].shape).clone()
        start += numel
    return out


# ---------------------------------------------------------------------------------------------- rounds
def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of every parameter and buffer of ``model`` (a state dict that later training cannot touch)."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _round_config(cfg: TrainConfig) -> TrainConfig:
    """Each round is static sparse training; its initial MaskSet is dense and replaced by IMP's masks."""
    return cfg.replace(method="static", sparsity=0.0)


def start_round(
    cfg: TrainConfig,
    data: datasets.DataBundle,
    masks: Mapping[str, Tensor] | None = None,
    rewind: Mapping[str, Tensor] | None = None,
):
    """A fresh run for one IMP round: new optimizer and schedule, weights rewound, ``masks`` loaded.

    ``rewind`` (a state dict) replaces every parameter and buffer; ``None`` keeps the run's initialisation
    (round 0). Loading the masks zeroes the pruned weights (:meth:`MaskSet.load_state_dict`); ``None`` keeps
    the dense masks of round 0.
    """
    from bayessparse.train import build_run  # train imports the method registry, which imports sparsity

    run = build_run(_round_config(cfg), data)
    if rewind is not None:
        run.model.load_state_dict(rewind)
    if not isinstance(run.method, SparseTraining):  # pragma: no cover - the registry maps "static" to it
        raise TypeError(f"method 'static' must be SparseTraining, got {type(run.method).__name__}")
    if masks is not None:
        run.method.masks.load_state_dict({"masks": dict(masks)})
    return run


def _train(run, rewind_epoch: int | None) -> tuple[nn.Module, dict[str, Tensor] | None]:
    """Train ``run`` to its end; with ``rewind_epoch`` also return the weights after that many epochs.

    :func:`~bayessparse.train.fit` trains from ``run.epoch`` up to ``run.cfg.epochs``; stopping at the rewind
    point is a pass with ``epochs = rewind_epoch`` (the schedule, built with the run, keeps the full length).
    """
    from bayessparse.train import fit

    rewind = None
    if rewind_epoch is not None:
        if rewind_epoch == 0:
            rewind = snapshot(run.model)
        else:
            full = run.cfg
            run.cfg = dataclasses.replace(full, epochs=rewind_epoch)
            try:
                fit(run, None, progress=False)
            finally:
                run.cfg = full
            rewind = snapshot(run.model)
    return fit(run, None, progress=False), rewind


def kl_to_truth(true_probs: Tensor, logits: Tensor) -> float:
    """``mean_n KL(p_n ‖ q_n) = mean_n Σ_k p_nk (log p_nk - log q_nk)`` with ``q = softmax(logits)``.

    Computed in float64 from the logits (``log_softmax``), so a tiny model probability gives a large
    finite value rather than ``inf``; terms with ``p_nk = 0`` contribute 0.
    """
    if true_probs.shape != logits.shape:
        raise ValueError(f"true_probs {tuple(true_probs.shape)} and logits {tuple(logits.shape)} differ in shape")
    p = true_probs.detach().to("cpu", torch.float64)
    log_q = torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=-1)
    return (torch.special.xlogy(p, p) - p * log_q).sum(-1).mean().item()


def _count(masks: Mapping[str, Tensor], names: Iterable[str]) -> int:
    return sum(int(masks[n].sum()) for n in names)


def evaluate_round(
    run, model: nn.Module, masks: Mapping[str, Tensor], exclude: set[str], round_: int
) -> dict[str, Any]:
    """The record of one finished round (see the module docstring for the fields)."""
    cfg, data = run.cfg, run.data
    weights = prunable_weights(model)
    pruned_names = [n for n in weights if n not in exclude]
    logits, labels = predict_logits(model, data.test, cfg.eval_batch_size, run.device)
    probs = logits.softmax(-1)
    test = summary(probs, labels, n_bins=cfg.ece_bins)
    train_set = data.train_eval if data.train_eval is not None else data.train
    train_logits, train_labels = predict_logits(model, train_set, cfg.eval_batch_size, run.device)
    val_logits, val_labels = predict_logits(model, data.val, cfg.eval_batch_size, run.device)
    record: dict[str, Any] = {
        "round": round_,
        "density": _count(masks, pruned_names) / sum(weights[n].numel() for n in pruned_names),
        "nonzero": sum(int(torch.count_nonzero(w)) for w in weights.values()),
        "nonzero_pruned": sum(int(torch.count_nonzero(weights[n])) for n in pruned_names),
        "prunable": sum(w.numel() for w in weights.values()),
        "test_error": 1.0 - test["accuracy"],
        "accuracy": test["accuracy"],
        "nll": test["nll"],
        "ece": test["ece"],
        "brier": test["brier"],
        "mean_confidence": probs.max(-1).values.double().mean().item(),
        "train_error": (train_logits.argmax(-1) != train_labels).double().mean().item(),
        "val_error": (val_logits.argmax(-1) != val_labels).double().mean().item(),
    }
    if data.true_probs is not None:
        truth = data.true_probs["test"]
        record["kl_clean"] = kl_to_truth(truth, logits)
        record["kl_noisy"] = kl_to_truth(noisy_label_posterior(truth, cfg.label_noise), logits)
        record["bayes_test_error"] = (truth.argmax(-1) != labels).double().mean().item()
        record["bayes_confidence"] = truth.max(-1).values.mean().item()
    record["epochs"] = cfg.epochs
    record["train_seconds"] = run.train_seconds
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    """A Markdown table of the rounds; the best round (lowest test error) is starred."""
    has_kl = all("kl_clean" in r for r in records)
    cols = ["round", "density", "nonzero", "train err", "test err", "nll", "ece", "mean conf"]
    cols += ["kl clean", "kl noisy"] if has_kl else []
    best = best_round(records)["round"] if records else None
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in records:
        cells = [
            f"{r['round']}{'*' if r['round'] == best else ''}", f"{r['density']:.4f}", str(r["nonzero"]),
            f"{r['train_error']:.4f}", f"{r['test_error']:.4f}", f"{r['nll']:.4f}", f"{r['ece']:.4f}",
            f"{r['mean_confidence']:.4f}",
        ]
        if has_kl:
            cells += [f"{r['kl_clean']:.4f}", f"{r['kl_noisy']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _round_line(r: dict[str, Any]) -> str:
    line = (
        f"round {r['round']:2d}  density {r['density']:.4f}  nonzero {r['nonzero']:7d}  "
        f"test error {r['test_error']:.4f}  ece {r['ece']:.4f}  nll {r['nll']:.4f}"
    )
    return line + (f"  kl {r['kl_clean']:.4f}" if "kl_clean" in r else "")


# ---------------------------------------------------------------------------------------------- the sweep
def _config_text(cfg: TrainConfig, settings: IMPSettings) -> str:
    import yaml

    return yaml.safe_dump({**cfg.to_dict(), "imp": settings.to_dict()}, sort_keys=False)


#: The entries of ``imp_state.pt`` and their types.
_STATE_TYPES = {"version": int, "config": dict, "settings": dict, "masks": dict, "model": dict, "records": list}


def _read_state(path: Path) -> dict[str, Any]:
    """``imp_state.pt``, loaded safely and checked for its entries (a foreign file is a one-line error)."""
    state = load_torch(path)
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in _STATE_TYPES.items()) \
            or not (state.get("rewind") is None or isinstance(state["rewind"], dict)):
        raise ConfigError(f"{path} is not an IMP sweep state")
    return state


def _check_fits(state: dict[str, Any], model: nn.Module, path: Path) -> None:
    """The saved masks and rewind point must be those of this model (same layers, same shapes)."""
    weights = prunable_weights(model)
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    if {n: tuple(getattr(m, "shape", ())) for n, m in state["masks"].items()} != shapes:
        raise ConfigError(f"{path} does not fit model {state['config'].get('model')!r}: its masks differ")
    if state["rewind"] is not None:
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        if {n: tuple(getattr(t, "shape", ())) for n, t in state["rewind"].items()} != expected:
            raise ConfigError(f"{path} does not fit the model: its rewind point differs")


def _check_resume(state: dict[str, Any], cfg: TrainConfig, settings: IMPSettings, out: Path) -> None:
    """A resumed sweep continues with the same config and settings (only ``rounds`` may change)."""
    for name, value in cfg.to_dict().items():
        if state["config"].get(name) != value:
            raise ConfigError(f"{name}={value!r} differs from the IMP sweep in {out} ({state['config'].get(name)!r})")
    for name, value in settings.to_dict().items():
        if name != "rounds" and state["settings"].get(name) != value:
            raise ConfigError(f"{name}={value!r} differs from the IMP sweep in {out} ({state['settings'].get(name)!r})")


def imp(
    cfg: TrainConfig,
    out: str | Path,
    settings: IMPSettings,
    *,
    resume: bool = False,
    progress: bool = True,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the IMP sweep of ``settings.rounds`` rounds into ``out``; return the round records.

    Every input is checked before ``out`` is created: the config, the settings (``rewind_epoch < epochs``,
    at least one surviving weight after the last round), and that ``out`` holds no sweep unless ``resume``.
    ``progress`` shows a bar over the rounds; ``echo`` prints one line per finished round. After every
    round the state and ``imp.json`` are rewritten (the plot: see ``PLOT_INTERVAL_S``), so an interrupted
    sweep keeps its finished rounds.
    """
    from bayessparse.train import load_data

    datasets.require_classification(cfg.data, "IMP")  # its sweep reads test error and accuracy
    out = check_writable(out)
    check_kind(out, "imp")
    if cfg.kernels != "dense":  # each round rebuilds its masks outside any method
        raise ConfigError(f"IMP trains masked-dense only, not kernels={cfg.kernels!r}")
    if cfg.engine != "plain":  # rewinding restores a torch optimizer and schedule per round
        raise ConfigError(f"IMP runs on the plain engine only, not engine '{cfg.engine}'")
    settings = resolve_settings(settings.to_dict(), epochs=cfg.epochs)
    state_path = out / STATE
    if not resume and (state_path.exists() or (out / RESULTS).exists()):
        raise ConfigError(f"{out} already holds an IMP sweep: pass --resume to continue it, or choose another --out")
    if resume and not state_path.exists() and (out / RESULTS).exists():
        raise ConfigError(f"{out} has {RESULTS} but no {STATE}: it cannot be resumed")
    state = _read_state(state_path) if resume and state_path.exists() else None
    if state is not None:
        _check_resume(state, cfg, settings, out)

    data = load_data(cfg)
    run = start_round(cfg, data)  # round 0's run; building it also validates the model against the data
    exclude = excluded_layers(run.model, settings.prune_output)
    weights = prunable_weights(run.model)
    pruned_names = [n for n in weights if n not in exclude]
    if not pruned_names:
        raise ConfigError(f"model {cfg.model!r} has no prunable weight outside its output layer (use --prune-output)")
    total = sum(weights[n].numel() for n in pruned_names)
    if state is not None:
        _check_fits(state, run.model, state_path)
    if survivors_after(total, settings.prune_fraction, settings.rounds) < 1:
        raise ConfigError(
            f"rounds={settings.rounds} at prune_fraction={settings.prune_fraction} would prune all {total} weights"
        )

    with exclusive(out, "run an IMP sweep", kind="imp"):  # one writer; it creates the folder
        write_text(out / CONFIG, _config_text(cfg, settings))
        if state is None:
            records: list[dict[str, Any]] = []
            rewind: dict[str, Tensor] | None = None
            masks = dense_masks(run.model)
        else:
            records, rewind, masks = list(state["records"]), state["rewind"], state["masks"]
            write_json(out / RESULTS, records)  # the state is written first: imp.json may lack its last round
        title = f"IMP on {cfg.data} ({cfg.model}, label noise {cfg.label_noise:g})"

        plotted = time.perf_counter()
        bar = tqdm(total=settings.rounds + 1, initial=min(len(records), settings.rounds + 1), desc="imp",
                   disable=not progress)
        for r in range(len(records), settings.rounds + 1):
            if r > 0:
                run = start_round(cfg, data, masks, rewind)
            try:
                model, captured = _train(run, settings.rewind_epoch if r == 0 else None)
            except TrainingDiverged as exc:
                kept = f"rounds 0-{r - 1} are kept in {out} (resume with --resume)" if r else "no round was finished"
                raise TrainingDiverged(f"IMP round {r}: {str(exc).split('; ')[0]}; {kept}") from None
            if r == 0:
                rewind = captured
            record = {**evaluate_round(run, model, masks, exclude, r), "training_version": TRAINING_VERSION}
            records.append(record)
            # The next round's masks are pruned now, so that the sweep can be resumed (or extended) from here.
            survivors, target = _count(masks, pruned_names), survivors_after(total, settings.prune_fraction, r + 1)
            next_masks = global_magnitude_prune(prunable_weights(model), masks, count=survivors - target,
                                                exclude=exclude)
            save_torch(state_path, {
                "version": 1,
                "config": cfg.to_dict(),
                "settings": settings.to_dict(),
                "rewind": rewind,
                "masks": next_masks,
                "model": snapshot(model),
                "records": records,
            })
            masks = next_masks
            write_json(out / RESULTS, records)
            if r == settings.rounds or time.perf_counter() - plotted >= PLOT_INTERVAL_S:
                plot_double_descent(records, out / PLOT, title=title)
                plotted = time.perf_counter()
            bar.update(1)
            bar.set_postfix(density=f"{record['density']:.3f}", test_error=f"{record['test_error']:.3f}")
            if echo:
                tqdm.write(_round_line(record))
        bar.close()
        if records and not (out / PLOT).exists():
            plot_double_descent(records, out / PLOT, title=title)
        return records

