"""The sparse-kernel benchmark grid: what sparsity buys in step time, inference time and bytes.

``bayessparse bench --kernels`` measures, for each model (the MNIST-1D MLP at width 4, i.e. 1024-wide
hidden layers, and the MNIST-1D CNN), each sparsity and each batch size:

* **training step** of three runs built on the same random batch -- ``dense`` (method dense),
  ``masked`` (RigL, masked-dense kernels, the reference path) and ``sparse`` (RigL with
  ``kernels: sparse``) -- timed in alternating rounds (order shuffled each round); reported as the
  median over rounds of the per-round ratio to ``dense``. Mask updates are not in the timed steps;
* **inference** of the trained-shape network: dense weights vs the CSR layers of
  :func:`bayessparse.kernels.inference.sparse_inference`, same alternation, ratio to dense;
* **training-state bytes** (weights, gradients and optimizer state that a step keeps; on CUDA also
  the peak allocated memory of a step) and **export bytes** (:mod:`bayessparse.workflows.export`) against
  the dense checkpoint's model bytes.

Only ratios are reported; absolute times depend on the machine. Denormal floats are flushed to zero
while measuring (``torch.set_flush_denormal``): steps repeated on one random batch drive some
gradients into the denormal range, where x86 float units slow down many times over -- in one
measured cell that made the masked step 1.6x the dense one, an artefact of the benchmark, not of
the kernels.
"""

from __future__ import annotations

import io
import random
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bayessparse.workflows.bench import random_bundle
from bayessparse.config import resolve
from bayessparse.train import Run, build_run, train_step

#: The models of the grid: MNIST-1D shapes, the MLP at width 4 (hidden layers 1024 wide).
MODELS = {
    "mlp": {"model": "mlp", "width": 4.0, "input_shape": (40,), "num_classes": 10},
    "cnn1d": {"model": "cnn1d", "width": 1.0, "input_shape": (40,), "num_classes": 10},
}
PATHS = ("dense", "masked", "sparse")


def _run(model: dict[str, Any], path: str, sparsity: float, batch: int, device: str) -> Run:
    cfg = resolve({"model": model["model"], "width": model["width"], "method": "dense" if path == "dense" else "rigl",
                   "kernels": "auto" if path == "sparse" else "dense", "sparsity": sparsity, "epochs": 1000,
                   "batch_size": batch, "update_interval": 10**9, "device": device})
    bundle = random_bundle(model["input_shape"], model["num_classes"], max(2 * batch, 2))
    return build_run(cfg, bundle)


def _alternate(timers: dict[str, Callable[[], float]], rounds: int, seed: int) -> dict[str, float]:
    """Median over rounds of each timer's time relative to ``timers['dense']`` (order shuffled per round)."""
    order, shuffle, per_round = list(timers), random.Random(seed), []
    for timer in timers.values():  # warm-up
        timer()
    for _ in range(rounds):
        shuffle.shuffle(order)
        per_round.append({name: timers[name]() for name in order})
    return {name: statistics.median(r[name] / r["dense"] for r in per_round) for name in timers if name != "dense"}


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> Callable[[], float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timer() -> float:
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats
    return timer


def state_bytes(run: Run) -> int:
    """Bytes of what a training step keeps: parameters, their gradients and the optimizer's state
    (for sparse-kernel layers: the dense weight, the values, their gradient and momentum)."""
    tensors = [p for p in run.model.parameters()]
    kernel_weights = {id(layer.weight) for layer in getattr(run.engine, "layers", [])}
    tensors += [p for p in run.model.parameters() if p.requires_grad and id(p) not in kernel_weights]  # gradients
    for state in run.optimizer.state.values():
        tensors += [t for t in state.values() if torch.is_tensor(t)]
    for layer in getattr(run.engine, "layers", []):
        tensors += [layer.values, layer.values]  # the values and their gradient
        tensors += [layer.values] if run.cfg.momentum else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _model_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def measure_cell(name: str, sparsity: float, batch: int, *, rounds: int, steps: int, device: str = "cpu",
                 seed: int = 0) -> dict[str, Any]:
    """One cell of the grid: training-step and inference ratios, bytes, for one model, sparsity, batch."""
    from bayessparse.workflows.export import export_bytes
    from bayessparse.kernels.inference import sparse_inference

    model = MODELS[name]
    runs = {path: _run(model, path, sparsity, batch, device) for path in PATHS}
    x, y = (t[:batch].to(runs["dense"].device) for t in runs["dense"].data.train.tensors)
    for run in runs.values():  # a few steps so that momentum buffers exist, as in training
        for _ in range(2):
            train_step(run, x, y)
    dev = runs["dense"].device
    train = _alternate({path: _timed(lambda r=run: train_step(r, x, y), steps, dev) for path, run in runs.items()},
                       rounds, seed)
    masked = runs["masked"].model.eval()
    fast = sparse_inference(masked)
    dense_net = runs["dense"].model.eval()
    with torch.no_grad():
        infer = _alternate({"dense": _timed(lambda: dense_net(x), steps, dev),
                            "masked": _timed(lambda: masked(x), steps, dev),
                            "sparse": _timed(lambda: fast(x), steps, dev)}, rounds, seed)
    cell = {
        "model": name, "sparsity": sparsity, "batch": batch, "device": device,
        "kernel_layers": runs["sparse"].engine.names,
        "train_step": {f"{path}/dense": ratio for path, ratio in train.items()},
        "inference": {f"{path}/dense": ratio for path, ratio in infer.items()},
        "state_bytes": {path: state_bytes(run) for path, run in runs.items()},
        "export_bytes": export_bytes(masked), "dense_model_bytes": _model_bytes(dense_net),
    }
    if device == "cuda":
        cell["peak_step_bytes"] = {path: _peak_step(run, x, y) for path, run in runs.items()}
    return cell


def _peak_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(run, x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def measure_grid(models: Sequence[str] = tuple(MODELS), sparsities: Sequence[float] = (0.9, 0.95, 0.98),
                 batches: Sequence[int] = (1, 256), *, rounds: int = 7, steps: int = 10, device: str = "cpu",
                 progress: bool = True) -> list[dict[str, Any]]:
    """Every cell of the grid (:func:`measure_cell`)."""
    from tqdm.auto import tqdm

    cells = [(m, s, b) for m in models for s in sparsities for b in batches]
    flushing = torch.set_flush_denormal(True)
    try:
        return [measure_cell(m, s, b, rounds=rounds, steps=steps, device=device)
                for m, s, b in tqdm(cells, desc="kernels", disable=not progress)]
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def markdown(cells: list[dict[str, Any]]) -> str:
    """The grid as a markdown table (ratios to dense: below 1 is faster / smaller)."""
    lines = ["| model | sparsity | batch | step masked / dense | step sparse / dense | infer sparse / dense "
             "| state bytes sparse / dense | export / dense bytes | kernel layers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(
            f"| {c['model']} | {c['sparsity']:.0%} | {c['batch']} | {c['train_step']['masked/dense']:.2f} "
            f"| **{c['train_step']['sparse/dense']:.2f}** | **{c['inference']['sparse/dense']:.2f}** "
            f"| {c['state_bytes']['sparse'] / c['state_bytes']['dense']:.2f} "
            f"| {c['export_bytes'] / c['dense_model_bytes']:.3f} | {', '.join(c['kernel_layers']) or '-'} |")
    return "\n".join(lines)
