"""Training on several processes with ``torch.distributed``: ``torchrun --nproc_per_node=N -m bayessparse train``.

Data parallel, with one global batch split across the processes (ranks):

* **Data.** Every rank draws the same epoch order from the run's generator and takes a contiguous
  part of each global batch (:func:`part`; :func:`bayessparse.batches.batches` loads only that part),
  so a global batch of ``B`` examples is the single-process batch, whatever the number of ranks.
* **Gradients.** The model runs under ``DistributedDataParallel``; each rank's mean loss is weighted by
  its share of the global batch, so the all-reduced gradient is the gradient of the global batch's mean
  loss, as in one process (:func:`loss_weight`; the shares follow from the batch sizes, so the gradient
  all-reduce is the step's only communication). BatchNorm normalises each rank's part of the batch with its
  own statistics, and the running statistics are rank 0's (DDP broadcasts them at every forward).
* **Masks.** A mask update grows by the all-reduced *signed* dense gradient (DDP's), then its magnitude;
  every rank holds the same gradient, the same magnitudes and the same generator, so every rank moves
  ``M`` the same way (ties are broken by the shared generator). After every update a checksum of the
  masks is compared across ranks (two integers per layer, :func:`check_same_masks`); a mismatch stops
  the run with :class:`~bayessparse.errors.RankMismatch`.
* **Random mask Z (CigL): shared.** Every rank draws the same ``Z`` from the same seed, so the weights
  stay identical on every rank and the run is the single-process run with the global batch. (A per-rank
  ``Z``, as dropout under DDP, would thin each rank's copy differently and make the copies drift apart
  under CigL's restricted step.)
* **Checkpoints.** Rank 0 writes the run folder (atomically, as always); every rank resumes from it, and
  a resumed run on the same number of ranks ends bit-identical to an uninterrupted one.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``). ``compare`` and ``study``
launch their trainings this way with ``--processes N`` (:func:`launch`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bayessparse.errors import ConfigError, RankMismatch

__all__ = ["World", "check_same_masks", "check_same_weights", "init_from_environment", "launch", "loss_weight", "part",
           "world"]


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` processes (``size = 1``: not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current world: from the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_environment(device: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), once.

    ``gloo`` for CPU runs, ``nccl`` for CUDA runs; a CUDA rank uses the device ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def part(start: int, stop: int, w: World) -> tuple[int, int]:
    """Rank ``w.rank``'s contiguous part of the global batch ``[start, stop)`` (parts differ by at most one)."""
    n = stop - start
    base, extra = divmod(n, w.size)
    lo = start + w.rank * base + min(w.rank, extra)
    return lo, lo + base + (w.rank < extra)


def loss_weight(local: int, total: int, w: World) -> float:
    """``size · n_rank / n_global``: the factor on this rank's mean loss (over its ``local`` examples of the
    global batch's ``total``) that makes DDP's averaged gradient the gradient of the global batch's mean loss."""
    return w.size * local / total if w.distributed else 1.0


def _same(values: torch.Tensor) -> bool:
    """Whether ``values`` (int64) is equal on every rank."""
    low, high = values.clone(), values.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def mask_checksum(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per layer the number of active positions and the sum of their flat indices (int64, ``(2 L,)``)."""
    sums = []
    for mask in masks.values():
        active = mask.reshape(-1).nonzero().squeeze(1)
        sums += [active.numel(), int(active.sum())]
    return torch.tensor(sums, dtype=torch.int64)


def check_same_masks(masks: dict[str, torch.Tensor], step: int, w: World, device: torch.device) -> None:
    """Raise :class:`RankMismatch` unless every rank holds the same masks (after the update of ``step``)."""
    if w.distributed and not _same(mask_checksum(masks).to(device)):
        raise RankMismatch(f"the masks differ between the {w.size} processes after the mask update of step {step}")


def weights_checksum(model: nn.Module) -> torch.Tensor:
    """The bytes of every parameter and buffer, summed as int64 words (equal tensors give equal sums)."""
    total = torch.zeros((), dtype=torch.int64)
    for tensor in [*model.parameters(), *model.buffers()]:
        data = tensor.detach().cpu().contiguous().reshape(-1)
        if data.is_floating_point():
            data = data.view(torch.int32 if data.element_size() == 4 else torch.int16 if data.element_size() == 2
                             else torch.int64)
        total += data.to(torch.int64).sum()
    return total.reshape(1)


def check_same_weights(model: nn.Module, w: World, device: torch.device, when: str) -> None:
    """Raise :class:`RankMismatch` unless every rank holds bit-identical weights (``when``: for the message)."""
    if w.distributed and not _same(weights_checksum(model).to(device)):
        raise RankMismatch(f"the weights differ between the {w.size} processes {when}")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under ``DistributedDataParallel`` (the gradient all-reduce), or ``model`` itself in one process."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # buffers (BatchNorm statistics) are broadcast from rank 0 at every forward, so every rank holds the same ones
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def close() -> None:
    """Leave the process group (end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(cfg: Any, out: str | Path, processes: int) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out`` on ``processes`` local processes (``torchrun --standalone``),
    resuming what the folder holds; return its metrics record. How ``compare`` and ``study`` run their
    trainings data-parallel (``--processes``)."""
    from bayessparse.config import dump_yaml

    out = Path(out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(dump_yaml(cfg))
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={processes}", "-m", "bayessparse", "train", "--config", str(config),
                               "--out", str(out), "--no-progress", *resume], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("bayessparse:")] or \
            done.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"the {processes}-process training of {out} failed: {lines[-1] if lines else done.returncode}")
    return json.loads((out / "metrics.json").read_text())


def describe(w: World, model: nn.Module, masks: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """The run's world for its metrics record; with several processes also every rank's checksum of its final
    weights and of its masks (``rank_weight_checksums``, ``rank_mask_checksums``: equal on a healthy run)."""
    if not w.distributed:
        return {"world_size": 1}
    out: dict[str, Any] = {"world_size": w.size}
    for key, local in (("rank_weight_checksums", weights_checksum(model)),
                       ("rank_mask_checksums", mask_checksum(masks).sum().reshape(1))):
        gathered = [torch.zeros_like(local.to(device)) for _ in range(w.size)]
        dist.all_gather(gathered, local.to(device))
        out[key] = [int(t.item()) for t in gathered]
    return out
