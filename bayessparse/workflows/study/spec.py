"""The study's specification: a YAML file (``experiments/study.yaml``) read into checked records.

Layout of the file (every section but ``seeds`` and ``base`` may be left out)::

    seeds: [0, 1, 2]
    base: {epochs: 60, ...}               # config fields every run shares (bayessparse.config.TrainConfig)
    mc_samples: 16                        # draws of Z for the MC-dropout row
    calibration:
      setups: {cnn1d: {data: mnist1d, model: cnn1d}, ...}   # name -> config fields
      sparsities: [0.8, 0.9, 0.95, 0.98]
      rows: [dense, set, rigl, rigl+ts, ...]               # keys of bayessparse.workflows.study.rows.ROWS
      corruptions: [cnn1d]                # setups also scored under the corruption suite
      reliability: {setup: cnn1d, sparsity: 0.95}
    drop_rate: {setups: [cnn1d], rates: [0.01, ...], sparsities: [0.9, 0.95]}
    variational: {priors: [0.95, 0.99]}   # vcigl's prior keep probabilities, on drop_rate's setups and sparsities
    freetickets: {setup: cnn1d, sparsity: 0.9, members: 3, method: rigl}
    imp: [{name: synthetic, config: {...}, widths: [0.5, 1, 2], rounds: 26, prune_fraction: 0.2}]
    deep_gp:                              # sparse Bayesian networks next to GPyTorch deep GPs
      setups: [cnn1d, digits]             # calibration setups (or name -> config fields of its own)
      sparsity: 0.9
      rows: [rigl, cigl, vcigl]           # network rows, keys of ROWS
      methods: [dgp, dspp]                # deep GP rows (bayessparse.baselines.DeepGPConfig.method)
      regression: {config: {data: diabetes, model: mlp}, rows: [rigl, cigl, vcigl]}
      gp: {epochs: 60}                    # DeepGPConfig fields of every deep GP cell (its defaults otherwise)

Every problem is a :class:`~bayessparse.errors.ConfigError` naming the field, raised before any
training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bayessparse import smoke
from bayessparse.config import TrainConfig, read_yaml, resolve
from bayessparse.errors import ConfigError
from bayessparse.workflows.study.rows import ROWS

SECTIONS = ("seeds", "base", "mc_samples", "calibration", "drop_rate", "variational", "freetickets", "imp", "deep_gp")


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
class DeepGPStudy:
    """Sparse networks and deep GPs on the same data, splits and seeds.

    ``setups`` maps a name to its config fields (over ``base``): a calibration setup's own fields when the
    spec lists its name, so the network cells are the calibration section's. ``regression`` holds the config
    fields of one regression setup (named after its data set) with its network ``regression_rows``; ``gp`` holds the
    :class:`~bayessparse.baselines.DeepGPConfig` fields every deep GP cell shares (its data, split, seed
    and ECE bins come from the setup and the study's seeds).
    """

    setups: dict[str, dict[str, Any]]
    sparsity: float
    rows: tuple[str, ...]
    methods: tuple[str, ...] = ("dgp", "dspp")
    regression: dict[str, Any] | None = None
    regression_rows: tuple[str, ...] = ()
    gp: dict[str, Any] = field(default_factory=dict)


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
    deep_gp: DeepGPStudy | None = None

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


#: the network methods that train on a regression set (bayessparse.train; Gaussian likelihood)
REGRESSION_METHODS = ("dense", "static", "set", "rigl", "dst-ee", "cigl", "vcigl", "rigl-wdp")
#: DeepGPConfig fields the study sets itself: from the setup (data, split, bins), the row and the seed
GP_FIELDS_SET_BY_STUDY = ("method", "data", "data_seed", "n_samples", "seed", "ece_bins")
#: TrainConfig fields the deep GP baselines cannot follow (DeepGPConfig loads the data set by name, split and size)
GP_UNMATCHED_DATA = {"label_noise": 0.0, "data_root": None}


def _rows(value: Any, name: str) -> tuple[str, ...]:
    rows = tuple(dict.fromkeys(str(r) for r in (value if isinstance(value, list) else [value])))
    if not rows:
        raise ConfigError(f"study field '{name}' must name at least one row")
    for row in rows:
        if row not in ROWS:
            raise ConfigError(f"study field '{name}': unknown row '{row}' (choose from: {', '.join(ROWS)})")
    return rows


def _same_data_as_gp(base: dict[str, Any], fields: dict[str, Any], name: str) -> None:
    """The deep GPs load a data set by name, split, seed and size only: a setup must not change it otherwise."""
    cfg = resolve(base, fields)
    for key, default in GP_UNMATCHED_DATA.items():
        if getattr(cfg, key) != default:
            raise ConfigError(f"study field '{name}': {key}={getattr(cfg, key)!r} changes the data, which the deep "
                              f"GP baselines cannot follow (their config has no {key}); use a setup without it")


def _deep_gp(raw: Any, base: dict[str, Any], calibration: Calibration | None) -> DeepGPStudy:
    from bayessparse.baselines.gp_config import METHODS, DeepGPConfig

    g = _mapping(raw, "deep_gp")
    _keys(g, "deep_gp", ("setups", "sparsity", "rows", "methods", "regression", "gp"))
    if not g.get("setups") and g.get("regression") is None:
        raise ConfigError("study field 'deep_gp' needs 'setups' (classification) or 'regression', or both")
    setups: dict[str, dict[str, Any]] = {}
    listed = g.get("setups") or {}
    if isinstance(listed, Mapping):  # setups of the section's own: name -> config fields over base
        for key, fields in listed.items():
            if calibration is not None and key in calibration.setups:
                raise ConfigError(f"study field 'deep_gp.setups.{key}' is a calibration setup's name: list it "
                                  "by name (deep_gp.setups: [...]) to share its runs, or rename it")
            setups[str(key)] = _mapping(fields, f"deep_gp.setups.{key}")
            resolve(base, setups[str(key)])
    else:
        if calibration is None:
            raise ConfigError("study field 'deep_gp.setups' names calibration setups: it needs the 'calibration' "
                              "section (or give the setups as a mapping of name: config fields)")
        for s in listed if isinstance(listed, list) else [listed]:
            if not isinstance(s, str):
                raise ConfigError(f"study field 'deep_gp.setups' must list setup names, got {s!r}")
            setups[s] = calibration.setups[_setup_name(s, calibration.setups, "deep_gp.setups")]
    for key, fields in setups.items():
        _same_data_as_gp(base, fields, f"deep_gp.setups.{key}")
    if setups and "rows" not in g:
        raise ConfigError("study field 'deep_gp.rows' is missing (the network rows of the classification setups)")
    rows = _rows(g["rows"], "deep_gp.rows") if setups else ()
    sparsity = g.get("sparsity", 0.9)
    if isinstance(sparsity, list):
        raise ConfigError(f"study field 'deep_gp.sparsity' must be one number, got {sparsity!r}")
    sparsity = _numbers(sparsity, "deep_gp.sparsity", float, 0.0, 1.0)[0]
    methods = g.get("methods", list(METHODS))
    methods = tuple(dict.fromkeys(str(m) for m in (methods if isinstance(methods, list) else [methods])))
    if not methods or any(m not in METHODS for m in methods):
        raise ConfigError(f"study field 'deep_gp.methods' must list deep GP methods ({', '.join(METHODS)}), "
                          f"got {g.get('methods')!r}")
    gp = _mapping(g.get("gp") or {}, "deep_gp.gp")
    for key in gp:
        if key in GP_FIELDS_SET_BY_STUDY:
            raise ConfigError(f"study field 'deep_gp.gp.{key}' is set by the study (from the setups and seeds); "
                              "remove it")
    try:
        DeepGPConfig.from_dict(gp)
    except ConfigError as exc:
        raise ConfigError(f"study field 'deep_gp.gp': {exc}") from None
    regression, regression_rows = None, ()
    if g.get("regression") is not None:
        r = _mapping(g["regression"], "deep_gp.regression")
        _keys(r, "deep_gp.regression", ("config", "rows"), ("config", "rows"))
        regression = _mapping(r["config"], "deep_gp.regression.config")
        for key in ("method", "seed", "sparsity"):
            if key in regression:
                raise ConfigError(f"study field 'deep_gp.regression.config.{key}' is set by the study (rows, seeds, "
                                  "deep_gp.sparsity); remove it")
        resolve(base, regression)
        _same_data_as_gp(base, regression, "deep_gp.regression.config")
        regression_rows = _rows(r["rows"], "deep_gp.regression.rows")
        allowed = [k for k, v in ROWS.items() if v.predict == "model" and v.method in REGRESSION_METHODS]
        for row in regression_rows:
            if row not in allowed:
                raise ConfigError(f"study field 'deep_gp.regression.rows': row '{row}' cannot be scored on a "
                                  "regression set (its Monte Carlo numbers come with the run's own row; choose "
                                  f"from: {', '.join(allowed)})")
    return DeepGPStudy(setups, sparsity, rows, methods, regression, regression_rows, gp)


def read_spec(path: str | Path) -> StudySpec:
    """Read and check a study specification (see the module docstring)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"unknown study field '{key}' (choose from: {', '.join(SECTIONS)})")
    if "seeds" not in raw:
        raise ConfigError("study field 'seeds' is missing")
    seeds = tuple(smoke.shrink_seeds(_numbers(raw["seeds"], "seeds", int, 0)))  # BAYESSPARSE_SMOKE: the first two
    base = _mapping(raw.get("base") or {}, "base")
    resolve(base)
    mc = _numbers(raw.get("mc_samples", 16), "mc_samples", int, 1)[0]
    calibration = _calibration(raw["calibration"], base) if raw.get("calibration") is not None else None
    drop = _drop_rate(raw["drop_rate"], calibration) if raw.get("drop_rate") is not None else None
    variational = _variational(raw["variational"], drop) if raw.get("variational") is not None else None
    tickets = _freetickets(raw["freetickets"], calibration) if raw.get("freetickets") is not None else None
    imp = _imp(raw["imp"], base) if raw.get("imp") is not None else ()
    deep_gp = _deep_gp(raw["deep_gp"], base, calibration) if raw.get("deep_gp") is not None else None
    return StudySpec(str(path), seeds, base, mc, calibration, drop, variational, tickets, imp, deep_gp)
