"""Training on two gloo processes (torchrun on CPU): identical ranks, agreement with one process, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayessparse.distributed import (World, broadcast_buffers, check_same_masks, check_same_weights, close,
                                     first_failure, part)
from bayessparse.errors import ConfigError, RankMismatch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--data", "digits", "--model", "mlp", "--set", "update_interval=5", "--no-progress"]


def _spawn(worker, tmp_path: Path, *args) -> dict:
    """``worker(rank, store, results, *args)`` on two spawned processes; their ``results``. The processes meet
    through a file store in ``tmp_path`` (a TCP port chosen here could be taken by another process first)."""
    results = mp.Manager().dict()
    mp.spawn(worker, args=(str(tmp_path / "store"), results, *args), nprocs=2, join=True)
    return dict(results)


def _join(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)


def _torchrun(*args: str, ranks: int = 2) -> list[str]:
    # --standalone: torchrun picks a free port itself (a port chosen here could be taken before it binds)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            "-m", "bayessparse", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_rank_parts_split_every_batch_into_contiguous_near_equal_pieces():
    for n in (1, 2, 7, 64, 65):
        for size in (1, 2, 3, 4):
            pieces = [part(10, 10 + n, World(rank, size)) for rank in range(size)]
            assert pieces[0][0] == 10 and pieces[-1][1] == 10 + n
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
            sizes = [hi - lo for lo, hi in pieces]
            assert max(sizes) - min(sizes) <= 1


def test_two_processes_train_the_single_process_run(tmp_path):
    """The same global batches on two ranks: the masks and weights of one process, up to float rounding."""
    two, one = tmp_path / "two", tmp_path / "one"
    args = [*RUN, "--method", "rigl", "--epochs", "3"]
    done = subprocess.run(_torchrun(*args, "--out", str(two)), capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rigl on digits") == 1  # rank 0 prints, the other rank is silent
    single = subprocess.run([sys.executable, "-m", "bayessparse", "train", *args, "--out", str(one)],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # every rank's final weights and masks, gathered at the end: the same on both ranks
    assert len(set(metrics["rank_weight_checksums"])) == 1 and len(metrics["rank_weight_checksums"]) == 2
    assert len(set(metrics["rank_mask_checksums"])) == 1 and len(metrics["rank_mask_checksums"]) == 2
    a, b = _final(two), _final(one)
    assert a["step"] == b["step"] and a["method"]["updater"] == b["method"]["updater"]
    masks_a, masks_b = a["method"]["masks"]["masks"], b["method"]["masks"]["masks"]
    same = sum(int((masks_a[k] == masks_b[k]).sum()) for k in masks_a) / sum(m.numel() for m in masks_a.values())
    assert same >= 0.999
    for name, value in b["final_model"].items():
        assert torch.allclose(a["final_model"][name], value, atol=1e-4), name
    assert not any(p.name.startswith("checkpoint.pt.") for p in two.iterdir())  # one writer, no stray temp files


@pytest.mark.parametrize("args", [
    ["--method", "cigl", "--set", "epochs=1", "--set", "n_samples=400"],  # the default data and model: cnn1d
    ["--method", "rigl", "--data", "digits", "--model", "resnet18", "--set", "width=0.0625", "--epochs", "1"],
], ids=["cnn1d", "resnet18"])
def test_networks_with_batchnorm_train_on_two_processes(tmp_path, args):
    """``torchrun --nproc_per_node=2 -m bayessparse train --method cigl --out runs/ddp`` at toy size: the last
    step leaves each rank its own BatchNorm statistics, and the run still ends with one model."""
    out = tmp_path / "ddp"
    done = subprocess.run(_torchrun(*args, "--out", str(out), "--no-progress"), capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["model"] == ("cnn1d" if "cigl" in args else "resnet18")
    assert len(set(metrics["rank_weight_checksums"])) == 1  # parameters and buffers alike


def _rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the training process of ``rank`` writing ``out`` (from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and b"torch.distributed.run" not in cmdline \
                and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_a_killed_rank_resumes_to_the_uninterrupted_run(tmp_path):
    args = [*RUN, "--method", "cigl", "--epochs", "40", "--set", "drop_rate=0.1"]
    whole = tmp_path / "whole"
    done = subprocess.run(_torchrun(*args, "--out", str(whole)), capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    checksums = json.loads((whole / "metrics.json").read_text())["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # CigL's shared Z keeps the ranks' weights equal

    killed = tmp_path / "killed"
    launcher = subprocess.Popen(_torchrun(*args, "--out", str(killed)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and launcher.poll() is None:
        checkpoint = killed / "checkpoint.pt"
        if checkpoint.exists():
            try:
                epoch = torch.load(checkpoint, weights_only=True)["epoch"]
            except Exception:  # replaced while being read: try again
                epoch = 0
            if epoch >= 3:
                victim = _rank_pid(killed, 1)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    break
        time.sleep(0.05)
    _, stderr = launcher.communicate(timeout=300)
    assert victim is not None, "the run ended before rank 1 could be killed"
    assert launcher.returncode != 0
    stopped_at = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 3 <= stopped_at < 40 and not (killed / "metrics.json").exists()

    resumed = subprocess.run(_torchrun(*args, "--out", str(killed), "--resume"), capture_output=True, text=True,
                             env=_env(), cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final(whole), _final(killed)
    for key in ("final_model", "model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert json.loads((killed / "metrics.json").read_text())["nll"] == json.loads((whole / "metrics.json").read_text())["nll"]


def _mismatch_worker(rank: int, store: str, results, what: str) -> None:
    _join(rank, store)
    try:
        masks = {"a.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b.weight": torch.ones(3)}
        model = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(model.weight, 0.5)
        torch.nn.init.constant_(model.bias, 0.0)
        world = World(rank, 2)
        check_same_masks(masks, 0, world, torch.device("cpu"))  # equal: passes
        check_same_weights(model, world, torch.device("cpu"), "now")
        if rank == 1:  # one position moved on one rank only
            if what == "masks":
                masks["a.weight"] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
            else:
                with torch.no_grad():
                    model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(1.0))
        try:
            if what == "masks":
                check_same_masks(masks, 7, world, torch.device("cpu"))
            else:
                check_same_weights(model, world, torch.device("cpu"), "at the end of training")
            results[rank] = "passed"
        except RankMismatch as exc:
            results[rank] = str(exc)
    finally:
        close()


@pytest.mark.parametrize("what", ["masks", "weights"])
def test_a_difference_between_ranks_stops_both(what, tmp_path):
    """One flipped mask position, or one weight one ulp apart, on one rank: every rank raises RankMismatch."""
    results = _spawn(_mismatch_worker, tmp_path, what)
    assert set(results) == {0, 1}
    expected = "after the mask update of step 7" if what == "masks" else "at the end of training"
    assert all("differ between the 2 processes" in r and expected in r for r in results.values()), results


def _batchnorm_worker(rank: int, store: str, results) -> None:
    _join(rank, store)
    try:
        torch.manual_seed(0)  # the same parameters on both ranks
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        model(torch.randn(8, 3) + rank)  # each rank's own part of a batch: its own running statistics
        before = {name: b.tolist() for name, b in model.named_buffers()}
        world = World(rank, 2)
        broadcast_buffers(model, world)
        check_same_weights(model, world, torch.device("cpu"), "at the end of training")  # passes
        results[rank] = {"before": before, "after": {name: b.tolist() for name, b in model.named_buffers()}}
    finally:
        close()


def test_the_end_of_training_takes_rank_0s_batchnorm_statistics(tmp_path):
    """After a step each rank holds the running statistics of its own part of the batch (DDP sends rank 0's
    only at the next forward): the end of training gives every rank rank 0's, and the parameters agree."""
    results = _spawn(_batchnorm_worker, tmp_path)
    zero, one = results[0], results[1]
    assert zero["before"]["1.running_mean"] != one["before"]["1.running_mean"]
    for name, value in zero["before"].items():
        assert zero["after"][name] == value and one["after"][name] == value, name


