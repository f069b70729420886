"""Step-time ratios of the training methods, measured side by side in one process.

For each architecture, one run per method is built on the same random batches; the methods'
steps are timed in alternating rounds (order shuffled each round) so that drift of the machine
hits all of them alike, and each ratio is the median over rounds of the per-round ratio. Mask
updates are timed separately (an update step = forward, backward on the dense gradient, drop
and grow) and reported relative to a plain step of the same method.

Only ratios are reported: absolute times depend on the machine and mean little alone.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Sequence

import torch
from torch.utils.data import TensorDataset

from bayessparse.config import resolve
from bayessparse.data import DataBundle
from bayessparse.errors import ConfigError
from bayessparse.train import Run, build_run, train_step

SETUPS = {
    "cnn1d": {"model": "cnn1d", "input_shape": (40,), "num_classes": 10, "batch_size": 128},
    "resnet18": {"model": "resnet18", "input_shape": (3, 32, 32), "num_classes": 10, "batch_size": 32},
}


def random_bundle(input_shape: Sequence[int], num_classes: int, n: int, seed: int = 0) -> DataBundle:
    """Random inputs and labels of a given shape (timing only; nothing is learnt)."""
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, *input_shape, generator=g), torch.randint(num_classes, (n,), generator=g))
    return DataBundle("random", data, data, data, num_classes, tuple(input_shape))


def _runs(setup: dict[str, Any], methods: Sequence[str], sparsity: float, device: str) -> dict[str, Run]:
    bundle = random_bundle(setup["input_shape"], setup["num_classes"], 4 * setup["batch_size"])
    runs = {}
    for method in methods:
        cfg = resolve({"model": setup["model"], "method": method, "sparsity": sparsity, "epochs": 1000,
                       "batch_size": setup["batch_size"], "update_interval": 10**9, "device": device})
        runs[method] = build_run(cfg, bundle)
    return runs


def time_steps(run: Run, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> float:
    """Mean seconds of ``steps`` training steps of ``run`` on ``batch`` (CUDA synchronised)."""
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run, *batch)
    sync()
    return (time.perf_counter() - start) / steps


def _time_update(run: Run, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds of one full update step: forward, backward, drop and grow."""
    method = run.method
    start = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    with method.forward(run.model):
        torch.nn.functional.cross_entropy(run.model(batch[0]), batch[1]).backward()
    method.update(method.schedule.t_end // 2, run.optimizer)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    setup_name: str, methods: Sequence[str] = ("dense", "rigl", "cigl"), rounds: int = 7, steps: int = 10,
    sparsity: float = 0.9, device: str = "cpu", seed: int = 0,
) -> dict[str, Any]:
    """Median per-round step-time ratios (every method vs dense, and cigl vs rigl) and update cost."""
    for name, value in (("rounds", rounds), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if setup_name not in SETUPS:
        raise ConfigError(f"unknown bench setup {setup_name!r} (choose from: {', '.join(SETUPS)})")
    runs = _runs(SETUPS[setup_name], methods, sparsity, device)
    first = runs[methods[0]]
    batch = tuple(t[: first.cfg.batch_size].to(first.device) for t in first.data.train.tensors)
    for run in runs.values():  # warm-up
        time_steps(run, batch, 2)
    order = list(methods)
    shuffle = random.Random(seed)
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        shuffle.shuffle(order)
        per_round.append({m: time_steps(runs[m], batch, steps) for m in order})
    ratios = {f"{m}/dense": statistics.median(r[m] / r["dense"] for r in per_round) for m in methods if m != "dense"}
    if "cigl" in methods and "rigl" in methods:
        ratios["cigl/rigl"] = statistics.median(r["cigl"] / r["rigl"] for r in per_round)
    updates = {}
    for m in methods:
        if getattr(runs[m].method, "updater", None) is not None:
            update = statistics.median(_time_update(runs[m], batch) for _ in range(3))
            updates[f"{m} update/step"] = update / statistics.median(r[m] for r in per_round)
    return {"setup": setup_name, "device": device, "rounds": rounds, "steps_per_round": steps,
            "threads": torch.get_num_threads(), "ratios": ratios, "update_cost": updates}
