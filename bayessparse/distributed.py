"""Training on several processes with ``torch.distributed``: ``torchrun --nproc_per_node=N -m bayessparse train``.

Data parallel, with one global batch split across the processes (ranks):

* **Data.** Every rank draws the same epoch order from the run's generator and takes a contiguous
  part of each global batch (:func:`part`; :func:`bayessparse.batches.batches` loads only that part),
  so a global batch of ``B`` examples is the single-process batch, whatever the number of ranks.
* **Gradients.** The model runs under ``DistributedDataParallel``; each rank's mean loss is weighted by
  its share of the global batch, so the all-reduced gradient is the gradient of the global batch's mean
  loss, as in one process (:func:`loss_weight`; the shares follow from the batch sizes, so the gradient
  all-reduce is the step's only communication). BatchNorm normalises each rank's part of the batch with its
  own statistics, and the running statistics are rank 0's: DDP (``broadcast_buffers``) sends rank 0's
  buffers to every rank at the start of each forward, so after a step every rank holds the statistics of
  its own part until the next one. At the end of training :func:`broadcast_buffers` sends rank 0's once
  more, so the final model is the same on every rank (and rank 0's statistics, the ones its checkpoints
  hold, are the model's).
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
* **The end.** The parameters are compared bit for bit across ranks (:func:`check_same_weights`) after the
  buffers were made equal (:func:`broadcast_buffers`). A rank leaves the process group only after every rank
  has finished its collectives and the backend's threads have let go of this rank's tensors (:func:`close`: a
  final barrier, a wait, then ``destroy_process_group``), so that no rank aborts on its way out.
* **Only ``train``.** Every other command runs in one process: launched by torchrun on several it is
  refused at once (:func:`check_single_process`), before it writes anything.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``). ``compare`` and ``study``
launch their trainings this way with ``--processes N`` (:func:`launch`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bayessparse.errors import ConfigError, RankMismatch

__all__ = ["World", "broadcast_buffers", "check_same_masks", "check_same_weights", "check_single_process",
           "init_from_environment", "launch", "launched_processes", "loss_weight", "part", "world"]


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


def launched_processes() -> int:
    """How many processes torchrun launched this one among (``WORLD_SIZE``); 1 when it did not launch it."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_single_process(command: str) -> None:
    """Refuse ``command`` (any but ``train``) launched by torchrun on several processes: each process would
    do the whole job and all but one would find its folder locked. A :class:`ConfigError`, before any work."""
    size = launched_processes()
    if size > 1:
        raise ConfigError(f"{command} runs in one process, not under torchrun on {size}: launch it without "
                          f"torchrun (train is the command that trains data-parallel; compare and study take "
                          f"--processes)")


def init_from_environment(device: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), once.

    ``gloo`` for CPU runs, ``nccl`` for CUDA runs; a CUDA rank uses the device ``LOCAL_RANK``.
    """
    size = launched_processes()
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


#: Weak references to the tensors this process has handed to collectives (:func:`_lend`); :func:`close`
#: waits until the backend's threads have let go of every one.
_LENT: list[weakref.ref] = []


def _lend(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, a temporary of the caller's that goes into a collective (and nowhere else), remembered
    weakly: once the caller has dropped it, it dies when the backend's thread lets go of it (see :func:`close`)."""
    if len(_LENT) >= 64:
        _LENT[:] = [ref for ref in _LENT if ref() is not None]
    _LENT.append(weakref.ref(tensor))
    return tensor


def _same(values: torch.Tensor) -> bool:
    """Whether ``values`` (int64) is equal on every rank."""
    low, high = values.clone(), values.clone()
    dist.all_reduce(_lend(low), op=dist.ReduceOp.MIN)
    dist.all_reduce(_lend(high), op=dist.ReduceOp.MAX)
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


