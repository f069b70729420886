"""Step-time ratios of CigL's thinning, eager and fused, to a plain masked (RigL-like) step, on CUDA.

ResNet-50 for CIFAR-shaped inputs (``models.build("resnet50", 10, (3, 32, 32))``), batch 128, ERK
masks at 90 % sparsity, SGD with momentum and weight decay. One training step of

    (a) masked weights: forward, backward, ``grad ⊙ M``, SGD;
    (b) CigL eager thinning (:class:`~bayessparse.sparsity.random_mask.RandomMask`): ``Z`` drawn with
        ``torch.rand`` over the active weights, dropped weights zeroed in place and restored;
    (c) fused thinning (:mod:`bayessparse.kernels.fused_mask`): ``fused_forward`` (``Z`` drawn inside the
        Triton kernel, forward and backward) and ``hold_dropped`` around the SGD step.

The three are timed in alternating rounds (order shuffled each round) so that drift of the machine
hits them alike; each ratio is the median over rounds of the per-round ratio. Only ratios are
printed: absolute times mean little alone.

    python benchmarks/fused_mask.py --rounds 9 --steps 10
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

import models
from bayessparse.kernels.fused_mask import fused_forward, hold_dropped
from bayessparse.sparsity.density import layer_densities, prunable_weights
from bayessparse.sparsity.masks import MaskSet
from bayessparse.sparsity.random_mask import RandomMask


def _setup(sparsity: float) -> tuple[torch.nn.Module, MaskSet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = models.build("resnet50", 10, (3, 32, 32)).cuda().train()
    shapes = {name: w.shape for name, w in prunable_weights(model).items()}
    masks = MaskSet(model, layer_densities("erk", shapes, 1.0 - sparsity), torch.Generator().manual_seed(0))
    return model, masks, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def masked_step(sparsity: float, keep: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """(a) RigL between mask updates."""
    model, masks, optimizer = _setup(sparsity)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        masks.mask_grads_()
        optimizer.step()
    return step


def eager_step(sparsity: float, keep: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """(b) CigL as :mod:`bayessparse.sparsity.cigl` trains it."""
    model, masks, optimizer = _setup(sparsity)
    random_mask = RandomMask(masks, 1.0 - keep, seed=0)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        random_mask.thin_()
        F.cross_entropy(model(x), y).backward()
        random_mask.restore_()
        masks.mask_grads_()
        random_mask.use_thinned_()
        optimizer.step()
        random_mask.merge_()
    return step


def fused_step(sparsity: float, keep: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """(c) CigL with ``Z`` drawn inside the fused kernel; the same semantics as (b)."""
    model, masks, optimizer = _setup(sparsity)
    weights, counter = prunable_weights(model), [0]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        t = counter[0]
        optimizer.zero_grad(set_to_none=True)
        with fused_forward(model, weights, 0, t, keep):
            F.cross_entropy(model(x), y).backward()
        masks.mask_grads_()
        with hold_dropped(weights, 0, t, keep):
            optimizer.step()
        counter[0] += 1
    return step


def _seconds(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--drop-rate", type=float, default=0.01)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/fused_mask.py needs CUDA; none is available, nothing measured.", file=sys.stderr)
        return 0
    torch.backends.cudnn.benchmark = True
    keep = 1.0 - args.drop_rate
    steps = {"masked": masked_step, "eager": eager_step, "fused": fused_step}
    steps = {name: make(args.sparsity, keep) for name, make in steps.items()}
    x = torch.randn(args.batch_size, 3, 32, 32, device="cuda")
    y = torch.randint(10, (args.batch_size,), device="cuda")
    for step in steps.values():  # warm-up: cuDNN autotuning, Triton compilation
        _seconds(step, x, y, 3)
    ratios: dict[str, list[float]] = {"eager/masked": [], "fused/masked": [], "fused/eager": []}
    for _ in range(args.rounds):
        order = list(steps)
        random.shuffle(order)
        times = {name: _seconds(steps[name], x, y, args.steps) for name in order}
        for key in ratios:
            a, b = key.split("/")
            ratios[key].append(times[a] / times[b])
    print(f"{torch.cuda.get_device_name()}: ResNet-50, batch {args.batch_size}, sparsity {args.sparsity}, "
          f"drop rate {args.drop_rate}, {args.rounds} rounds of {args.steps} steps")
    for key, values in ratios.items():
        print(f"  {key:>13}: {statistics.median(values):.3f}  (min {min(values):.3f}, max {max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
