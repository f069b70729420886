"""Run configuration: one flat, typed record resolved from defaults, a YAML file and flags.

Precedence is defaults < YAML file < command-line flags. Every field is validated here, before
anything is written to disk, so a bad value fails with one line that names the field.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from bayessparse import smoke
from bayessparse.errors import ConfigError


#: The most ECE bins: beyond it a bin holds a handful of examples at best, while the per-bin sums and
#: plots grow with the count (100000 bins took minutes).
MAX_BINS = 1000


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and nothing that does not)."""

    # data
    data: str = "mnist1d"
    data_root: str | None = None  # CIFAR only: folder holding the torchvision files
    data_seed: int = 0  # fixes the dataset and its splits; the run seed does not move them
    n_samples: int | None = None  # mnist1d / synthetic: total examples generated
    label_noise: float = 0.0  # fraction of training labels replaced by a uniform class
    # model and method
    model: str = "cnn1d"  # resolve(): the dataset's natural model (DEFAULT_MODELS) when none is given
    width: float = 1.0  # channel / hidden-unit multiplier of the architecture (1: the standard model)
    method: str = "dense"
    sparsity: float = 0.9  # target fraction of zero prunable weights (ignored by dense)
    layer_density: str = "erk"  # "erk" or "uniform"
    dense_first: bool = False  # uniform only: keep the first prunable layer dense
    update_interval: int = 100  # ΔT, steps between mask updates
    update_alpha: float = 0.3  # α, initial fraction of active weights moved per update
    update_end: float = 0.75  # T_end / T, mask updates stop after this fraction of steps
    explore_c: float = 1.0  # DST-EE exploration weight c
    drop_rate: float = 0.02  # CigL: probability that an active weight is dropped by Z (the sweep of docs/results.md)
    averaging_start: float = 0.8  # CigL, vcigl: T* / T, weight averaging starts after this fraction
    guide: str = "map"  # vcigl: q(W | Z) on the kept weights, "map" (point mass) or "gaussian" (learned σ)
    keep_prior: float = 0.98  # vcigl: p₀ of the prior Z ~ Bernoulli(p₀) (the sweep of docs/results.md)
    keep_init: float | None = None  # vcigl: initial learned keep probability (None: keep_prior)
    keep_shape: str = "layer"  # vcigl: one keep probability per "layer" or per output "unit"
    keep_temperature: float = 0.1  # vcigl: temperature of the relaxed Bernoulli q(Z)
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv / linear weights only, never on biases or norms
    lr_schedule: str = "cosine"  # "cosine", "step" or "constant"
    warmup_epochs: int = 0
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of training
    step_gamma: float = 0.1
    # bookkeeping
    seed: int = 0
    engine: str = "plain"  # "plain" or "pyro"; methods that need Pyro (vcigl) default to "pyro"
    kernels: str = "dense"  # sparse linear layers: "dense" (masked-dense), "sparse" or "auto" (docs/performance.md)
    fused_mask: bool = False  # CigL on CUDA: Z drawn inside a fused kernel, never stored (CPU: the eager path)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    eval_batch_size: int = 1024
    ece_bins: int = 15

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        return resolve(self.to_dict(), changes)

    @property
    def effective_sparsity(self) -> float:
        """The sparsity a run actually targets: 0 for dense training."""
        return 0.0 if self.method == "dense" else self.sparsity


_HINTS = typing.get_type_hints(TrainConfig)
#: The config's real-valued fields, and the largest value a float32 tensor holds (the training runs in float32).
FLOAT_FIELDS = tuple(name for name, hint in _HINTS.items() if hint in (float, float | None))
FLOAT32_MAX = 3.4028234663852886e38
#: Methods trained only as SVI (their latent Z is drawn by Pyro): the engine defaults to "pyro" for them.
PYRO_METHODS = ("vcigl",)
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
#: Every field's default, e.g. for a saved config written before the field existed.
DEFAULTS = TrainConfig().to_dict()
#: The model a dataset trains when none is named: its natural architecture (signals: the 1-D CNN, images:
#: the 2-D CNN at 8x8 and the ResNet-18 at 32x32, tabular data: the MLP). Kept here, beside the config it
#: completes, so that resolving a config never imports the data loaders.
DEFAULT_MODELS = {
    "mnist1d": "cnn1d",
    "digits": "cnn2d",
    "breast_cancer": "mlp",
    "wine": "mlp",
    "diabetes": "mlp",
    "synthetic": "mlp",
    "cifar10": "resnet18",
    "cifar100": "resnet18",
    **{name: "mlp" for name in ("uci-concrete", "uci-energy", "uci-wine", "uci-yacht")},
}
#: How sparse linear layers are computed (:mod:`bayessparse.kernels`).
KERNELS = ("dense", "sparse", "auto")


def default_model(data: str) -> str:
    """The model dataset ``data`` trains when the config names none (:data:`DEFAULT_MODELS`; an unknown
    dataset keeps the field's default and is refused where datasets are checked)."""
    return DEFAULT_MODELS.get(data, TrainConfig.model)


def coerce(name: str, value: Any, hint: Any, what: str = "config field") -> Any:
    """Convert a YAML / flag value to the type ``hint`` (``int``, ``float``, ``bool``, ``str``,
    ``tuple[float, ...]``, or ``X | None``), or fail with a one-line error naming ``what`` and ``name``."""
    optional = type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{what} '{name}' must not be empty")
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    try:
        if typing.get_origin(base) is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(float(v) for v in items)
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError(value)
        if base in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} '{name}' must be {getattr(base, '__name__', base)}, got {value!r}") from None


