"""Output flags never replace the files of the run a command reads, writes into an output folder hold its
lock, and a checkpoint that is a raw pickle is refused in exactly one line -- through the real command.

Every case runs ``python -m bayessparse.cli`` in a subprocess and checks what a user sees: the exit
code, a single stderr line naming the problem (no warning before it) and that the folders are as
they were.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bayessparse.folders import LOCK, MARKER, exclusive, own_file


def bayessparse(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "bayessparse.cli", *argv, "--no-progress"], capture_output=True,
                          text=True, timeout=300, env=env, **kwargs)


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and proc.stderr.startswith("bayessparse: error:"), \
        proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# ----------------------------------------------------------------------------- evaluate --arviz


@pytest.mark.parametrize("name, needle", [
    ("checkpoint.pt", "would overwrite checkpoint.pt"),
    ("metrics.json", "would overwrite metrics.json"),
    (LOCK, f"would overwrite {LOCK}"),
    ("reliability.nc", "its plot reliability.png would overwrite reliability.png"),  # the plot goes next to it
    ("posterior.png", "name a .nc file"),  # the plot would replace the draws
])
def test_evaluate_refuses_an_arviz_file_that_would_replace_a_file_of_the_run(run_copy, name, needle):
    before = snapshot(run_copy)
    assert_one_line_error(bayessparse("evaluate", str(run_copy), "--samples", "2", "--arviz", str(run_copy / name)),
                          "--arviz", needle)
    assert snapshot(run_copy) == before


def test_evaluate_holds_the_lock_of_another_output_folder_it_writes_arviz_into(run_copy, tmp_path, finished):
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    target = other / "posterior.nc"
    with exclusive(other, "hold"):
        before = snapshot(run_copy, other)
        assert_one_line_error(bayessparse("evaluate", str(run_copy), "--samples", "2", "--arviz", str(target)),
                              f"cannot evaluate into {other}", "another process is writing it")
        assert snapshot(run_copy, other) == before
    proc = bayessparse("evaluate", str(run_copy), "--samples", "2", "--arviz", str(target))
    assert proc.returncode == 0, proc.stderr
    assert target.is_file() and target.with_suffix(".png").is_file()
    assert {k: v for k, v in snapshot(other).items() if Path(k).name not in (target.name, "posterior.png")} \
        == {k: v for k, v in before.items() if k.startswith(str(other))}


def test_a_run_file_is_recognised_in_any_run_folder_and_other_folders_keep_theirs(run_copy, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert own_file(run_copy / "checkpoint.pt") == run_copy.resolve() / "checkpoint.pt"
    assert own_file(plain / "checkpoint.pt") is None  # a plain folder has no own files but a lock and marker
    assert own_file(plain / "checkpoint.pt", folder=plain) == plain.resolve() / "checkpoint.pt"
    assert own_file(plain / MARKER) == plain.resolve() / MARKER
    assert own_file(run_copy / "model.safetensors") is None
    from bayessparse import train
    from bayessparse.workflows import evaluate
    from bayessparse.baselines import gp_training

    written = {train.CHECKPOINT, train.CONFIG, train.METRICS, train.RELIABILITY, gp_training.CHECKPOINT,
               gp_training.CONFIG, gp_training.METRICS, gp_training.RELIABILITY, evaluate.EVAL,
               evaluate.CORRUPTIONS_PNG, evaluate.OOD_PNG, evaluate.RELIABILITY_TS_PNG}
    assert all(own_file(run_copy / name) == run_copy.resolve() / name for name in written)  # none is left out


# ----------------------------------------------------------------------------- raw pickles


class _Thing:
    """An object of a class of its own: what ``weights_only`` loading refuses."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def _pickle_protocol_4(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": _Thing()}, f, protocol=4)


def _torch_save_protocol_4(path: Path) -> None:
    torch.save({"model": _Thing()}, path, pickle_protocol=4)


def _legacy_torch_save(path: Path) -> None:
    torch.save({"model": _Thing()}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)


@pytest.mark.parametrize("write", [_pickle_protocol_4, _torch_save_protocol_4, _legacy_torch_save])
def test_a_raw_pickle_checkpoint_is_refused_in_exactly_one_line(run_copy, write):
    write(run_copy / "checkpoint.pt")
    before = snapshot(run_copy)
    proc = bayessparse("evaluate", str(run_copy))
    assert_one_line_error(proc, str(run_copy / "checkpoint.pt"))
    assert "pickle protocol" not in proc.stderr and "Warning" not in proc.stderr
    assert snapshot(run_copy) == before
