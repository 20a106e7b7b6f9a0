"""The architecture of ``orchestrator/`` and ``methods/``, checked on their import graph.

The graph is read from source with :mod:`ast` (nothing is imported):

- every ``import`` counts, also one inside a function (a lazy import is still a dependency), except those under
  ``if TYPE_CHECKING:`` (annotations only);
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the project, else to ``pkg`` (its
  ``__init__``); relative imports are resolved; third-party and standard-library imports are ignored;
- importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit edges are not counted (a
  package's ``__init__`` is a module of its own, placed in the layer table like any other);
- dynamic imports (:class:`orchestrator.registry.Registry` loading a method, a benchmark or a backbone by name) are
  the plugin mechanism and are not edges.

Three rules: no import cycle, no private name imported from another module, and the layer table below.
"""
from __future__ import annotations

import ast
import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "methods")

# The layers, lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
# Patterns are fnmatch-style over dotted module names; a module takes the layer of the FIRST pattern that matches,
# so list a package's ``__init__`` (the exact name) before its ``pkg.*`` submodules.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations: errors, declared knobs, the plugin registry",
     ["orchestrator", "orchestrator.errors", "orchestrator.knobs", "orchestrator.registry"]),
    ("registries and recipes: the backbone registry, a training recipe",
     ["orchestrator.models", "orchestrator.recipe"]),
    ("OOD metrics", ["orchestrator.metrics"]),
    ("benchmarks", ["orchestrator.data", "orchestrator.data.*"]),
    ("networks and training", ["orchestrator.models.*", "orchestrator.training"]),
    ("OOD methods", ["methods", "methods.*"]),
    # The cache stores networks and the Outputs (methods.base) scorers read, so it sits above the methods.
    ("evaluation of a method on a benchmark (extraction, scoring); the cache of networks and outputs; what a "
     "trial is given",
     ["orchestrator.evaluation", "orchestrator.forward", "orchestrator.cache", "orchestrator.settings"]),
    ("one trial: train/fit, score, evaluate", ["orchestrator.trial"]),
    ("many post-hoc configurations on one prepared network", ["orchestrator.posthoc"]),
    ("MLflow tracking, figures, report", ["orchestrator.tracking", "orchestrator.tracking.*"]),
    ("search spaces", ["orchestrator.search_space"]),
    ("the Ray Tune/Optuna sweep", ["orchestrator.sweep", "orchestrator.sweep.*"]),
    ("studies: many sweeps and their leaderboard", ["orchestrator.benchmark", "orchestrator.benchmark.*"]),
    ("command line", ["orchestrator.cli", "orchestrator.__main__"]),
]


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported project module
    names: tuple[str, ...]  # the names taken by ``from target import ...`` (empty for ``import target``)
    where: str  # "path:line"


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    edges: list[Edge] = field(default_factory=list)

    def targets(self, module: str) -> dict[str, Edge]:
        """The modules ``module`` imports, each with the first import statement that does."""
        out: dict[str, Edge] = {}
        for e in self.edges:
            if e.source == module:
                out.setdefault(e.target, e)
        return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(node: ast.AST):
    """Every import statement under ``node``, at any depth, skipping ``if TYPE_CHECKING:`` bodies (not their else)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _statements_of(stmt)
            continue
        yield from _statements_of(child)


def _statements_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _statements(node)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` is, or the closest project package above it (``None`` outside the project)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> Graph:
    graph = Graph()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                graph.modules[_module_name(path)] = path
    for module, path in graph.modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(ROOT).as_posix()
        for stmt in _statements(tree):
            where = f"{rel}:{stmt.lineno}"
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    target = _owner(alias.name, graph.modules)
                    if target and target != module:
                        graph.edges.append(Edge(module, target, (), where))
                continue
            if stmt.level:  # relative: from the current package, up level - 1
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(stmt.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{stmt.module}" if stmt.module else base
            else:
                base = stmt.module or ""
            pkg_target = _owner(base, graph.modules)
            if pkg_target is None:
                continue
            for alias in stmt.names:
                sub = f"{base}.{alias.name}"
                if sub in graph.modules:  # ``from pkg import submodule``
                    if sub != module:
                        graph.edges.append(Edge(module, sub, (), where))
                elif pkg_target != module:
                    graph.edges.append(Edge(module, pkg_target, (alias.name,), where))
    return graph


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    raise LookupError(module)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def _cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.targets(v):
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
                components.append(sorted(comp))

    for v in sorted(graph.modules):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # shortest path from start back to start inside the component (breadth first)
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parents:
            nxt = []
            for v in frontier:
                for w in sorted(graph.targets(v)):
                    if w in members and w not in parents:
                        parents[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = parents[start]
        while v != start:
            path.append(v)
            v = parents[v]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def test_graph_sees_the_project(graph):
    """Guards the checks below against a graph that silently lost its modules or edges."""
    assert {"orchestrator.cli", "orchestrator.sweep.runner", "methods.base", "methods.energy"} <= set(graph.modules)
    assert "methods.base" in graph.targets("methods.energy")


def test_every_module_has_a_layer(graph):
    unplaced = []
    for module in sorted(graph.modules):
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert unplaced == [], f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


def test_no_import_cycle(graph):
    lines = []
    for cycle in _cycles(graph):
        steps = [f"{a} -> {b} ({graph.targets(a)[b].where})" for a, b in itertools.pairwise(cycle)]
        lines.append("cycle: " + " -> ".join(cycle) + "\n    " + "\n    ".join(steps))
    assert not lines, "import cycles among the project's modules:\n" + "\n".join(lines)


def test_no_private_name_imported_from_another_module(graph):
    bad = [f"{e.where}: {e.source} imports {name} from {e.target}"
           for e in graph.edges for name in e.names if name.startswith("_") and not name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_module_imports_a_higher_layer(graph):
    bad = []
    for e in graph.edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if dst > src:
            what = f"{', '.join(e.names)} from {e.target}" if e.names else e.target
            bad.append(f"{e.where}: {e.source} (layer {src}, {LAYERS[src][0]}) imports {what} "
                       f"(layer {dst}, {LAYERS[dst][0]})")
    assert not bad, "imports that go up the layer table:\n" + "\n".join(bad)