def _teardown_worker(rank: int, store: str, results, failing: bool) -> None:
    _join(rank, store)
    if rank == 0:
        time.sleep(5)  # rank 0 still writes the run folder
    start = time.monotonic()
    try:
        try:
            if failing:
                raise RankMismatch("stopped")
        finally:
            close()
    except RankMismatch:
        pass
    results[rank] = time.monotonic() - start


@pytest.mark.parametrize("failing", [False, True], ids=["finished", "failed"])
def test_a_finished_rank_leaves_the_process_group_only_with_the_others(tmp_path, failing):
    """A rank that leaves right after its last collective could reach interpreter shutdown while gloo's worker
    thread still releases that collective's tensors, and abort (SIGABRT): a finished command waits for every
    rank at a barrier before it leaves; a failing one does not wait for ranks it will never meet again."""
    seconds = _spawn(_teardown_worker, tmp_path, failing)
    assert seconds[1] < 2.5 if failing else seconds[1] > 2.5, seconds


def _release_worker(rank: int, store: str, results) -> None:
    import weakref

    from bayessparse.distributed import _lend

    _join(rank, store)
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # as in training: keeps the group alive
    if rank == 0:
        time.sleep(3)
        dist.all_reduce(torch.ones(4))
        close()
        return
    lent = torch.ones(4)
    dist.all_reduce(_lend(lent), async_op=True)  # still in gloo's hands: rank 0 joins it 3 s later
    released = weakref.ref(lent)
    del lent
    close()
    results[rank] = released() is None
    del net


def test_a_rank_leaves_only_once_the_backend_has_let_go_of_its_tensors(tmp_path):
    """Gloo's worker thread lets go of a collective's tensors after the caller has moved on, taking the GIL to
    do so; one that does it while the interpreter shuts down aborts the process. ``close`` returns only once
    the backend holds no tensor the process handed to it."""
    assert _spawn(_release_worker, tmp_path) == {1: True}


