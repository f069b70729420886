"""The sweep behind compare's regression defaults (``bayessparse.workflows.compare.REGRESSION_DEFAULTS``).

RigL and CigL at 90 % sparsity on ``diabetes`` (an MLP, batches of 32, 100 epochs), over width,
weight decay and learning rate, three seeds each. The choice rule: the lowest validation NLL,
averaged over both methods and the seeds; the test split is not looked at. Prints a Markdown table
(validation and test NLL, RMSE and 90 % coverage; means over seeds), the committed copy of which is
``experiments/regression_sweep.md``::

    OMP_NUM_THREADS=1 python experiments/regression_sweep.py --jobs 2 > experiments/regression_sweep.md
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from typing import Any

from bayessparse.config import resolve
from bayessparse.jobs import run_jobs
from bayessparse.train import build_run, evaluate_model, fit

METHODS = ("rigl", "cigl")
WIDTHS = (0.25, 1.0)
WEIGHT_DECAYS = (0.005, 0.05, 0.1)
LEARNING_RATES = (0.01, 0.05)
SEEDS = (0, 1, 2)
FIXED = {"data": "diabetes", "model": "mlp", "epochs": 100, "batch_size": 32, "sparsity": 0.9}
KEYS = ("val_nll", "val_rmse", "val_coverage_90", "nll", "rmse", "coverage_90")


def one(job: tuple[str, float, float, float, int]) -> dict[str, float]:
    method, width, weight_decay, lr, seed = job
    cfg = resolve(FIXED, {"method": method, "width": width, "weight_decay": weight_decay, "lr": lr, "seed": seed})
    run = build_run(cfg)
    metrics, _ = evaluate_model(run, fit(run, None, progress=False))
    return {k: metrics[k] for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    settings = list(itertools.product(WIDTHS, WEIGHT_DECAYS, LEARNING_RATES))
    jobs = [(m, *s, seed) for s in settings for m in METHODS for seed in SEEDS]
    results = dict(zip(jobs, run_jobs(one, jobs, args.jobs, progress=False)))
    rows: list[tuple[float, str]] = []
    for width, weight_decay, lr in settings:
        cells: list[str] = []
        for method in METHODS:
            runs = [results[(method, width, weight_decay, lr, seed)] for seed in SEEDS]
            cells += [f"{statistics.fmean(r[k] for r in runs):.3f}" for k in KEYS]
        both = statistics.fmean(results[(m, width, weight_decay, lr, s)]["val_nll"] for m in METHODS for s in SEEDS)
        rows.append((both, f"| {width} | {weight_decay} | {lr} | {both:.3f} | " + " | ".join(cells) + " |"))
    rows.sort()
    columns = [f"{m} {k}" for m in METHODS for k in KEYS]
    print(f"Regression sweep: {FIXED}, seeds {list(SEEDS)}; rows by mean validation NLL (both methods).\n")
    print("| width | weight_decay | lr | mean val_nll | " + " | ".join(columns) + " |")
    print("|---" * (4 + len(columns)) + "|")
    for _, line in rows:
        print(line)
    best: Any = rows[0][1].split("|")[1:4]
    print(f"\nChosen (lowest mean validation NLL): width {best[0].strip()}, weight_decay {best[1].strip()}, "
          f"lr {best[2].strip()}.")


if __name__ == "__main__":
    main()
