"""Compact export of a finished run: its evaluated network as a safetensors file that stores only non-zeros.

A sparse run keeps its pruned weights as exact zeros in dense tensors, so ``checkpoint.pt`` spends
4 bytes on every weight; the export spends 8 on every *non-zero* weight (value and position) and
nothing on a zero, and holds no optimizer, no masks and no Python objects. Usage::

    from bayessparse.workflows.export import export_run, load_export
    export_run("runs/rigl", "rigl.safetensors")         # {"bytes": ..., "nnz": ..., "state_bytes": ...}
    model = load_export("rigl.safetensors")               # the run's evaluated network, dense weights
    fast = load_export("rigl.safetensors", form="sparse") # the same, sparse linear layers where they pay

or ``bayessparse export runs/rigl --out rigl.safetensors``. Loading needs only this package (the
architecture is rebuilt with :func:`models.build`), never the run folder, its data or ``pickle``.

**File format** (version 1): a `safetensors <https://huggingface.co/docs/safetensors>`_ file, i.e.
an 8-byte header length, a JSON header naming each tensor's dtype, shape and byte range plus a
string -> string ``__metadata__`` map, then the raw little-endian tensor bytes.

======================= ========= =========== =======================================================
tensor                  dtype     shape       content
======================= ========= =========== =======================================================
``NAME.values``         float32   ``(nnz,)``  the non-zero entries of prunable weight ``NAME``, in
                                              row-major (C) order
``NAME.indices``        int32     ``(nnz,)``  their flat row-major positions in ``NAME`` (strictly
                                              increasing, in ``[0, numel)``)
``NAME``                as saved  as saved    every other entry of the evaluated model's
                                              ``state_dict`` (biases, BatchNorm, dense weights)
======================= ========= =========== =======================================================

A prunable weight (conv / linear ``weight``) is stored as values and indices when that is smaller,
i.e. when it has fewer than half of its entries non-zero; otherwise as it is. Why flat positions:
they cost 4 bytes per non-zero for a weight of any rank (a conv kernel needs no reshaping), whereas
CSR-style storage (int32 column indices plus ``rows + 1`` row pointers) costs 4 bytes per non-zero
*plus* the row pointers, so it is never smaller. A weight must have fewer than 2^31 entries.

================== ===================================================================================
metadata key       value
================== ===================================================================================
``format``         ``bayessparse-sparse-weights``
``format_version`` ``1`` (a reader refuses any version it does not know)
``model``          the ``models.build`` name, e.g. ``mlp``
``num_classes``    integer
``input_shape``    JSON list of integers, one example's shape, e.g. ``[1, 8, 8]``
``width``          the model's ``width`` (a float)
``structure``      ``network`` (one ``models.build`` network) or ``snapshot-ensemble`` (``cigl-pa``:
                   a :class:`~bayessparse.sparsity.prediction_average.SnapshotEnsemble` of
                   ``members`` networks, keys ``members.K.*``)
``members``        integer, the number of networks (1 for ``network``)
``method``         the training method (informational)
``data``           the dataset (informational)
``sparse``         JSON object ``{NAME: shape}``, one entry per weight stored as values and indices
================== ===================================================================================

Everything read back is checked before it is used -- the format and its version, every metadata
entry, every tensor's presence, dtype and shape against the rebuilt network, index range and order,
finite numbers, no unknown tensor -- and anything wrong is one :class:`~bayessparse.errors.ConfigError`
line naming the file. The architecture is first built on PyTorch's ``meta`` device, so a file that
names an absurd shape is refused without allocating it, and the metadata is not trusted for sizes:
before anything is allocated, the network it describes must have at most ``max_parameters`` entries
(parameters and buffers; default :data:`MAX_PARAMETERS`, 10^8) and at most ``max_expansion`` times
the entries the file stores (default :data:`MAX_EXPANSION`, 10^4: a sparse weight legitimately
describes 1/density times its stored values, and no trained network is that sparse; networks of at
most :data:`SMALL` entries are exempt), and a weight stored sparse must be addressable by int32
positions. The network is then assembled from the checked tensors themselves (no second copy, no
random initialisation).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

import models
from bayessparse.errors import ConfigError
from bayessparse.files import write_atomic
from bayessparse.kernels.inference import MIN_FEATURES, MIN_SPARSITY, MIN_WEIGHTS, sparse_inference
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.prediction_average import SnapshotEnsemble

__all__ = ["FORMAT", "FORMAT_VERSION", "FORMS", "export_run", "export_bytes", "encode", "load_export"]

FORMAT = "bayessparse-sparse-weights"
FORMAT_VERSION = "1"
#: What :func:`load_export` returns: dense weights, or :func:`sparse_inference` applied to them.
FORMS = ("dense", "sparse")
STRUCTURES = ("network", "snapshot-ensemble")
#: :func:`load_export` refuses a network of more entries (parameters and buffers) than this by default.
MAX_PARAMETERS = 10**8
#: ... or of more than this many times the entries its file stores (values of sparse weights, dense tensors).
MAX_EXPANSION = 10**4
#: Networks of at most this many entries are exempt from the ``max_expansion`` rule (e.g. one whose
#: weights were all pruned to zero, stored as no values at all).
SMALL = 10**6
#: Positions are int32: a weight stored as values and indices has fewer entries than this.
MAX_SPARSE_NUMEL = 2**31
METADATA_KEYS = ("format", "format_version", "model", "num_classes", "input_shape", "width", "structure",
                 "members", "method", "data", "sparse")


# ----------------------------------------------------------------------------------------------- writing


def _stored_sparse(weight: torch.Tensor, nnz: int) -> bool:
    """Values and indices (8 bytes per non-zero) beat the dense tensor (4 bytes per entry) below density 1/2."""
    return 2 * nnz < weight.numel()


def encode(model: nn.Module, metadata: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes for ``model``'s state (format table above) and counts: ``nnz`` (non-zeros
    stored as values), ``sparse_tensors``, ``dense_bytes`` (tensors stored as they are)."""
    sparse_names = set(prunable_weights(model))
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    nnz = dense_bytes = 0
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        flat = tensor.reshape(-1)
        count = int(torch.count_nonzero(flat))
        if name in sparse_names and _stored_sparse(tensor, count):
            if tensor.numel() >= 2**31:
                raise ConfigError(f"cannot export weight {name}: {tensor.numel()} entries do not fit int32 positions")
            positions = flat.nonzero().squeeze(1)
            tensors[f"{name}.values"] = flat[positions].to(torch.float32).contiguous()
            tensors[f"{name}.indices"] = positions.to(torch.int32).contiguous()
            shapes[name] = list(tensor.shape)
            nnz += count
        else:
            tensors[name] = tensor.clone().contiguous()
            dense_bytes += tensor.numel() * tensor.element_size()
    data = _canonical(save(tensors, {**metadata, "sparse": json.dumps(shapes)}))
    return data, {"nnz": nnz, "sparse_tensors": len(shapes), "dense_bytes": dense_bytes}