def _refusal_worker(rank: int, store: str, results) -> None:
    from bayessparse.config import resolve
    from bayessparse.train import build_run

    _join(rank, store)
    try:
        messages = {}
        for name, fields in {"pyro": {"engine": "pyro"}, "sparse": {"kernels": "sparse"}}.items():
            try:
                build_run(resolve({"data": "digits", "model": "mlp", "method": "rigl", **fields}))
                messages[name] = "built"
            except ConfigError as exc:
                messages[name] = str(exc)
        results[rank] = messages
    finally:
        close()


def test_a_run_on_several_processes_names_only_the_setting_it_cannot_take(tmp_path):
    messages = _spawn(_refusal_worker, tmp_path)[0]
    assert messages["pyro"] == "a run on 2 processes takes the plain engine, not engine 'pyro'"
    assert messages["sparse"] == "a run on 2 processes takes kernels 'dense', not kernels 'sparse'"


def test_compare_launches_its_runs_on_several_processes(tmp_path):
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "bayessparse", "compare", "--data", "digits", "--model", "mlp",
                           "--methods", "rigl", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--processes", "2",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "results.json").read_text())["runs"][0]
    assert record["world_size"] == 2 and record["method"] == "rigl"
    bad = subprocess.run([sys.executable, "-m", "bayessparse", "compare", "--processes", "0", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--processes" in bad.stderr and not (tmp_path / "bad").exists()


def test_the_study_checks_its_process_count_before_anything(tmp_path):
    from bayessparse.errors import ConfigError
    from bayessparse.workflows.study import default_spec, run_study

    with pytest.raises(ConfigError, match="--processes"):
        run_study(default_spec(quick=True), tmp_path / "study", processes=0)
    assert not (tmp_path / "study").exists()


def _finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "bayessparse", "train", *RUN, "--method", "dense", "--epochs", "1",
                           "--out", str(run)], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


# each command, and what it would write: a folder of its own, or eval.json in the run it evaluates
OTHERS = {
    "imp": (["imp", *RUN, "--epochs", "1", "--rounds", "1", "--out", "{tmp}/imp"], "imp"),
    "ensemble": (["ensemble", *RUN, "--kind", "dst", "--members", "2", "--epochs", "1", "--dense-reference", "none",
                  "--out", "{tmp}/ens"], "ens"),
    "evaluate": (["evaluate", "{tmp}/run", "--no-progress"], "run/eval.json"),
}


@pytest.mark.parametrize("command", sorted(OTHERS))
def test_commands_other_than_train_refuse_several_processes(tmp_path, command):
    """Under torchrun each process would do the whole job and all but one would find the folder locked:
    refused at once, in one line naming the command, by every process (exit code 2), nothing written."""
    if command == "evaluate":
        _finished_run(tmp_path)
    args, written = OTHERS[command]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one = subprocess.run([sys.executable, "-m", "bayessparse", *args], capture_output=True, text=True,
                         env={**_env(), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, cwd=ROOT, timeout=300)
    assert one.returncode == 2, one.stderr[-2000:]
    assert one.stderr.startswith(f"bayessparse: error: {command} runs in one process, not under torchrun on 2")
    assert one.stderr.count("\n") == 1 and "train" in one.stderr
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "bayessparse", *args], capture_output=True, text=True, env=_env(), cwd=ROOT,
                              timeout=300)
    assert launched.returncode != 0 and f"{command} runs in one process" in launched.stderr, launched.stderr[-2000:]
    assert not (tmp_path / written).exists()


def test_a_failed_launch_names_the_rank_that_failed_first(tmp_path):
    """When one rank fails, torchrun terminates the others, whose last line is ``bayessparse: terminated``:
    the failure reported is the first rank's own."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "def stop(*_):\n"
        "    print('bayessparse: terminated; continue with --resume', file=sys.stderr, flush=True)\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "if os.environ['RANK'] == '1':\n"
        "    print('bayessparse: error: what went wrong on rank 1', file=sys.stderr, flush=True)\n"
        "    sys.exit(2)\n"
        "time.sleep(120)\n")
    logs = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--log-dir", str(logs), "--redirects", "2", str(script)], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert done.returncode != 0
    assert first_failure(logs, done.stderr) == "rank 1: error: what went wrong on rank 1"
    # a C++ abort's own words, ahead of a rank torchrun terminated afterwards
    for rank, text in ((1, "terminate called after throwing an instance of 'gloo::IoException'\n"
                           "  what():  [pair.cc:598] Connection closed by peer [127.0.0.1]:4242\n"),
                       (0, "bayessparse: terminated; continue with --resume\n")):
        log = tmp_path / "abort" / "run_x" / "attempt_0" / str(rank) / "stderr.log"
        log.parent.mkdir(parents=True)
        log.write_text(text)
    assert first_failure(tmp_path / "abort") == "rank 1: [pair.cc:598] Connection closed by peer [127.0.0.1]:4242"


def test_a_failed_launch_inside_compare_is_one_line(tmp_path):
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "bayessparse", "compare", *RUN, "--methods", "rigl", "--epochs", "1",
                           "--seeds", "1", "--jobs", "1", "--processes", "2", "--engine", "pyro", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"bayessparse: distributed run stopped: the 2-process training of {out}")
    assert done.stderr.rstrip().endswith(": error: a run on 2 processes takes the plain engine, not engine 'pyro'")
