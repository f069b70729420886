"""The configuration of a deep GP baseline run: one small, frozen, validated record.

Every field is checked when the record is made (:meth:`DeepGPConfig.__post_init__`), so a bad value
fails with one line naming the field before anything is loaded or written. Defaults are the ones
measured on digits and MNIST-1D (see :mod:`bayessparse.baselines`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping

import yaml

from bayessparse import smoke
from bayessparse.config import FLOAT32_MAX, MAX_BINS, coerce
from bayessparse.data import DATASETS
from bayessparse.errors import ConfigError
from models import MODELS

#: The models: a two-layer deep GP on the raw inputs by doubly stochastic VI (Salimbeni & Deisenroth, 2017) or as
#: a DSPP (Jankowiak et al., 2020), and a GP on the features of the dataset's network, SV-DKL (Wilson et al., 2016).
METHODS = ("dgp", "dspp", "svdkl")


@dataclass(frozen=True)
class DeepGPConfig:
    """Everything that determines a deep GP run (data, model, optimisation, evaluation)."""

    method: str = "dgp"  # "dgp" (ELBO, sampled layers), "dspp" (predictive log-likelihood, sigma points) or "svdkl"
    data: str = "digits"  # a name of bayessparse.data.DATASETS; inputs are flattened
    data_seed: int = 0  # the splits, as for the neural runs
    n_samples: int | None = None  # mnist1d / synthetic: total examples generated, as the networks' n_samples
    seed: int = 0  # everything else: initialisation, k-means, batch order, Monte Carlo draws
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.03  # Adam, constant
    num_inducing: int = 100  # M inducing points per GP, initialised by k-means on the training inputs
    hidden_dims: int = 10  # H GPs in the hidden layer (svdkl: features of the network); also the latent functions
    trunk: str | None = None  # svdkl: the network giving the features (None: the dataset's default model)
    trunk_lr: float = 0.003  # svdkl: Adam's rate on the network's weights (lr: on the GP's)
    num_samples: int = 3  # dgp: samples of the layers per step (S of the doubly stochastic ELBO)
    likelihood_samples: int = 10  # draws of f per step for the softmax likelihood's expectation (both methods)
    num_quad_sites: int = 8  # dspp: Q sigma points, the mixture components of the prediction
    beta: float = 1.0  # weight of the KL term (1: the ELBO; DSPP's regulariser)
    eval_samples: int = 32  # predictive draws at evaluation (dgp: layer samples; dspp: softmax draws per site)
    eval_batch_size: int = 256
    ece_bins: int = 15

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if _HINTS[f.name] is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        if smoke.active() and isinstance(self.epochs, int):  # BAYESSPARSE_SMOKE=1: toy-size training and data
            shrunk = smoke.shrink_config({"data": self.data, "epochs": self.epochs, "n_samples": self.n_samples})
            for name in ("epochs", "n_samples"):
                object.__setattr__(self, name, shrunk.get(name))
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "DeepGPConfig":
        return DeepGPConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DeepGPConfig":
        """A config from a mapping of fields (YAML, flags): unknown fields and wrong types are one-line errors."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a deep GP config must be a mapping of field: value, got {type(values).__name__}")
        unknown = [name for name in values if name not in _HINTS]
        if unknown:
            raise ConfigError(f"unknown deep GP config field '{unknown[0]}'")
        return cls(**{name: coerce(name, value, _HINTS[name]) for name, value in values.items()})

    def yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_HINTS = typing.get_type_hints(DeepGPConfig)
#: Every field's default, e.g. for a saved config written before the field existed.
DEFAULTS = {f.name: f.default for f in fields(DeepGPConfig)}


def _check(cfg: DeepGPConfig) -> None:
    """Types, then ranges; the first bad field raises."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{name} must be {what}, got {getattr(cfg, name)!r}")

    for name, hint in _HINTS.items():
        value = getattr(cfg, name)
        if value is None and type(None) in typing.get_args(hint):
            continue
        if hint in (int, int | None):
            need(isinstance(value, int) and not isinstance(value, bool), name, "an int")
        elif hint is float:
            finite = isinstance(value, float) and math.isfinite(value) and abs(value) <= FLOAT32_MAX
            need(finite, name, "a finite number")
        else:
            need(isinstance(value, str), name, "a string")
    need(cfg.method in METHODS, "method", " or ".join(repr(m) for m in METHODS))
    need(cfg.data in DATASETS, "data", f"one of {', '.join(DATASETS)}")
    need(0 <= cfg.seed < 2**32, "seed", "in [0, 2^32)")
    need(0 <= cfg.data_seed < 2**32, "data_seed", "in [0, 2^32)")
    need(cfg.n_samples is None or cfg.n_samples > 0, "n_samples", "> 0")
    for name in ("epochs", "batch_size", "num_inducing", "hidden_dims", "num_samples", "likelihood_samples",
                 "num_quad_sites", "eval_samples", "eval_batch_size"):
        need(getattr(cfg, name) >= 1, name, ">= 1")
    need(cfg.lr > 0.0, "lr", "> 0")
    need(cfg.trunk_lr > 0.0, "trunk_lr", "> 0")
    need(cfg.trunk is None or cfg.trunk in MODELS, "trunk", f"None or one of {', '.join(MODELS)}")
    need(cfg.beta > 0.0, "beta", "> 0")
    need(1 <= cfg.ece_bins <= MAX_BINS, "ece_bins", f"in [1, {MAX_BINS}]")
