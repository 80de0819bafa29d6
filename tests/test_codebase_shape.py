"""The shape of the code, checked: no import cycle in hilonas (lazy imports inside functions count too), the
declared import direction holds, and no function is longer than 60 lines without a reason written next to it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hilonas"
MAX_LINES = 60
LONG_OK = "# long:"  # a comment with this tag on the def line or the line above says why a function is longer


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every hilonas module ``name`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the submodule; "from mod import name" the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("module, forbidden", [
    ("hilonas.layers", ("hilonas.",)),  # layers import nothing else of hilonas
    ("hilonas.mixers", ("hilonas.",)),  # the registry is plain data
    ("hilonas.config", ("hilonas.models", "hilonas.layers", "hilonas.latency", "hilonas.search")),
    ("hilonas.latency", ("hilonas.search", "hilonas.cli", "hilonas.analysis")),
    ("hilonas.search", ("hilonas.cli",)),
])
def test_import_direction(module, forbidden):
    bad = sorted((name, dep) for name, deps in GRAPH.items() if name == module or name.startswith(module + ".")
                 for dep in deps if dep.startswith(forbidden) and not dep.startswith(module)
                 and dep not in ("hilonas.errors",))
    assert not bad


def test_no_function_over_60_lines_without_a_reason():
    long = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                length = node.end_lineno - start + 1
                context = " ".join(lines[max(0, node.lineno - 2): node.lineno])
                if length > MAX_LINES and LONG_OK not in context:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert not long
