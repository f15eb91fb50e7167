"""The package's import graph, read from the source with `ast` (nothing is imported): no cycles
between modules, no module importing a room above its own (LAYERS), and `plots/` (figures)
imports nothing from `experiments/` (figures draw from tables only)."""
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
    assert "vlminterp.workflow.registry" in graph["vlminterp.workflow.config_checks"]
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


# The rooms from the bottom up: a module may import modules of its own layer and of the layers
# below, never above. A module is in the layer of the longest name here that is it or a package
# above it ("vlminterp" itself: the package's __init__ only). A new room fails
# test_every_module_has_a_layer until it is placed here.
LAYERS = (
    ("foundation", ("vlminterp", "vlminterp.io", "vlminterp.stats", "vlminterp.specs", "vlminterp.batching",
                    "vlminterp.summaries", "vlminterp.command_line")),
    ("geometry", ("vlminterp.geometry",)),
    ("data", ("vlminterp.data",)),
    ("models", ("vlminterp.models",)),
    ("scoring", ("vlminterp.scoring",)),
    ("interventions", ("vlminterp.interventions",)),
    ("organism and test models", ("vlminterp.organism", "vlminterp.testing")),
    ("interactive use", ("vlminterp.api",)),
    ("figures", ("vlminterp.plots",)),
    ("what both papers' experiments use", ("vlminterp.experiments.shared",)),
    ("each paper's experiments", ("vlminterp.experiments.neo", "vlminterp.experiments.kaduri")),
    ("experiments across papers", ("vlminterp.experiments", "vlminterp.across_runs")),
    ("workflow glue", ("vlminterp.workflow", "vlminterp.artifacts")),
)
PAPERS = ("vlminterp.experiments.neo", "vlminterp.experiments.kaduri")


def layer_of(module: str) -> int | None:
    """Index in LAYERS of `module`'s layer; None when no layer names it or a package above it."""
    best = None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "vlminterp" and module.startswith(name + ".")):
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    return None if best is None else best[0]


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module's layer is above the importer's."""
    return sorted((m, d) for m, deps in graph.items() for d in deps
                  if layer_of(m) is not None and layer_of(d) is not None and layer_of(d) > layer_of(m))


def test_the_layers_place_known_modules_and_see_an_upward_arrow():
    assert layer_of("vlminterp") == 0 and layer_of("vlminterp.io") == 0
    assert layer_of("vlminterp.experiments.neo.ablation") > layer_of("vlminterp.experiments.shared.cells") \
        > layer_of("vlminterp.interventions.engine") > layer_of("vlminterp.models.adapters.base")
    assert layer_of("vlminterp.experiments.paper_comparison") > layer_of("vlminterp.experiments.kaduri.knockout")
    assert layer_of("vlminterp.elsewhere") is None
    assert upward_arrows({"vlminterp.io": {"vlminterp.workflow.runtime"},
                          "vlminterp.workflow.runtime": {"vlminterp.io"}}) == [("vlminterp.io", "vlminterp.workflow.runtime")]


def test_every_module_has_a_layer():
    assert sorted(m for m in import_graph() if layer_of(m) is None) == []


def test_no_module_imports_a_layer_above_its_own():
    assert upward_arrows(import_graph()) == []


def test_each_papers_experiments_import_nothing_of_the_others():
    graph = import_graph()
    arrows = sorted((m, d) for m, deps in graph.items() for d in deps for a in PAPERS for b in PAPERS
                    if a != b and (m == a or m.startswith(a + ".")) and (d == b or d.startswith(b + ".")))
    assert arrows == []


def test_geometry_holds_no_tables():
    """geometry/ maps masks to tokens; the tables built on it (the Neo cell table) are experiments'."""
    found = sorted(str(p.relative_to(SRC)) for p in (PACKAGE / "geometry").rglob("*.py")
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "pandas" in
                          [*(a.name for a in getattr(n, "names", [])), getattr(n, "module", None) or ""]
                          for n in ast.walk(ast.parse(p.read_text()))))
    assert found == []
