"""Step-time ratio of the Pyro SVI engine to the plain training loop (``--engine pyro`` / ``--engine plain``).

For each architecture and method, a plain and a pyro run are built from the same config on the
same random batch (``bayessparse.workflows.bench``'s setups: the MNIST-1D CNN at batch 128, a CIFAR
ResNet-18 on random CIFAR-shaped batches of 32) and their steps are timed in alternating rounds
(order shuffled each round), so that drift of a shared machine hits both alike; the reported
ratio is the median over rounds of the per-round ratio. Mask updates are off (they are the same
code in both engines). Only ratios are reported.

``--naive`` adds a direct Pyro formulation for reference: ``pyro.infer.Trace_ELBO`` (per-weight
log-probs for the Bernoulli sites and Monte-Carlo divergences, one device read per site), Pyro's
runtime validation on, and the prior as ``Normal(0, s).expand(shape).to_event(...)``.

    OMP_NUM_THREADS=1 python benchmarks/svi_step.py --setups cnn1d,resnet18 --methods cigl,rigl --naive
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from bayessparse.workflows.bench import SETUPS, random_bundle, time_steps
from bayessparse.config import resolve
from bayessparse.train import Run, build_run


def _naive(run: Run) -> Run:
    """Turn a pyro run into the direct formulation (same gradients in expectation, more work per step)."""
    engine = run.engine
    engine.validate = True
    engine.svi.loss_and_grads = pyro.infer.Trace_ELBO().loss_and_grads
    model = engine.model
    model.weight_priors = {
        name: dist.Normal(torch.tensor(0.0), torch.tensor(model.scale)).expand(shape).to_event(len(shape))
        for name, shape in model.shapes.items()
    }
    return run


def measure(setup_name: str, method: str, rounds: int, steps: int, naive: bool, device: str = "cpu",
            sparsity: float = 0.9, seed: int = 0) -> dict:
    setup = SETUPS[setup_name]
    bundle = random_bundle(setup["input_shape"], setup["num_classes"], 4 * setup["batch_size"])
    cfg = resolve({"model": setup["model"], "method": method, "sparsity": sparsity, "epochs": 1000,
                   "batch_size": setup["batch_size"], "update_interval": 10**9, "device": device})
    runs = {"plain": build_run(cfg, bundle), "pyro": build_run(cfg.replace(engine="pyro"), bundle)}
    if naive:
        runs["naive"] = _naive(build_run(cfg.replace(engine="pyro"), bundle))
    first = runs["plain"]
    batch = tuple(t[: cfg.batch_size].to(first.device) for t in bundle.train.tensors)
    for run in runs.values():  # warm-up
        run.model.train()
        time_steps(run, batch, 2)
    order = list(runs)
    shuffle = random.Random(seed)
    per_round = []
    for _ in range(rounds):
        shuffle.shuffle(order)
        per_round.append({name: time_steps(runs[name], batch, steps) for name in order})
    ratios, spread = {}, {}
    for name in runs:
        if name != "plain":
            per = [r[name] / r["plain"] for r in per_round]
            ratios[f"{name}/plain"], spread[f"{name}/plain"] = statistics.median(per), [min(per), max(per)]
    return {"setup": setup_name, "method": method, "batch_size": cfg.batch_size, "device": device,
            "threads": torch.get_num_threads(), "rounds": rounds, "steps_per_round": steps,
            "ratios": ratios, "min_max": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="cnn1d,resnet18")
    parser.add_argument("--methods", default="cigl,rigl")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per engine per round (0: 10 for cnn1d, 2 for resnet18)")
    parser.add_argument("--naive", action="store_true", help="also time the direct Pyro formulation")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    results = []
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {args.device}")
    for setup in args.setups.split(","):
        for method in args.methods.split(","):
            steps = args.steps or (10 if setup == "cnn1d" else 2)
            result = measure(setup, method, args.rounds, steps, args.naive, args.device)
            results.append(result)
            for key, value in result["ratios"].items():
                lo, hi = result["min_max"][key]
                print(f"{setup:9s} {method:6s} {key:12s} {value:5.2f}x  (rounds {lo:.2f}-{hi:.2f})", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the figures in docs/performance.md are single-threaded
    main()
