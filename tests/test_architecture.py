"""The import structure of ``lib/anatomark`` (docs/ARCHITECTURE.md): one-way arrows, no cycle, plug-in families.

Every ``import`` counts, the ones inside functions included (they are how cycles hide).
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (LIB / "anatomark").rglob("*.py"):
        parts = list(p.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(name: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for a in node.names:
        full = f"{base}.{a.name}"
        out.append(full if full in mods else base)
    return [m for m in out if m in mods]


def import_graph() -> dict[str, set[str]]:
    """Module -> the anatomark modules it imports (anywhere in the file)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_targets(name, path, node, mods))
        # importing a.b.c runs a/__init__ and a/b/__init__ too, except the packages the importer is inside (they
        # are already being initialised when one of their own modules runs)
        own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
        for d in list(deps):
            parts = d.split(".")
            parents = {".".join(parts[:i]) for i in range(1, len(parts))}
            deps.update(p for p in parents if p in mods and p not in own)
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_a_cycle_is_found():  # the check itself can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_never_imports_a_family():
    graph = import_graph()
    core = ["anatomark.model", "anatomark.training", "anatomark.family", "anatomark.recipe", "anatomark.config"]
    for m in core:
        assert not any(d.startswith("anatomark.families") for d in _reachable(graph, m)), m


def test_measurements_import_no_network_code():
    graph = import_graph()
    banned = ("anatomark.networks", "anatomark.families", "anatomark.model", "anatomark.training", "anatomark.losses")
    for m in graph:
        if m.startswith("anatomark.measurements"):
            bad = sorted(d for d in _reachable(graph, m) if d.startswith(banned))
            assert not bad, f"{m} reaches {bad}"