def broadcast_buffers(model: nn.Module, w: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics and batch counts), in place.

    What DDP's ``broadcast_buffers`` does at the start of every forward, once more at the end of training:
    the last step left each rank with the statistics of its own part of the last batch, and rank 0's, the
    ones its checkpoints hold, are the model's."""
    if w.distributed:
        with torch.no_grad():
            for buffer in model.buffers():
                received = buffer.clone()
                dist.broadcast(_lend(received), src=0)
                buffer.copy_(received)


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
    """Raise :class:`RankMismatch` unless every rank holds bit-identical parameters (``when``: for the message).

    Every byte of every parameter is compared with rank 0's. Buffers are not compared: between two forwards
    each rank's BatchNorm statistics are its own by design (see the module docstring); make them rank 0's
    with :func:`broadcast_buffers` first."""
    if not w.distributed:
        return
    local = torch.cat([torch.zeros(0, dtype=torch.uint8, device=device),
                       *(p.detach().to(device).contiguous().reshape(-1).view(torch.uint8) for p in model.parameters())])
    reference = local.clone()
    dist.broadcast(_lend(reference), src=0)
    if not _same(torch.tensor([int(torch.equal(local, reference))], dtype=torch.int64, device=device)):
        raise RankMismatch(f"the weights differ between the {w.size} processes {when}")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under ``DistributedDataParallel`` (the gradient all-reduce), or ``model`` itself in one process."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # rank 0's buffers (BatchNorm statistics) are broadcast at the start of every forward (see the module docstring)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def close(timeout: float = 60.0) -> None:
    """Leave the process group (the end of a distributed command; called from a ``finally`` block).

    Gloo runs each collective on a worker thread of its own, which lets go of the collective's tensors only
    after the caller has been told it is done, and ``destroy_process_group`` does not stop those threads (DDP
    keeps the group alive). Letting go of a tensor that Python knows takes the GIL; once the interpreter
    shuts down, a thread that asks for the GIL is ended with ``pthread_exit``, which the C++ frames turn into
    ``std::terminate``: the process aborts (SIGABRT, "terminate called without an active exception") after
    its work was done, and torchrun reports a finished run as failed. Rank 1, which writes nothing, used to
    exit right after its last collective, so on a loaded machine its worker thread could still hold that
    collective's tensors.

    So after a command that ended normally the ranks first meet at a barrier (none leaves while another is
    still in a collective; rank 1 waits there until rank 0 has written the run folder), then this process
    waits, the GIL released, until the backend's threads have let go of every tensor it handed them
    (:func:`_lend`; the barrier holds on to the collectives before it until it is released itself), at most
    ``timeout`` seconds, and only then destroys the group. With an exception in flight neither: the other
    ranks may be inside a collective this one will never join (torchrun stops them)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if sys.exc_info()[0] is None:
        if dist.get_world_size() > 1:
            dist.barrier()
        deadline = time.monotonic() + timeout
        while any(ref() is not None for ref in _LENT) and time.monotonic() < deadline:
            time.sleep(0.001)
    _LENT.clear()
    dist.destroy_process_group()


class LaunchFailed(RankMismatch):
    """A training launched on several processes (:func:`launch`) failed; the message names the rank that
    failed first and its own last words. The command line reports it in one line (exit code 1)."""


def launch(cfg: Any, out: str | Path, processes: int) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out`` on ``processes`` local processes (``torchrun --standalone``),
    resuming what the folder holds; return its metrics record. How ``compare`` and ``study`` run their
    trainings data-parallel (``--processes``).

    A failed launch raises :class:`LaunchFailed` naming the rank that failed first: every rank's stderr goes
    to its own log file (``--redirects 2``), and when one rank fails torchrun terminates the others, whose
    last line (``bayessparse: terminated``) says nothing about the failure."""
    from bayessparse.config import dump_yaml

    out = Path(out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config, logs = Path(tmp) / "config.yaml", Path(tmp) / "logs"
        config.write_text(dump_yaml(cfg))
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={processes}", "--log-dir", str(logs), "--redirects", "2",
                               "-m", "bayessparse", "train", "--config", str(config), "--out", str(out),
                               "--no-progress", *resume], capture_output=True, text=True)
        if done.returncode != 0:
            raise LaunchFailed(f"the {processes}-process training of {out} failed: "
                               f"{first_failure(logs, done.stderr) or f'torchrun exit code {done.returncode}'}")
    return json.loads((out / "metrics.json").read_text())


#: The last line of a rank that torchrun stopped because another rank had failed (:mod:`bayessparse.cli`).
_STOPPED = ("bayessparse: terminated", "bayessparse: interrupted")


def _last_words(text: str) -> str | None:
    """A rank's own account of its end: its last ``bayessparse:`` line, else the ``what():`` of a C++ abort,
    else the exception line of a traceback, else its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in (r"bayessparse: ", r"what\(\):\s*", r"[A-Za-z_][\w.]*(Error|Exception|Exit)\b[^:]*: ", r""):
        matches = [line for line in lines if re.match(pattern, line)]
        if matches:
            return re.sub(r"^what\(\):\s*", "", matches[-1])
    return None


def first_failure(logs: Path, stderr: str = "") -> str | None:
    """``rank R: MESSAGE`` for the rank of a failed torchrun launch that failed first, from the per-rank
    stderr logs under ``logs`` (torchrun ``--log-dir``, ``--redirects 2``); ``None`` if no rank said anything.

    A rank that torchrun terminated after another one failed is passed over; among the rest, the rank whose
    log was written last earliest failed first. Without logs, the last ``bayessparse:`` line of ``stderr``."""
    found = []
    for log in logs.glob("*/attempt_*/*/stderr.log"):
        words = _last_words(log.read_text(errors="replace"))
        if words is not None and log.parent.name.isdigit():
            found.append((words.startswith(_STOPPED), log.stat().st_mtime_ns, int(log.parent.name), words))
    if not found:
        words = _last_words("\n".join(line for line in stderr.splitlines() if line.startswith("bayessparse:")))
        return words.removeprefix("bayessparse: ") if words else None
    _, _, rank, words = min(found)
    return f"rank {rank}: {words.removeprefix('bayessparse: ')}"


def describe(w: World, model: nn.Module, masks: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """The run's world for its metrics record; with several processes also every rank's checksum of its final
    weights and of its masks (``rank_weight_checksums``, ``rank_mask_checksums``: equal on a healthy run)."""
    if not w.distributed:
        return {"world_size": 1}
    out: dict[str, Any] = {"world_size": w.size}
    for key, local in (("rank_weight_checksums", weights_checksum(model)),
                       ("rank_mask_checksums", mask_checksum(masks).sum().reshape(1))):
        gathered = [_lend(torch.zeros_like(local.to(device))) for _ in range(w.size)]
        dist.all_gather(gathered, _lend(local.to(device)))
        out[key] = [int(t.item()) for t in gathered]
    return out