def _check(cfg: TrainConfig) -> None:
    """Range checks that need no registry (those are checked where the registries live)."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{name} must be {what}, got {getattr(cfg, name)!r}")

    for name in FLOAT_FIELDS:  # inf, NaN and values float32 cannot hold pass every range check below
        value = getattr(cfg, name)
        need(value is None or (math.isfinite(value) and abs(value) <= FLOAT32_MAX), name, "a finite number")
    need(0 <= cfg.seed < 2**32, "seed", "in [0, 2^32)")
    need(0 <= cfg.data_seed < 2**32, "data_seed", "in [0, 2^32)")
    need(0.0 < cfg.step_gamma <= 1.0, "step_gamma", "in (0, 1]")
    need(0.0 <= cfg.sparsity < 1.0, "sparsity", "in [0, 1)")
    need(0.0 < cfg.width < float("inf"), "width", "a finite number > 0")
    need(0.0 <= cfg.label_noise < 1.0, "label_noise", "in [0, 1)")
    need(0.0 <= cfg.drop_rate < 1.0, "drop_rate", "in [0, 1)")
    need(0.0 < cfg.averaging_start <= 1.0, "averaging_start", "in (0, 1]")
    need(0.0 < cfg.update_end <= 1.0, "update_end", "in (0, 1]")
    need(0.0 < cfg.update_alpha <= 1.0, "update_alpha", "in (0, 1]")
    need(cfg.update_interval >= 1, "update_interval", ">= 1")
    need(cfg.explore_c >= 0.0, "explore_c", ">= 0")
    need(cfg.epochs >= 1, "epochs", ">= 1")
    need(cfg.batch_size >= 1, "batch_size", ">= 1")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", ">= 1")
    need(1 <= cfg.ece_bins <= MAX_BINS, "ece_bins", f"in [1, {MAX_BINS}]")
    need(cfg.lr > 0.0, "lr", "> 0")
    need(0.0 <= cfg.momentum < 1.0, "momentum", "in [0, 1)")
    need(cfg.weight_decay >= 0.0, "weight_decay", ">= 0")
    need(0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs", "in [0, epochs)")
    need(cfg.n_samples is None or cfg.n_samples > 0, "n_samples", "> 0")
    need(cfg.layer_density in ("erk", "uniform"), "layer_density", "'erk' or 'uniform'")
    need(cfg.lr_schedule in ("cosine", "step", "constant"), "lr_schedule", "'cosine', 'step' or 'constant'")
    need(cfg.engine in ("plain", "pyro"), "engine", "'plain' or 'pyro'")
    need(cfg.kernels in KERNELS, "kernels", " or ".join(repr(k) for k in KERNELS))
    need(cfg.kernels == "dense" or cfg.engine == "plain", "kernels", "'dense' with engine 'pyro'")
    need(cfg.method not in PYRO_METHODS or cfg.engine == "pyro", "engine", f"'pyro' for method {cfg.method}")
    need(cfg.guide in ("map", "gaussian"), "guide", "'map' or 'gaussian'")
    need(0.0 < cfg.keep_prior < 1.0, "keep_prior", "in (0, 1)")
    need(cfg.keep_init is None or 0.0 < cfg.keep_init < 1.0, "keep_init", "empty or in (0, 1)")
    need(cfg.keep_shape in ("layer", "unit"), "keep_shape", "'layer' or 'unit'")
    need(cfg.keep_temperature > 0.0, "keep_temperature", "> 0")
    need(cfg.device in ("auto", "cpu", "cuda"), "device", "'auto', 'cpu' or 'cuda'")
    need(all(0.0 < m < 1.0 for m in cfg.step_milestones), "step_milestones", "fractions in (0, 1)")


def resolve(*layers: Mapping[str, Any] | None) -> TrainConfig:
    """Merge layers of settings over the defaults (later layers win) and validate the result.

    Every layer is a mapping of field names to values, or ``None`` (nothing to merge); anything else is
    a ConfigError, as are an unknown field and a value of the wrong type. A config that names no
    ``model`` gets its dataset's (:func:`default_model`); under ``BAYESSPARSE_SMOKE=1`` the run is
    shrunk to toy size (:mod:`bayessparse.smoke`).
    """
    merged: dict[str, Any] = {}
    for i, layer in enumerate(layers, 1):
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError(f"config layer {i} must be a mapping of field: value, got {type(layer).__name__}")
        for name, value in layer.items():
            if name not in FIELD_NAMES:
                raise ConfigError(f"unknown config field '{name}'")
            merged[name] = coerce(name, value, _HINTS[name])
    if "engine" not in merged and merged.get("method") in PYRO_METHODS:
        merged["engine"] = "pyro"
    if "model" not in merged:
        merged["model"] = default_model(merged.get("data", TrainConfig.data))
    cfg = TrainConfig(**smoke.shrink_config(merged))
    _check(cfg)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config fields (a missing or malformed file is a ConfigError)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = ["TrainConfig", "DEFAULT_MODELS", "FIELD_NAMES", "default_model", "PYRO_METHODS", "coerce", "resolve", "read_yaml", "dump_yaml"]
