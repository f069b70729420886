"""The study's specification: a YAML file (``experiments/study.yaml``) read into checked records.

Layout of the file (every section but ``seeds`` and ``base`` may be left out)::

    seeds: [0, 1, 2]
    base: {epochs: 60, ...}               # config fields every run shares (bayessparse.config.TrainConfig)
    mc_samples: 16                        # draws of Z for the MC-dropout row
    calibration:
      setups: {cnn1d: {data: mnist1d, model: cnn1d}, ...}   # name -> config fields
      sparsities: [0.8, 0.9, 0.95, 0.98]
      rows: [dense, set, rigl, rigl+ts, ...]               # keys of bayessparse.study.rows.ROWS
      corruptions: [cnn1d]                # setups also scored under the corruption suite
      reliability: {setup: cnn1d, sparsity: 0.95}
    drop_rate: {setups: [cnn1d], rates: [0.01, ...], sparsities: [0.9, 0.95]}
    variational: {priors: [0.95, 0.99]}   # vcigl's prior keep probabilities, on drop_rate's setups and sparsities
    freetickets: {setup: cnn1d, sparsity: 0.9, members: 3, method: rigl}
    imp: [{name: synthetic, config: {...}, widths: [0.5, 1, 2], rounds: 26, prune_fraction: 0.2}]

Every problem is a :class:`~bayessparse.errors.ConfigError` naming the field, raised before any
training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bayessparse.config import TrainConfig, read_yaml, resolve
from bayessparse.errors import ConfigError
from bayessparse.study.rows import ROWS

SECTIONS = ("seeds", "base", "mc_samples", "calibration", "drop_rate", "variational", "freetickets", "imp")


@dataclass(frozen=True)
class Calibration:
    setups: dict[str, dict[str, Any]]
    sparsities: tuple[float, ...]
    rows: tuple[str, ...]
    corruptions: tuple[str, ...] = ()
    reliability: tuple[str, float] | None = None


@dataclass(frozen=True)
class DropRate:
    setups: tuple[str, ...]
    rates: tuple[float, ...]
    sparsities: tuple[float, ...]


@dataclass(frozen=True)
class Variational:
    priors: tuple[float, ...]  # vcigl's keep_prior values, swept on the drop-rate section's setups and sparsities


@dataclass(frozen=True)
class FreeTickets:
    setup: str
    sparsity: float
    members: int = 3
    method: str = "rigl"


@dataclass(frozen=True)
class IMPStudy:
    name: str
    config: dict[str, Any]
    widths: tuple[float, ...]
    rounds: int
    prune_fraction: float = 0.2


@dataclass(frozen=True)
class StudySpec:
    path: str
    seeds: tuple[int, ...]
    base: dict[str, Any]
    mc_samples: int = 16
    calibration: Calibration | None = None
    drop_rate: DropRate | None = None
    variational: Variational | None = None
    freetickets: FreeTickets | None = None
    imp: tuple[IMPStudy, ...] = field(default_factory=tuple)

    def config(self, setup: str, **fields: Any) -> TrainConfig:
        """The resolved config of ``setup`` (a calibration setup name) with ``fields`` on top."""
        return resolve(self.base, self.calibration.setups[setup] if self.calibration else {}, fields)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"study field '{name}' must be a mapping, got {value!r}")
    return dict(value)


def _numbers(value: Any, name: str, kind: type = float, low: float | None = None, high: float | None = None) -> tuple:
    items = value if isinstance(value, list) else [value]
    try:
        out = tuple(kind(v) for v in items if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ConfigError(f"study field '{name}' must be a list of {kind.__name__}s, got {value!r}") from None
    if len(out) != len(items) or not out:
        raise ConfigError(f"study field '{name}' must be a non-empty list of {kind.__name__}s, got {value!r}")
    if any((low is not None and v < low) or (high is not None and v >= high) for v in out):
        raise ConfigError(f"study field '{name}' must lie in [{low}, {high}), got {value!r}")
    return out


def _keys(section: dict[str, Any], name: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"unknown study field '{name}.{key}' (choose from: {', '.join(allowed)})")
    for key in required:
        if key not in section:
            raise ConfigError(f"study field '{name}.{key}' is missing")


def _setup_name(value: Any, setups: dict[str, Any], name: str) -> str:
    if value not in setups:
        raise ConfigError(f"study field '{name}': unknown setup {value!r} (choose from: {', '.join(setups)})")
    return value


def _calibration(raw: Any, base: dict[str, Any]) -> Calibration:
    c = _mapping(raw, "calibration")
    _keys(c, "calibration", ("setups", "sparsities", "rows", "corruptions", "reliability"), ("setups", "rows"))
    setups = {str(k): _mapping(v, f"calibration.setups.{k}") for k, v in _mapping(c["setups"], "calibration.setups").items()}
    for key, fields in setups.items():
        resolve(base, fields)  # the config must be valid on its own
    rows = tuple(str(r) for r in (c["rows"] if isinstance(c["rows"], list) else [c["rows"]]))
    for row in rows:
        if row not in ROWS:
            raise ConfigError(f"study field 'calibration.rows': unknown row '{row}' (choose from: {', '.join(ROWS)})")
    corruptions = tuple(_setup_name(s, setups, "calibration.corruptions") for s in c.get("corruptions") or [])
    reliability = None
    if c.get("reliability") is not None:
        r = _mapping(c["reliability"], "calibration.reliability")
        _keys(r, "calibration.reliability", ("setup", "sparsity"), ("setup", "sparsity"))
        reliability = (_setup_name(r["setup"], setups, "calibration.reliability.setup"),
                       _numbers(r["sparsity"], "calibration.reliability.sparsity", float, 0.0, 1.0)[0])
    sparsities = _numbers(c.get("sparsities", [0.9]), "calibration.sparsities", float, 0.0, 1.0)
    return Calibration(setups, sparsities, rows, corruptions, reliability)


def _drop_rate(raw: Any, calibration: Calibration | None) -> DropRate:
    d = _mapping(raw, "drop_rate")
    _keys(d, "drop_rate", ("setups", "rates", "sparsities"), ("setups", "rates", "sparsities"))
    if calibration is None:
        raise ConfigError("study field 'drop_rate' needs the 'calibration' section (its setups and RigL runs)")
    setups = tuple(_setup_name(s, calibration.setups, "drop_rate.setups") for s in d["setups"])
    return DropRate(setups, _numbers(d["rates"], "drop_rate.rates", float, 0.0, 1.0),
                    _numbers(d["sparsities"], "drop_rate.sparsities", float, 0.0, 1.0))


def _variational(raw: Any, drop: DropRate | None) -> Variational:
    v = _mapping(raw, "variational")
    _keys(v, "variational", ("priors",), ("priors",))
    if drop is None:
        raise ConfigError("study field 'variational' needs the 'drop_rate' section (its tuned CigL and RigL runs)")
    return Variational(_numbers(v["priors"], "variational.priors", float, 1e-9, 1.0))


def _freetickets(raw: Any, calibration: Calibration | None) -> FreeTickets:
    f = _mapping(raw, "freetickets")
    _keys(f, "freetickets", ("setup", "sparsity", "members", "method"), ("setup", "sparsity"))
    if calibration is None:
        raise ConfigError("study field 'freetickets' needs the 'calibration' section (its setups)")
    members = _numbers(f.get("members", 3), "freetickets.members", int, 2)[0]
    return FreeTickets(_setup_name(f["setup"], calibration.setups, "freetickets.setup"),
                       _numbers(f["sparsity"], "freetickets.sparsity", float, 0.0, 1.0)[0], members,
                       str(f.get("method", "rigl")))


def _imp(raw: Any, base: dict[str, Any]) -> tuple[IMPStudy, ...]:
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        m = _mapping(item, f"imp[{i}]")
        _keys(m, f"imp[{i}]", ("name", "config", "widths", "rounds", "prune_fraction"), ("name", "config", "rounds"))
        config = _mapping(m["config"], f"imp[{i}].config")
        resolve(base, config)
        widths = _numbers(m.get("widths", [1.0]), f"imp[{i}].widths", float, 1e-9)
        rounds = _numbers(m["rounds"], f"imp[{i}].rounds", int, 1)[0]
        fraction = _numbers(m.get("prune_fraction", 0.2), f"imp[{i}].prune_fraction", float, 1e-9, 1.0)[0]
        out.append(IMPStudy(str(m["name"]), config, widths, rounds, fraction))
    return tuple(out)


def read_spec(path: str | Path) -> StudySpec:
    """Read and check a study specification (see the module docstring)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"unknown study field '{key}' (choose from: {', '.join(SECTIONS)})")
    if "seeds" not in raw:
        raise ConfigError("study field 'seeds' is missing")
    seeds = _numbers(raw["seeds"], "seeds", int, 0)
    base = _mapping(raw.get("base") or {}, "base")
    resolve(base)
    mc = _numbers(raw.get("mc_samples", 16), "mc_samples", int, 1)[0]
    calibration = _calibration(raw["calibration"], base) if raw.get("calibration") is not None else None
    drop = _drop_rate(raw["drop_rate"], calibration) if raw.get("drop_rate") is not None else None
    variational = _variational(raw["variational"], drop) if raw.get("variational") is not None else None
    tickets = _freetickets(raw["freetickets"], calibration) if raw.get("freetickets") is not None else None
    imp = _imp(raw["imp"], base) if raw.get("imp") is not None else ()
    return StudySpec(str(path), seeds, base, mc, calibration, drop, variational, tickets, imp)
