"""Independent, resumable jobs run side by side in worker processes (compare and study use it).

A job is a picklable value and ``fn(job)`` a module-level function that does it, writing only
into the job's own folder (one writer per folder) and returning a small picklable result. Jobs
are independent and seeded by their own configuration, so the results do not depend on the
number of workers or on the order in which jobs finish.

With ``workers == 1`` the jobs run one after another in this process. Otherwise each worker is a
fresh ``spawn``-ed interpreter limited to one intra-op thread: the networks here are small, and
PyTorch threads that outnumber the cores spin instead of working.

A worker lives no longer than the process that started it (:func:`tie_to_parent`): even when that
process is killed outright (SIGKILL, which leaves it no chance to stop its workers), they end
instead of writing folders that no one holds any more.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

from tqdm.auto import tqdm

J = TypeVar("J")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _init_worker(parent: int | None = None) -> None:
    import torch

    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(1)
    if parent is not None:
        tie_to_parent(parent)


#: ``prctl`` option: the signal this process gets when the thread that created it ends (Linux)
PR_SET_PDEATHSIG = 1
#: how often the portable fallback looks for its parent, in seconds
PARENT_POLL_S = 0.5


def tie_to_parent(parent: int) -> None:
    """End this process with SIGTERM (its default action: at once) when process ``parent``, its parent, ends.

    On Linux the kernel sends it (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread looks every
    :data:`PARENT_POLL_S` seconds whether this process still has that parent. A parent that ended before
    the tie is noticed right after it: this process's parent is then another one.

    The kernel's signal is sent when the *thread* that created this process ends, not the process. A
    ``spawn`` pool starts its workers in ``submit`` (CPython since 3.9; read on 3.11), that is in the thread calling
    :func:`run_jobs`, which stays in it until the pool has shut down; the pool's manager thread starts
    workers only to replace ones that ended (``max_tasks_per_child``, not used here), and it too lives
    until the pool has shut down. So the signal comes when the workers' pool is gone, or the process is.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored SIGTERM would be inherited through exec
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    """Ask the kernel for ``signum`` when the parent ends; whether it was granted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float = PARENT_POLL_S) -> None:
    """The portable fallback: SIGTERM to this process once its parent is no longer ``parent``."""
    while os.getppid() == parent:
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int = 1, *, progress: bool = True,
             desc: str = "jobs") -> list[R]:
    """``[fn(job) for job in jobs]``, computed by ``workers`` processes; the first failure is re-raised.

    On a failure the jobs not yet started are cancelled; the finished ones have written their
    folders, so re-running the same jobs continues where they stopped. An interrupt (Ctrl-C, or
    SIGTERM turned into one by the CLI) stops the workers at once instead of waiting for their jobs,
    and a SIGKILL of this process ends them too (:func:`tie_to_parent`).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if workers == 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(fn(job))
            bar.update(1)
        bar.close()
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        try:
            _collect(futures, bar)
        except KeyboardInterrupt:
            _stop_workers(pool)
            raise
    bar.close()
    return [f.result() for f in futures]


def _collect(futures: list, bar: tqdm) -> None:
    """Wait for every future; on the first failure cancel the rest and re-raise it."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        bar.update(len(done))
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for f in pending:
                f.cancel()
            bar.close()
            raise failed.exception()  # type: ignore[misc]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (a job's half-done folder is resumed by the next run)."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public API before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
