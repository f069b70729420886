"""The README's commands run as written.

Every command of the README's shell blocks (the set-up lines and the command-line tour) runs, in the
README's order, in a scratch working directory that holds the repository's ``experiments/`` and an
empty ``docs/``, under ``BAYESSPARSE_SMOKE=1`` (:mod:`bayessparse.smoke`: fewer epochs, seeds and
examples, nothing else changed). Each must exit 0 and write the files it claims. A command added to
the README without an entry in :data:`WRITES` fails :func:`test_every_command_is_checked`, so the
check grows with the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL = 'pip install -e ".[test]" && '
RUN_FILES = ("config.yaml", "metrics.json", "checkpoint.pt", "reliability.png")

#: What each command writes, keyed by the command's first words (longest match wins); ``{out}`` is its --out.
WRITES: dict[str, tuple[str, ...]] = {
    "bayessparse compare": ("{out}/results.json", "{out}/table.md", "{out}/reliability-overlay.png"),
    "bayessparse train": tuple(f"{{out}}/{name}" for name in RUN_FILES),
    "bayessparse evaluate": ("{run}/eval.json",),
    "bayessparse ensemble": ("{out}/ensemble.json",),
    "bayessparse imp": ("{out}/imp.json", "{out}/double_descent.png"),
    "bayessparse export": ("{out}",),
    "bayessparse bench": (),
    "bayessparse study": ("{out}/results.md", "{out}/results.json"),
    "bayessparse benchmark": ("{out}/report.md", "{out}/timing.json"),
    "torchrun": tuple(f"{{out}}/{name}" for name in RUN_FILES),
}
DEFAULT_OUT = {"bayessparse compare": "runs/compare", "bayessparse study --quick": "runs/study-quick",
               "bayessparse study": "runs/study", "bayessparse benchmark uci --quick": "runs/uci-quick",
               "bayessparse benchmark uci": "runs/uci"}


def readme_commands() -> list[str]:
    """The shell commands of the README's ``bash`` blocks: continuation lines joined, comments dropped,
    the install step (done already) and the test command (this suite) left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            line = line.removeprefix(INSTALL).strip()
            if line != "pytest":
                commands.append(line)
    return commands


def _kind(command: str) -> str:
    matches = [key for key in WRITES if command.startswith(key)]
    return max(matches, key=len) if matches else ""


def _flag(command: str, flag: str) -> str | None:
    found = re.search(rf"{flag}[ =](\S+)", command)
    return found.group(1) if found else None


def claimed_files(command: str) -> list[str]:
    """The files ``command`` claims to write, relative to the working directory."""
    kind = _kind(command)
    out = _flag(command, "--out") or next((DEFAULT_OUT[k] for k in sorted(DEFAULT_OUT, key=len, reverse=True)
                                           if command.startswith(k)), "")
    if kind == "bayessparse evaluate":
        out = ""
    words = command.split()
    run = words[2] if kind in ("bayessparse evaluate", "bayessparse export") else ""
    files = [pattern.format(out=out, run=run) for pattern in WRITES[kind]]
    if kind == "bayessparse evaluate" and _flag(command, "--arviz"):
        files.append(_flag(command, "--arviz"))
    if kind == "bayessparse study" and _flag(command, "--docs"):
        files.append(f"{_flag(command, '--docs')}/results.md")
    return files


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """Run every README command in order in one scratch folder; ``{command: (returncode, output, seconds)}``."""
    cwd = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "experiments", cwd / "experiments")
    (cwd / "docs").mkdir()
    env = {**os.environ, "BAYESSPARSE_SMOKE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    results = {}
    for command in readme_commands():
        start = time.perf_counter()
        done = subprocess.run(command + " --no-progress" if _takes_no_progress(command) else command, shell=True,
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        results[command] = (done.returncode, done.stdout[-3000:] + done.stderr[-3000:], seconds, cwd)
        print(f"{seconds:7.1f} s  rc {done.returncode}  {command}", flush=True)  # shown with pytest -s
    return results


def _takes_no_progress(command: str) -> bool:
    return any(command.startswith(k) for k in ("bayessparse train", "bayessparse compare", "bayessparse evaluate",
                                                "bayessparse study", "bayessparse imp", "bayessparse ensemble",
                                                "bayessparse benchmark"))


def test_every_command_is_checked():
    commands = readme_commands()
    assert len(commands) >= 20  # the set-up command and the tour
    assert commands[0] == "bayessparse compare"
    assert [c for c in commands if not _kind(c)] == []


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_the_readme_command_runs_as_written(tour, command):
    returncode, output, seconds, cwd = tour[command]
    assert returncode == 0, f"{command!r} exited {returncode}:\n{output}"
    missing = [f for f in claimed_files(command) if not (cwd / f).exists()]
    assert not missing, f"{command!r} did not write {missing}:\n{output}"