def _canonical(data: bytes) -> bytes:
    """``data`` with the header's metadata in sorted order, so that the same model gives the same bytes.

    (safetensors writes the metadata map in the order of a Rust ``HashMap``, which is seeded per
    process.) The re-written header has the same length; any shortfall is padded with spaces, as
    the format allows, so the tensor byte ranges do not move."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # cannot happen for a compact header; keep the library's bytes if it ever does
        return data
    return data[:8] + text.ljust(length) + data[8 + length:]


def export_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s export without a run's identity (a real export adds ~200 bytes of metadata)."""
    return len(encode(model, {"format": FORMAT, "format_version": FORMAT_VERSION})[0])


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state as a checkpoint stores it (``torch.save`` of the dense ``state_dict``)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _check_out(out: Path) -> Path:
    """A file the export will (over)write: not a folder, in an existing writable folder."""
    from bayessparse.folders import check_writable

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a file")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    check_writable(out.parent, "--out")
    return out


def _structure(model: nn.Module) -> tuple[str, int]:
    if isinstance(model, SnapshotEnsemble):
        return "snapshot-ensemble", len(model.members)
    return "network", 1


def export_run(run_dir: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the evaluated network of the finished run ``run_dir`` to ``out_path`` (atomically).

    Returns ``{"path", "bytes", "nnz", "sparse_tensors", "dense_bytes", "state_bytes"}``:
    ``state_bytes`` is what the dense checkpoint spends on the same model state. A ``run_dir`` that
    is not a finished run folder, or an ``out_path`` that is a folder, lies in a missing one or is
    one of the run folder's own files (``checkpoint.pt``, ``config.yaml``, ...: see
    :func:`bayessparse.folders.own_file`), is a ConfigError before anything is written. Writing into
    an output folder (the run folder itself, e.g. ``RUN/model.safetensors``) holds that folder's
    lock, so a second writer (``train --resume``, ``evaluate``) is refused meanwhile.
    """
    from bayessparse.folders import check_not_own_file, writing_into

    out, run_dir = _check_out(Path(out_path)), Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder")
    check_not_own_file(out, "--out", run_dir)
    with writing_into(out, "export"):
        return _export(run_dir, out)


def _export(run_dir: Path, out: Path) -> dict[str, Any]:
    """:func:`export_run` once its paths are checked (and the folder it writes into is held)."""
    from bayessparse.train import load_finished

    run, model = load_finished(run_dir)
    cfg, structure = run.cfg, _structure(model)
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg.model,
        "num_classes": str(run.data.num_classes), "input_shape": json.dumps([int(s) for s in run.data.input_shape]),
        "width": repr(float(cfg.width)), "structure": structure[0], "members": str(structure[1]),
        "method": cfg.method, "data": cfg.data,
    }
    expected = _skeleton(_spec(metadata, run_dir)).state_dict()
    found = model.state_dict()
    if {k: tuple(v.shape) for k, v in expected.items()} != {k: tuple(v.shape) for k, v in found.items()}:
        raise ConfigError(f"cannot export {run_dir}: its evaluated model is not the {cfg.model} network that "
                          f"models.build makes (method {cfg.method})")
    data, counts = encode(model, metadata)
    write_atomic(out, lambda tmp: tmp.write_bytes(data))
    return {"path": str(out), "bytes": len(data), **counts, "state_bytes": state_bytes(model)}


# ----------------------------------------------------------------------------------------------- reading


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise ConfigError(f"export file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ConfigError(f"cannot read {path}: not a safetensors file ({type(exc).__name__})") from None
    return metadata, tensors


def _positive_int(text: str, what: str, where: Path | str) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and int(text) >= 1):
        raise ConfigError(f"{where}: metadata {what} must be a positive integer, got {text!r}")
    return int(text)


def _spec(metadata: dict[str, str], where: Path | str) -> dict[str, Any]:
    """The metadata that describes the network, checked and parsed (what :func:`_build` needs)."""
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a bayessparse export (metadata format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{where}: unsupported format_version {metadata.get('format_version')!r} "
                          f"(this bayessparse reads {FORMAT_VERSION})")
    missing = [key for key in METADATA_KEYS if key not in metadata and key != "sparse"]  # sparse: see _sparse
    if missing:
        raise ConfigError(f"{where}: metadata entry '{missing[0]}' is missing")
    try:
        shape = json.loads(metadata["input_shape"])
        width = float(metadata["width"])
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: metadata input_shape / width are not a JSON list and a number") from None
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ConfigError(f"{where}: metadata input_shape must be a list of positive integers, got {metadata['input_shape']!r}")
    if metadata["structure"] not in STRUCTURES:
        raise ConfigError(f"{where}: metadata structure must be one of {', '.join(STRUCTURES)}, "
                          f"got {metadata['structure']!r}")
    members = _positive_int(metadata["members"], "members", where)
    if metadata["structure"] == "network" and members != 1:
        raise ConfigError(f"{where}: metadata members must be 1 for a network, got {members}")
    if not math.isfinite(width):
        raise ConfigError(f"{where}: metadata width must be finite, got {metadata['width']!r}")
    return {"model": metadata["model"], "num_classes": _positive_int(metadata["num_classes"], "num_classes", where),
            "input_shape": tuple(shape), "width": width, "structure": metadata["structure"], "members": members}


def _build(spec: dict[str, Any], where: Path | str = "export") -> nn.Module:
    """The network (or snapshot ensemble) that ``spec`` describes, freshly initialised."""
    try:
        nets = [models.build(spec["model"], spec["num_classes"], spec["input_shape"], width=spec["width"])
                for _ in range(spec["members"])]
    except (ValueError, TypeError, RuntimeError) as exc:  # ConfigError is a ValueError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot build the network: {reason}") from None
    return nets[0] if spec["structure"] == "network" else SnapshotEnsemble(nets)


def _skeleton(spec: dict[str, Any], where: Path | str = "export") -> nn.Module:
    """:func:`_build` on the ``meta`` device: shapes and dtypes without memory."""
    with torch.device("meta"):
        return _build(spec, where)


def _sparse(metadata: dict[str, str], expected: dict[str, torch.Tensor], prunable: set[str],
            where: Path) -> dict[str, tuple[int, ...]]:
    """The ``sparse`` metadata entry, checked: prunable weights of the network, with their shapes."""
    if "sparse" not in metadata:
        raise ConfigError(f"{where}: metadata entry 'sparse' is missing")
    try:
        shapes = json.loads(metadata["sparse"])
    except ValueError:
        raise ConfigError(f"{where}: metadata sparse is not JSON") from None
    if not isinstance(shapes, dict):
        raise ConfigError(f"{where}: metadata sparse must be a JSON object of weight shapes")
    for name, shape in shapes.items():
        if name not in prunable:
            raise ConfigError(f"{where}: metadata sparse names {name!r}, which is not a prunable weight of the network")
        if not isinstance(shape, list) or tuple(shape) != tuple(expected[name].shape):
            raise ConfigError(f"{where}: metadata sparse gives {name} the shape {shape!r}, "
                              f"the network has {list(expected[name].shape)}")
        if expected[name].numel() >= MAX_SPARSE_NUMEL:
            raise ConfigError(f"{where}: weight {name} of shape {shape} has {expected[name].numel()} entries, "
                              f"more than int32 indices address")
    return {name: tuple(shape) for name, shape in shapes.items()}


def _check_size(expected: dict[str, torch.Tensor], sparse: dict[str, tuple[int, ...]],
                tensors: dict[str, torch.Tensor], where: Path, max_parameters: int, max_expansion: float) -> None:
    """Refuse a network larger than ``max_parameters`` entries, or than ``max_expansion`` times what the file stores."""
    declared = sum(like.numel() for like in expected.values())
    if declared > max_parameters:
        raise ConfigError(f"{where}: the metadata describes a network of {declared} entries, more than "
                          f"max_parameters={max_parameters}")
    stored = sum(int(tensors[f"{key}.values" if key in sparse else key].numel()) for key in expected
                 if (f"{key}.values" if key in sparse else key) in tensors)
    if declared > SMALL and declared > max_expansion * stored:
        raise ConfigError(f"{where}: the metadata describes a network of {declared} entries, but the file stores "
                          f"only {stored} (more than max_expansion={max_expansion:g} times as many)")


def _take(tensors: dict[str, torch.Tensor], key: str, where: Path) -> torch.Tensor:
    if key not in tensors:
        raise ConfigError(f"{where}: tensor '{key}' is missing")
    return tensors.pop(key)


def _check_finite(tensor: torch.Tensor, key: str, where: Path) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ConfigError(f"{where}: tensor '{key}' holds NaN or infinite numbers")


def _densify(tensors: dict[str, torch.Tensor], name: str, like: torch.Tensor, where: Path) -> torch.Tensor:
    """Weight ``name`` from its ``.values`` and ``.indices``, zeros filled in (checked first)."""
    values, indices = _take(tensors, f"{name}.values", where), _take(tensors, f"{name}.indices", where)
    if values.dtype != torch.float32 or values.dim() != 1:
        raise ConfigError(f"{where}: tensor '{name}.values' must be 1-d float32, got {values.dtype} {list(values.shape)}")
    if indices.dtype != torch.int32 or indices.shape != values.shape:
        raise ConfigError(f"{where}: tensor '{name}.indices' must be int32 of the shape of its values "
                          f"{list(values.shape)}, got {indices.dtype} {list(indices.shape)}")
    numel, positions = like.numel(), indices.to(torch.int64)
    if len(positions) and (int(positions[0]) < 0 or int(positions[-1]) >= numel):
        raise ConfigError(f"{where}: tensor '{name}.indices' has positions outside [0, {numel})")
    if len(positions) > 1 and not bool((positions[1:] > positions[:-1]).all()):
        raise ConfigError(f"{where}: tensor '{name}.indices' is not strictly increasing (row-major order)")
    _check_finite(values, f"{name}.values", where)
    try:
        dense = torch.zeros(numel, dtype=like.dtype)
    except (RuntimeError, MemoryError):  # a shape no memory holds (the metadata is not trusted)
        raise ConfigError(f"{where}: weight {name} of shape {list(like.shape)} is too large to fill in here") from None
    dense[positions] = values.to(like.dtype)
    return dense.reshape(like.shape)


def _state(tensors: dict[str, torch.Tensor], sparse: dict[str, tuple[int, ...]],
           expected: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` from the file's tensors, every one checked against ``expected``."""
    tensors, state = dict(tensors), {}
    for key, like in expected.items():
        if key in sparse:
            state[key] = _densify(tensors, key, like, where)
            continue
        tensor = _take(tensors, key, where)
        if tensor.dtype != like.dtype or tensor.shape != like.shape:
            raise ConfigError(f"{where}: tensor '{key}' is {tensor.dtype} {list(tensor.shape)}, "
                              f"the network expects {like.dtype} {list(like.shape)}")
        _check_finite(tensor, key, where)
        state[key] = tensor
    if tensors:
        raise ConfigError(f"{where}: unexpected tensor '{sorted(tensors)[0]}' (not part of the network)")
    return state


