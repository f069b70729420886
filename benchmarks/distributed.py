"""What data-parallel training costs: one process against two gloo processes, and what crosses between them.

(a) Whole training, ``bayessparse train`` against ``torchrun --nproc_per_node=2 -m bayessparse train`` on the
    same global batches (RigL at 90 %, an MLP on MNIST-1D): the ratio of training seconds, two processes over
    one, per round (rounds alternate which goes first; the median is printed).
(b) Inside two gloo ranks: the time of the gradient all-reduce (DDP's dense gradient of every parameter, every
    step) against the mask checksum comparison after an update (two integers per layer), per call, and the
    bytes each moves. Ratios and byte counts only: absolute times mean little alone.

    OMP_NUM_THREADS=1 python benchmarks/distributed.py --rounds 3 [--width 4 --batch-size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TRAIN = ["--data", "mnist1d", "--model", "mlp", "--method", "rigl", "--sparsity", "0.9", "--epochs", "2",
         "--no-progress"]


def _train_seconds(ranks: int, out: Path, width: float, batch_size: int) -> float:
    # --standalone: torchrun binds a free port itself (one chosen here could be taken before it binds)
    launch = [sys.executable, "-m", "bayessparse"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
        "-m", "bayessparse"]
    subprocess.run([*launch, "train", *TRAIN, "--set", f"width={width}", "--batch-size", str(batch_size),
                    "--out", str(out)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def _communication(rank: int, store: str, calls: int, width: float, results) -> None:
    import models
    from bayessparse.distributed import World, check_same_masks, close
    from bayessparse.sparsity.density import layer_densities, prunable_weights
    from bayessparse.sparsity.masks import MaskSet

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)  # no port to race for
    torch.set_num_threads(1)
    model = models.build("mlp", 10, (40,), width=width)
    shapes = {n: w.shape for n, w in prunable_weights(model).items()}
    masks = MaskSet(model, layer_densities("erk", shapes, 0.1), torch.Generator().manual_seed(0))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    world, cpu = World(rank, 2), torch.device("cpu")
    times = {"gradient all-reduce": [], "mask checksum": []}
    for _ in range(calls):
        for name, call in (("gradient all-reduce", lambda: dist.all_reduce(flat)),
                           ("mask checksum", lambda: check_same_masks(masks.masks, 0, world, cpu))):
            dist.barrier()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    if rank == 0:
        results.update({name: statistics.median(t) for name, t in times.items()},
                       gradient_bytes=flat.numel() * 4, checksum_bytes=2 * 2 * len(masks.masks) * 8,
                       parameters=flat.numel())
    close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--width", type=float, default=2.0, help="the MLP's width multiplier")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            seconds = {ranks: _train_seconds(ranks, Path(tmp) / f"r{r}-{ranks}", args.width, args.batch_size)
                       for ranks in order}
            ratios.append(seconds[2] / seconds[1])
    results = mp.Manager().dict()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_communication, args=(str(Path(tmp) / "store"), args.calls, args.width, results), nprocs=2,
                 join=True)
    print(f"MLP width {args.width}, global batch {args.batch_size}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| training seconds, 2 gloo processes / 1 process (median of {args.rounds} rounds) | "
          f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)}) |")
    print(f"| bytes all-reduced per step (dense gradient, {results['parameters']} parameters) | "
          f"{results['gradient_bytes']} |")
    print(f"| bytes compared per mask update (checksum, 2 integers per layer, MIN and MAX) | {results['checksum_bytes']} |")
    print(f"| mask checksum time / gradient all-reduce time, per call | "
          f"{results['mask checksum'] / results['gradient all-reduce']:.2f} |")


if __name__ == "__main__":
    main()
