"""Training on two gloo processes (torchrun on CPU): identical ranks, agreement with one process, exact resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayessparse.distributed import World, check_same_masks, check_same_weights, part
from bayessparse.errors import RankMismatch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--data", "digits", "--model", "mlp", "--set", "update_interval=5", "--no-progress"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _mismatch_worker(rank: int, port: int, what: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
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
        dist.destroy_process_group()


@pytest.mark.parametrize("what", ["masks", "weights"])
def test_a_difference_between_ranks_stops_both(what):
    """One flipped mask position, or one weight one ulp apart, on one rank: every rank raises RankMismatch."""
    results = mp.Manager().dict()
    mp.spawn(_mismatch_worker, args=(_port(), what, results), nprocs=2, join=True)
    assert set(results) == {0, 1}
    expected = "after the mask update of step 7" if what == "masks" else "at the end of training"
    assert all("differ between the 2 processes" in r and expected in r for r in results.values()), dict(results)


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
    from bayessparse.study import default_spec, run_study

    with pytest.raises(ConfigError, match="--processes"):
        run_study(default_spec(quick=True), tmp_path / "study", processes=0)
    assert not (tmp_path / "study").exists()