def load_export(path: str | Path, form: str = "dense", *, min_sparsity: float = MIN_SPARSITY,
                min_features: int = MIN_FEATURES, min_weights: int = MIN_WEIGHTS,
                max_parameters: int = MAX_PARAMETERS, max_expansion: float = MAX_EXPANSION) -> nn.Module:
    """The network of an export file, in eval mode.

    ``form="dense"``: the network that :func:`models.build` makes, with the file's weights (zeros
    filled in); ``form="sparse"``: that network passed through
    :func:`~bayessparse.kernels.inference.sparse_inference` with the given rule (its defaults convert
    only layers where CSR measurably pays). Anything wrong with the file is a one-line ConfigError.

    The file's metadata is not trusted for sizes: a network of more than ``max_parameters`` entries
    (parameters and buffers, all members of an ensemble; default 10^8, i.e. 400 MB of float32) or,
    above 10^6 entries, of more than ``max_expansion`` times the entries the file stores (default
    10^4, a density below 0.01 %) is refused before anything is allocated. Raise them to load a
    larger or sparser network on purpose.
    """
    if form not in FORMS:
        raise ConfigError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    for name, value in (("max_parameters", max_parameters), ("max_expansion", max_expansion)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    path = Path(path)
    metadata, tensors = _read(path)
    spec = _spec(metadata, path)
    if spec["members"] > len(tensors):  # every member has tensors: refuse before building them
        raise ConfigError(f"{path}: metadata members is {spec['members']}, but the file holds {len(tensors)} tensors")
    model = _skeleton(spec, path)  # on the meta device: no memory, no random initialisation
    expected = model.state_dict()
    sparse = _sparse(metadata, expected, set(prunable_weights(model)), path)
    _check_size(expected, sparse, tensors, path, max_parameters, max_expansion)
    state = _state(tensors, sparse, expected, path)
    model.load_state_dict(state, assign=True)  # the checked tensors become the network's (no copy)
    model.eval()
    if form == "dense":
        return model
    return sparse_inference(model, min_sparsity, min_features, min_weights)
