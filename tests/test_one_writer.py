"""One writer per output folder: while a process holds a folder, every other writer is refused.

The hold is an exclusive ``flock`` on ``FOLDER/.bayessparse.lock`` (:func:`bayessparse.folders.exclusive`),
taken by ``train``, ``ensemble``, ``imp`` and ``study`` after their inputs are validated. A second open of
the lock file conflicts even within one process, so a test can hold the folder itself; the CLI cases run
the real commands and check the exit code, the single stderr line and that the folder is left as it was.
"""

import subprocess
import sys
import textwrap

import pytest

from bayessparse.cli import main
from bayessparse.errors import ConfigError
from bayessparse.folders import LOCK, exclusive

COMMANDS = {
    "train": ["train", "--data", "digits", "--model", "mlp", "--method", "rigl", "--epochs", "1"],
    "ensemble": ["ensemble", "--data", "digits", "--model", "mlp", "--method", "rigl", "--kind", "dst",
                 "--members", "2", "--epochs", "1", "--dense-reference", "none"],
    "imp": ["imp", "--data", "digits", "--model", "mlp", "--epochs", "1", "--rounds", "1"],
}


def test_a_second_hold_on_a_folder_is_refused_and_the_first_release_frees_it(tmp_path):
    with exclusive(tmp_path / "out", "training"):
        with pytest.raises(ConfigError, match="another process is writing it"):
            with exclusive(tmp_path / "out", "training"):
                pass
    with exclusive(tmp_path / "out", "training"):  # released
        pass


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_on_a_held_folder_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "out"
    with exclusive(out, "other"):
        capsys.readouterr()
        code = main([*COMMANDS[command], "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "another process is writing it" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing else was written


def test_the_lock_is_released_when_its_process_dies(tmp_path):
    out = tmp_path / "out"
    holder = textwrap.dedent(f"""
        import os
        from bayessparse.folders import exclusive
        with exclusive({str(out)!r}, "training"):
            os._exit(0)  # dies holding the lock, without unwinding
    """)
    subprocess.run([sys.executable, "-c", holder], check=True, timeout=120)
    with exclusive(out, "training"):  # the kernel released the dead process's lock
        pass
