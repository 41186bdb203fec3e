"""The import graph of the `saliency` package runs one way: no cycles, no upward imports.

Every module is parsed (not imported), and every `import saliency...` / `from saliency... import`
counts, including those inside functions and under TYPE_CHECKING: a lazy import is still a
dependency. Modules are grouped into units (a subpackage, or a top-level module) and the units
into layers, bottom first; a unit may import its own layer and those below, never above, and
the units must not form a cycle. docs/layout.md explains the layers.

A new subpackage or top-level module fails `test_every_unit_has_a_layer` until it is given one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "service" / "saliency"
GENERATED = ("v1", "torchserve_api")  # protoc output: imports only protobuf and itself

# Bottom first. Imports may go down or sideways (same layer), never up.
LAYERS: list[set[str]] = [
    {"saliency", "errors", "v1", "torchserve_api"},  # the package root, typed errors, stubs
    {"wire"},  # the protobuf codec without torch: the client's and the servers' vocabulary
    {"instrument"},  # torch module instrumentation: hooks, backward rules, op tables
    {"models"},  # model configs, building, loading, the load-time probe
    {"attribution", "render", "imaging"},  # the engine (pure torch), pictures, decoding
    {"quality"},  # faithfulness metrics, sanity checks, reports
    {"runtime"},  # the embedded backend: config, workers, admission, policy, metrics, tracing
    {"codec"},  # the server-side protobuf codec: validation into domain types and back
    {"api", "torchserve", "http"},  # serving: gRPC and HTTP front ends, the TorchServe backend
    {"server"},  # the composition root: builds the backend, starts gRPC, HTTP and metrics
    {"client"},  # the Python client (wire only)
    {"reports"},  # `saliency report sanity|roar` and the load test's chart: off the serving path
    {"cli_common", "cli_inspect", "cli_archive", "cli_remote", "cli", "loadtest"},  # commands
]

# Edges allowed although they go up or close a cycle, each with why and what would remove it.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] not in GENERATED
    }


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The saliency modules `path` imports (submodules named in `from X import y` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "saliency"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "saliency":
                continue
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (from saliency... import)")
    return found


def unit_edges() -> dict[tuple[str, str], set[str]]:
    """(importing unit, imported unit) -> the importing modules, for units that differ."""
    modules = _modules()
    known = set(modules) | {f"saliency.{g}" for g in GENERATED}
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, known):
            if _unit(name) != _unit(target):
                edges[(_unit(name), _unit(target))].add(name)
    return edges


def _level(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {b for _, b in edges}):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} | set(GENERATED)
    placed = set().union(*LAYERS)
    assert units - placed == set(), "give these a layer in LAYERS (and docs/layout.md)"
    assert placed - units == set(), "these units no longer exist"


def test_no_upward_imports():
    upward = {
        edge: sorted(modules)
        for edge, modules in unit_edges().items()
        if _level(edge[1]) > _level(edge[0]) and edge not in KNOWN_EXCEPTIONS
    }
    assert upward == {}, "imports from a higher layer (importing unit, imported unit): importing modules"


def test_no_cycles_between_units():
    edges = {edge for edge in unit_edges() if edge not in KNOWN_EXCEPTIONS}
    assert _cycles(edges) == []


def test_the_known_exceptions_still_exist():
    """An exception whose import is gone must leave the list, so the list stays true."""
    assert set(KNOWN_EXCEPTIONS) - set(unit_edges()) == set()


def test_the_client_and_the_codec_import_only_what_the_client_distribution_ships():
    allowed = {"saliency", "errors", "v1", "wire"}
    for edge in unit_edges():
        if edge[0] in ("client", "wire"):
            assert edge[1] in allowed, edge


def test_the_checker_sees_function_level_and_from_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from saliency import render\n"
        "def f():\n"
        "    from saliency.torchserve.backend import TorchServeBackend\n"
        "    import saliency.runtime.config\n"
    )
    known = {"saliency.render", "saliency.torchserve.backend", "saliency.runtime.config"}
    assert _imports(source, known) == {
        "saliency", "saliency.render", "saliency.torchserve.backend", "saliency.runtime.config"
    }
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
