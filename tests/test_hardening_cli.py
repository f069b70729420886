"""Bad output paths, foreign checkpoints, killed writers and late validation, through the real command.

Every case runs ``python -m bayessparse.cli`` in a subprocess and checks what a user sees: the exit
code, a single stderr line naming the problem (no traceback, no warning before it) and, for refused
input, that the folders involved are exactly as they were.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from bayessparse.config import resolve
from bayessparse.workflows.ensembles import ensemble
from bayessparse.files import TEMPORARY, load_torch, save_torch
from bayessparse.folders import MARKER
from bayessparse.workflows.imp import IMPSettings, imp
from bayessparse.train import train

RUN = ["--data", "digits", "--model", "mlp", "--epochs", "1"]
FAST = {"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1}


def bayessparse(*argv: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "bayessparse.cli", *argv, "--no-progress"] if argv[0] != "bench"
                          else [sys.executable, "-m", "bayessparse.cli", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def snapshot(*paths: Path) -> dict[str, bytes | None]:
    """Every file under ``paths`` with its bytes (a missing path maps to None)."""
    files: dict[str, bytes | None] = {}
    for path in paths:
        if path.is_file():
            files[str(path)] = path.read_bytes()
        elif path.is_dir():
            files.update({str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()})
        else:
            files[str(path)] = None
    return files


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("bayessparse: error:"), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp") if TEMPORARY.fullmatch(p.name)]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dense") / "run"
    train(resolve({**FAST, "method": "dense"}), out, progress=False)
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    return copy


# ----------------------------------------------------------------------------- unusable output paths

OUT_COMMANDS = {
    "train": ["train", *RUN],
    "ensemble": ["ensemble", *RUN, "--kind", "dst", "--members", "2", "--dense-reference", "none"],
    "imp": ["imp", *RUN, "--rounds", "1"],
    "compare": ["compare", *RUN, "--methods", "dense", "--seeds", "1", "--jobs", "1"],
}


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_an_output_path_that_is_a_file_or_lies_under_one_is_refused(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    for out, needle in ((blocker, "is a file, not a folder"), (blocker / "sub", f"{blocker} is a file")):
        proc = bayessparse(*OUT_COMMANDS[command], "--out", str(out))
        assert_one_line_error(proc, needle)
        assert snapshot(tmp_path) == {str(blocker): b"mine\n"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        proc = bayessparse(*OUT_COMMANDS["train"], "--out", str(parent / "run"))
    finally:
        parent.chmod(0o755)
    assert_one_line_error(proc, "cannot write to", "not writable")
    assert list(parent.iterdir()) == []


def _limit_file_size(limit: int):
    def limit_in_child() -> None:  # a full disk, as far as the writer can tell: writes fail past `limit`
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


def test_a_write_that_fails_for_lack_of_space_names_the_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "run"
    proc = bayessparse(*OUT_COMMANDS["train"], "--out", str(out), preexec_fn=_limit_file_size(64 * 1024))
    assert_one_line_error(proc, f"cannot write to {out / 'checkpoint.pt'}: File too large")
    assert temporaries(out) == [] and not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- divergence

def test_weights_that_overflow_on_the_last_step_of_an_epoch_are_a_divergence(tmp_path):
    out = tmp_path / "run"
    # one step per epoch: the huge step leaves finite weights whose outputs overflow
    proc = bayessparse("train", *RUN, "--lr", "1e30", "--batch-size", "4000", "--out", str(out))
    assert proc.returncode == 1
    assert proc.stderr == ("bayessparse: training diverged: the network's outputs became non-finite at epoch 1, "
                           "step 1; nothing was saved\n")


def test_a_diverged_pyro_run_prints_only_the_divergence_line(tmp_path):
    proc = bayessparse("train", *RUN, "--method", "vcigl", "--lr", "1e30", "--out", str(tmp_path / "run"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("bayessparse: training diverged: loss became nan")


# ----------------------------------------------------------------------------- foreign checkpoints

@pytest.mark.parametrize("content", ["tensor", "empty", "partial"])
def test_a_loadable_but_foreign_checkpoint_is_one_line_for_evaluate_and_resume(run_copy, content):
    state = load_torch(run_copy / "checkpoint.pt")
    foreign = {"tensor": torch.zeros(3), "empty": {}, "partial": {"config": state["config"]}}[content]
    save_torch(run_copy / "checkpoint.pt", foreign)
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("evaluate", str(run_copy)), "is not a bayessparse run checkpoint")
    assert_one_line_error(bayessparse("train", *RUN, "--method", "rigl", "--out", str(run_copy), "--resume"),
                          "is not a bayessparse run checkpoint")
    assert snapshot(run_copy) == before


def test_another_runs_checkpoint_is_caught_by_its_config(run_copy, dense_run):
    shutil.copy(dense_run / "checkpoint.pt", run_copy / "checkpoint.pt")
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("evaluate", str(run_copy)), "method='rigl' differs", "checkpoint.pt ('dense')")
    assert snapshot(run_copy) == before


def test_tensors_that_do_not_fit_the_model_are_one_line(run_copy):
    state = load_torch(run_copy / "checkpoint.pt")
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(2, 2)
    save_torch(run_copy / "checkpoint.pt", state)
    assert_one_line_error(bayessparse("evaluate", str(run_copy)), "does not fit the run it belongs to")


def test_evaluate_refuses_a_config_yaml_edited_after_training(run_copy):
    """An edited data_seed would fit temperature scaling on the run's own training examples."""
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data_seed"] = config["data_seed"] + 1
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("evaluate", str(run_copy)), "data_seed=1 differs", "(0)")
    assert snapshot(run_copy) == before


