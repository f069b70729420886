"""run_jobs: results in job order, independent of the worker count; failures re-raised.

The job functions are module-level so that a ``spawn``-ed worker can import them (as ``tests.test_jobs``).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bayessparse.config import resolve
from bayessparse.files import load_torch
from bayessparse.jobs import run_jobs, tie_to_parent

ROOT = Path(__file__).resolve().parents[1]

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


def sleep_and_record_pid(job):
    """A long job that says which process runs it."""
    folder, i = job
    (Path(folder) / f"{i}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return i


def tie_to_a_wrong_parent(parent):
    """In a fresh process: tied to a process that is not its parent (as if that one had already ended)."""
    tie_to_parent(parent)
    time.sleep(60)


def watch_a_wrong_parent(parent):
    """The portable fallback alone, in a fresh process, watching for a parent it does not have."""
    from bayessparse.jobs import _watch_parent

    _watch_parent(parent, 0.05)
    time.sleep(60)


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


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead and waiting for its reaper, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: os.kill's answer


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """SIGKILL leaves the parent no chance to stop its workers: they notice on their own and end."""
    code = ("from bayessparse.jobs import run_jobs\n"
            "from tests.test_jobs import sleep_and_record_pid\n"
            f"run_jobs(sleep_and_record_pid, [({str(tmp_path)!r}, i) for i in range(2)], workers=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    workers: list[int] = []
    try:
        assert _wait_until(lambda: len(list(tmp_path.glob("*.pid"))) == 2, 120), "the workers did not start"
        time.sleep(0.2)  # both pid files written
        workers = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert parent.pid not in workers and all(_running(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_until(lambda: not any(_running(pid) for pid in workers), 5), \
            f"workers still running after their parent was killed: {[p for p in workers if _running(p)]}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # the test's own (grand)children, if the check above failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("target", [tie_to_a_wrong_parent, watch_a_wrong_parent])
def test_a_process_whose_parent_is_not_the_one_it_was_tied_to_ends_at_once(target):
    """The race (a parent that ended between the worker's start and its tie is noticed right after the tie),
    and the portable fallback's polling."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    wrong = context.Process(target=target, args=(os.getpid() + 999_999,))
    wrong.start()
    wrong.join(timeout=60)
    try:
        assert wrong.exitcode == -signal.SIGTERM
    finally:
        if wrong.is_alive():
            wrong.kill()
            wrong.join()
