"""The examples in docs/ run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize("block", _python_blocks("custom_loop.md"))
def test_the_custom_loop_example_runs(block, capsys):
    exec(compile(block, "docs/custom_loop.md", "exec"), {"__name__": "docs_example"})  # it asserts its own result
    assert re.search(r"density 0\.(09\d|100), training accuracy", capsys.readouterr().out)