def test_a_resume_without_config_yaml_says_so(run_copy):
    (run_copy / "config.yaml").unlink()
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("train", *RUN, "--out", str(run_copy), "--resume"),
                          "config.yaml is missing, so it cannot be resumed")
    assert snapshot(run_copy) == before


# ----------------------------------------------------------------------------- folder kinds

@pytest.fixture(scope="module")
def imp_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imp") / "sweep"
    imp(resolve({**FAST, "method": "dense"}), out, IMPSettings(rounds=1), progress=False, echo=False)
    return out


@pytest.fixture(scope="module")
def edst_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edst") / "ens"
    ensemble(resolve({**FAST, "epochs": 2}), "edst", 2, out, explore_epochs=1, refine_epochs=1,
             dense_reference="none", progress=False)
    return out


def test_a_run_is_never_trained_into_an_imp_sweep_or_an_ensemble(imp_folder, edst_folder):
    for folder, held in ((imp_folder, "an IMP sweep"), (edst_folder, "an ensemble")):
        before = snapshot(folder)
        for resume in ([], ["--resume"]):
            proc = bayessparse("train", *RUN, "--out", str(folder), *resume)
            assert_one_line_error(proc, f"holds {held}, not a training run")
        assert_one_line_error(bayessparse("evaluate", str(folder)), f"holds {held}, not a training run")
        assert snapshot(folder) == before


def test_folders_without_a_marker_are_recognised_by_their_files(imp_folder, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(imp_folder, legacy)
    (legacy / MARKER).unlink()
    assert_one_line_error(bayessparse("train", *RUN, "--out", str(legacy)), "holds an IMP sweep")
    assert_one_line_error(bayessparse("ensemble", *RUN, "--kind", "dst", "--out", str(legacy)), "holds an IMP sweep")


def test_an_ensemble_member_is_a_run_folder(edst_folder):
    assert (edst_folder / "member-0" / MARKER).read_text() == "run\n"


def test_a_damaged_ensemble_spec_is_one_line(edst_folder, tmp_path):
    copy = tmp_path / "ens"
    shutil.copytree(edst_folder, copy)
    (copy / "ensemble.yaml").write_text("kind: [edst\n")
    before = snapshot(copy)
    proc = bayessparse("ensemble", *RUN, "--method", "rigl", "--epochs", "2", "--kind", "edst", "--members", "2", "--out", str(copy),
                       "--explore-epochs", "1", "--refine-epochs", "1", "--dense-reference", "none")
    assert_one_line_error(proc, "ensemble.yaml is damaged")
    assert snapshot(copy) == before


def test_a_foreign_imp_state_is_one_line(imp_folder, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(imp_folder, copy)
    save_torch(copy / "imp_state.pt", {"version": 1})
    before = snapshot(copy)
    proc = bayessparse("imp", *RUN, "--rounds", "2", "--out", str(copy), "--resume")
    assert_one_line_error(proc, "is not an IMP sweep state")
    assert snapshot(copy) == before


# ----------------------------------------------------------------------------- late validation

def test_ensemble_checks_its_dense_reference_before_training(tmp_path, finished):
    out = tmp_path / "ens"
    for reference, needle in ((tmp_path / "nowhere", "is not a finished run folder"),
                              (finished, "is not a dense run of this config (method 'rigl'")):
        started = time.perf_counter()
        proc = bayessparse("ensemble", *RUN, "--kind", "dst", "--members", "2", "--out", str(out),
                           "--dense-reference", str(reference))
        assert_one_line_error(proc, needle)
        assert not out.exists() and time.perf_counter() - started < 60


@pytest.mark.parametrize("flags,needle", [
    (["--out", "."], "is a folder; name a file"),
    (["--out", "no/such/folder/bench.json"], "folder no/such/folder does not exist"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--setups", ""], "--setups names no setup"),
])
def test_bench_validates_its_flags_before_measuring(tmp_path, flags, needle):
    proc = bayessparse("bench", "--setups", "cnn1d", "--rounds", "1", "--steps", "1", *flags, cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags,needle", [
    (["--bins", "100000"], "--bins must be an integer in [1, 1000]"),
    (["--samples", "2", "--arviz", "{run}"], "is a folder; name a file"),
])
def test_evaluate_validates_its_flags_before_work(run_copy, flags, needle):
    before = snapshot(run_copy)
    proc = bayessparse("evaluate", str(run_copy), *[f.format(run=run_copy) for f in flags])
    assert_one_line_error(proc, needle)
    assert snapshot(run_copy) == before


# ----------------------------------------------------------------------------- killed writers

def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_writer_removes(run_copy):
    killer = textwrap.dedent(f"""
        import os, signal
        from bayessparse.files import write_atomic

        def half_then_die(tmp):
            tmp.write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)

        write_atomic({str(run_copy / "metrics.json")!r}, half_then_die)
    """)
    proc = subprocess.run([sys.executable, "-c", killer], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert len(temporaries(run_copy)) == 1  # what SIGKILL leaves behind
    metrics = (run_copy / "metrics.json").read_bytes()
    assert bayessparse("evaluate", str(run_copy), "--ood", "none", "--no-temperature").returncode == 0
    assert temporaries(run_copy) == []
    assert (run_copy / "metrics.json").read_bytes() == metrics  # the target itself was never touched


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "bayessparse.cli", "train", *RUN, "--epochs", "100000", "--out", str(out),
            "--no-progress"]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert stderr == "bayessparse: terminated; continue with --resume\n"
    assert temporaries(out) == []
    assert load_torch(out / "checkpoint.pt")["epoch"] >= 1


def test_an_interrupted_evaluate_does_not_suggest_resume(monkeypatch, capsys, run_copy):
    import bayessparse.workflows.evaluate
    from bayessparse.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bayessparse.workflows.evaluate, "evaluate_run", interrupted)
    assert main(["evaluate", str(run_copy)]) == 130
    assert capsys.readouterr().err == "bayessparse: interrupted\n"


# ----------------------------------------------------------------------------- the library side

def test_check_writable_refuses_a_folder_the_process_may_not_write(tmp_path, monkeypatch):
    """The read-only case on any machine (root writes everywhere, so the CLI case above skips there)."""
    from bayessparse.errors import ConfigError
    from bayessparse.folders import check_writable

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=f"cannot write to {tmp_path / 'a' / 'b'}: {tmp_path} is not writable"):
        check_writable(tmp_path / "a" / "b")


