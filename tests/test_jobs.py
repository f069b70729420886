"""run_jobs: results in job order, independent of the worker count; failures re-raised.

The job functions are module-level so that a ``spawn``-ed worker can import them (as ``tests.test_jobs``).
"""

import os
import time

import pytest
import torch

from bayessparse.config import resolve
from bayessparse.files import load_torch
from bayessparse.jobs import run_jobs

TINY = {"data": "mnist1d", "n_samples": 600, "model": "mlp", "epochs": 2, "batch_size": 64, "method": "rigl",
        "sparsity": 0.8, "update_interval": 5}


def square_after_delay(job):
    """Later jobs finish first (so results in job order are not results in finishing order)."""
    i, delay = job
    time.sleep(delay)
    return {"job": i, "square": i * i, "threads": torch.get_num_threads(), "pid": os.getpid()}


def fail_on_two(i):
    if i == 2:
        raise ValueError(f"job {i} is broken")
    return i


def train_job(job):
    from bayessparse.train import train

    overrides, out = job
    metrics = train(resolve(TINY, overrides), out, progress=False)
    return {k: v for k, v in metrics.items() if k not in ("train_seconds", "inference_ms_per_example")}  # times


JOBS = [(0, 0.3), (1, 0.2), (2, 0.1), (3, 0.0)]
EXPECTED = [{"job": i, "square": i * i} for i in range(4)]


def _values(results):
    return [{k: v for k, v in r.items() if k in ("job", "square")} for r in results]


def test_one_worker_runs_in_order_in_this_process():
    results = run_jobs(square_after_delay, JOBS, workers=1, progress=False)
    assert _values(results) == EXPECTED
    assert {r["pid"] for r in results} == {os.getpid()}


def test_two_workers_give_the_same_results_in_job_order():
    """(One pool for several checks: spawning workers costs seconds.)"""
    results = run_jobs(square_after_delay, JOBS, workers=2, progress=False)
    assert _values(results) == EXPECTED
    assert all(r["threads"] == 1 for r in results)  # each worker is limited to one intra-op thread
    pids = {r["pid"] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_empty_and_single_job():
    assert run_jobs(square_after_delay, [], workers=2, progress=False) == []
    single = run_jobs(square_after_delay, [(3, 0.0)], workers=2, progress=False)
    assert _values(single) == [EXPECTED[3]]


@pytest.mark.parametrize("workers", [1, 2])
def test_first_failure_is_reraised(workers):
    with pytest.raises(ValueError, match="job 2 is broken"):
        run_jobs(fail_on_two, [0, 1, 2, 3], workers=workers, progress=False)


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_below_one_rejected(workers):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_jobs(square_after_delay, JOBS, workers=workers, progress=False)


@pytest.mark.slow
def test_training_jobs_do_not_depend_on_the_worker_count(tmp_path):
    jobs = [({"seed": 0}, tmp_path / "w1" / "a"), ({"seed": 1, "method": "cigl"}, tmp_path / "w1" / "b")]
    one = run_jobs(train_job, jobs, workers=1, progress=False)  # also fills the data cache for the workers
    two = run_jobs(train_job, [(o, tmp_path / "w2" / p.name) for o, p in jobs], workers=2, progress=False)
    assert one == two
    assert one[0]["seed"] == 0 and one[1]["method"] == "cigl" and one[0]["accuracy"] != one[1]["accuracy"]
    for name in ("a", "b"):
        a, b = (load_torch(tmp_path / w / name / "checkpoint.pt") for w in ("w1", "w2"))
        for key in a["final_model"]:
            assert torch.equal(a["final_model"][key], b["final_model"][key]), (name, key)
