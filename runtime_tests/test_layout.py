"""The repository's shape (docs/architecture.md): snnc's modules import in one direction, the
top of compiler/ stays small, no module grows past 700 lines, subpackages say what they hold.

Static: the import graph is read from the source (ast), counting imports inside functions,
so an import moved into a function to dodge a cycle is still a cycle here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = {"snnc": ROOT / "compiler", "snnc.passes": ROOT / "passes"}


def _modules() -> dict[str, Path]:
    """Every module of snnc by dotted name (a package by its __init__.py)."""
    found = {}
    for package, top in TREES.items():
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The snnc modules `name` imports anywhere in its source. `from a import b` counts as
    importing a.b when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
            found |= subs
            if len(subs) < len(node.names) and base in modules:
                found.add(base)
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["snnc.pipeline"], "the import reader found nothing: it is broken"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_local_import_cycle(tmp_path):
    """The check above can fail: two modules importing each other, one inside a function."""
    (tmp_path / "a.py").write_text("from snnc import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from snnc import a\n")
    modules = {"snnc.a": tmp_path / "a.py", "snnc.b": tmp_path / "b.py"}
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == [["snnc.a", "snnc.b"]]


def test_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "compiler").glob("*.py"))
    assert len(top) <= 12, top


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_700_lines(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= 700, f"{name}: {lines} lines"


def test_subpackages_are_docstrings_only():
    """A package's __init__ says what it holds and imports nothing: importing one stage never
    loads another (snnc.ir.ops loads no torch)."""
    for init in sorted((ROOT / "compiler").rglob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        assert len(tree.body) == 1, f"{init} holds more than its docstring"