def test_an_atomic_write_flushes_the_file_and_its_folder(tmp_path, monkeypatch):
    from bayessparse.files import write_text

    flushed = []
    real_fsync = os.fsync

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text(tmp_path / "a.txt", "x")
    assert len(flushed) == 2
    if isinstance(flushed[0], str):
        assert TEMPORARY.fullmatch(Path(flushed[0]).name) and flushed[1] == str(tmp_path)


def test_train_refuses_a_plain_mapping_with_a_clear_error(tmp_path):
    from bayessparse.errors import ConfigError

    with pytest.raises(ConfigError, match="train expects a TrainConfig"):
        train(FAST, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- input errors, once each as a process

@pytest.mark.parametrize("argv,needle", [
    (["train", *RUN, "--seed", "-1"], "seed"),
    (["train", *RUN, "--lr", "1e39"], "lr"),
    (["train", *RUN, "--set", "step_gamma=-0.1"], "step_gamma"),
    (["compare", *RUN, "--seeds", ",,,", "--methods", "dense"], "--seeds names no seed"),
    (["compare", *RUN, "--methods", ","], "--methods names no method"),
    (["train", *RUN, "--config", "{latin1}"], "is not UTF-8 text"),
    (["train", *RUN, "--resume"], "nothing to resume"),
])
def test_bad_input_in_a_process_is_one_line_and_creates_nothing(tmp_path, argv, needle):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"lr: 0.1\n# \xff\xfe\n")
    out = tmp_path / "out"
    proc = bayessparse(*[a.format(latin1=latin1) for a in argv], "--out", str(out))
    assert_one_line_error(proc, needle)
    assert not out.exists()


def test_an_empty_out_is_a_usage_error(tmp_path):
    proc = bayessparse("train", *RUN, "--out", "", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "must name a folder" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_poisoned_checkpoint_never_runs_in_the_command(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    state = load_torch(run_copy / "checkpoint.pt")
    state["hook"] = _Payload(marker)
    torch.save(state, run_copy / "checkpoint.pt")
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("evaluate", str(run_copy)), "refusing to load")
    assert_one_line_error(bayessparse("train", "--out", str(run_copy), "--resume"), "refusing to load")
    assert not marker.exists() and snapshot(run_copy) == before


def test_a_second_writer_process_is_refused(tmp_path):
    from bayessparse.folders import exclusive

    out = tmp_path / "run"
    with exclusive(out, "hold"):
        before = snapshot(out)
        assert_one_line_error(bayessparse("train", *RUN, "--out", str(out)), "another process is writing it")
        assert snapshot(out) == before


class _Payload:
    """Unpickling this calls ``os.makedirs(marker)``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)
