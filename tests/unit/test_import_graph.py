"""The package's import graph, read from the source with `ast` (nothing is imported): no cycles
between modules, and `plots/` (figures) imports nothing from `experiments/` (figures draw from
tables only)."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "vlminterp"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The vlminterp modules `path` imports (at any depth of the file, lazy imports included); a
    `from package import name` counts as importing the submodule `package.name` when one exists,
    else the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_a_known_cycle_and_known_edges():
    graph = import_graph()
    assert "vlminterp.interventions.engine" in graph["vlminterp.interventions"]   # relative `from .engine import`
    assert "vlminterp.interventions.dense_knockout" in graph["vlminterp.interventions.knockout"]  # a lazy import
    assert "vlminterp.experiments.registry" in graph["vlminterp.config_checks"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    # A package's __init__ re-exporting its modules, which import siblings through the package, is
    # not a cycle here: only the modules, not __init__'s re-exports, are followed through packages.
    graph = {m: {d for d in deps if not _is_package_init(d) or not m.startswith(d + ".")}
             for m, deps in import_graph().items()}
    assert cycles(graph) == []


def test_figures_import_nothing_from_the_experiments():
    graph = import_graph()
    arrows = sorted((m, d) for m, deps in graph.items() if m.startswith("vlminterp.plots")
                    for d in deps if d.startswith("vlminterp.experiments"))
    assert arrows == []


def _is_package_init(module: str) -> bool:
    return (SRC / module.replace(".", "/") / "__init__.py").exists()
