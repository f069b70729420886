"""The package's layering as docs/architecture.md draws it, read from the imports themselves.

Every ``import`` / ``from ... import`` statement of every module under ``bayessparse/`` (function-level ones
included) is parsed with :mod:`ast`; a module may import its own layer and the layers below, and the import
graph has no circles. The table of layers is read from docs/architecture.md, so the page and the code cannot
drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bayessparse"
TASK_NAMES = {"classification", "regression"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from a.b import c`` names ``a.b.c`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def layers() -> dict[str, int]:
    """``module prefix -> layer`` from the table under "## Layers" of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = {}
    for match in re.finditer(r"^\| (\d+) \| [^|]+ \| (.+) \|$", section, re.MULTILINE):
        for prefix in re.findall(r"`([\w.]+)`", match.group(2)):
            out["bayessparse" if prefix == "__init__" else f"bayessparse.{prefix}"] = int(match.group(1))
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    prefixes = [p for p in table if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return table[max(prefixes, key=len)]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_table_names_seven_layers_and_every_module_has_one():
    table = layers()
    assert sorted(set(table.values())) == list(range(7))
    for name in modules():
        layer_of(name, table)


def test_no_module_imports_a_higher_layer():
    table = layers()
    upward = [f"{src} (layer {layer_of(src, table)}) imports {dst} (layer {layer_of(dst, table)})"
              for src, dsts in graph().items() for dst in sorted(dsts) if layer_of(dst, table) > layer_of(src, table)]
    assert upward == []


def test_no_import_circles():
    assert circles(graph()) == []


def test_the_checks_see_a_violation():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert circles(edges) == [["a", "b", "c"]]
    table = layers()
    assert layer_of("bayessparse.workflows.study.report", table) == 5
    assert layer_of("bayessparse.train", table) == 4
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("bayessparse_other.x", table)


def compared_task_names(path: Path) -> list[int]:
    """Lines of ``path`` comparing a value with a task's name (``== "regression"``, ``!= "classification"``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in TASK_NAMES for o in operands):
                lines.append(node.lineno)
    return lines


def test_only_the_task_module_compares_task_names():
    offenders = {name: lines for name, path in modules().items() if name != "bayessparse.tasks"
                 if (lines := compared_task_names(path))}
    assert offenders == {}


def test_the_task_name_check_finds_a_comparison(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('def f(task):\n    return 1 if task == "regression" else 2\n')
    assert compared_task_names(source) == [2]
