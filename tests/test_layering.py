"""The import layering of src/: imports point one way and never in a circle.

pure modules <- store <- archive <- ingest, analytics, queries <- api <- commands
(DESIGN.md, Layout). Every import counts, including those inside functions (a lazy import
is still a dependency) and those under ``TYPE_CHECKING``. A module may import from its own
layer or below; a cycle is refused in any layer.

The archive sits under ingest and analytics because both use its record codec
(``archive/record.py``); nothing in the archive may import ingest or analytics.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "event_analytics"

# (layer, module prefixes): the longest matching prefix decides a module's layer. A new
# top-level module has none and fails test_every_module_has_a_layer until it is placed.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    # Pure or self-contained: no Redis, no DuckDB, no HTTP, no project module above them.
    (
        0,
        (
            "",  # the package's __init__ (its version)
            "config",
            "model",
            "errors",
            "timebucket",
            "keys",
            "series",
            "decode",
            "sites",  # an event's site, path and host (Python and SQL texts)
            "goals",  # goal definitions and their matcher (Python and SQL texts)
            "revenue",  # the exact revenue shape
            "passwords",  # a shared link's password hash and unlock value
            "adapters",
            "logs",
            "telemetry",
            "metrics_dir",
            "supervisor",  # child processes; the embedded engine is one
            "faults",  # the crash tests' fault injection
            "dashboard",  # static files
            "tracker",
        ),
    ),
    (1, ("store",)),
    (2, ("archive",)),
    (
        3,
        (
            "ingest",
            "importing",
            "forgetting",  # erasing a person: archive, PostgreSQL, counters
            "forget_worker",  # the erasure jobs of the admin API, one at a time
            "import_read",
            "import_work",  # an import's blocks read and checked (in worker processes)
            "import_worker",  # an import's worker process: its start and its task
            "import_pool",  # the import process's side of its workers: blocks out, results back
            "batcher",
            "analytics",
            "counter_queries",
            "destinations",
            "expiry",  # retention: the archive, the counters and PostgreSQL together
            "expiry_totals",  # what retention did (its status file): no PostgreSQL client
        ),
    ),
    (4, ("api",)),
    (
        5,
        (
            "__main__",
            "cli",
            "commands",
            "archive_cli",
            "expire_cli",
            "export_cli",
            "import_cli",
            "forget_cli",
            "goals_cli",
            "links_cli",
            "postgres_cli",
            "query_server",  # serve's query processes (uvicorn on a unix socket)
            "stats_export_cli",
            "backup",
            "restore",
            "status",
            "session",
            "target",  # which engine a command talks to
            "console",
            "loadtest",
        ),
    ),
]


def _modules() -> dict[str, Path]:
    """Dotted name (without the package prefix; "" for the package) -> file."""
    found: dict[str, Path] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ``event_analytics.x.y`` (or of a name imported from it), if ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    rest = name.removeprefix(PACKAGE).removeprefix(".")
    while rest not in modules:
        rest = rest.rpartition(".")[0]
    return rest


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``module`` imports, at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = [PACKAGE, *filter(None, package.split("."))]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                # `from event_analytics.store import claims` imports the module claims.
                target = _resolve(f"{base}.{alias.name}", modules)
                if target is not None:
                    found.add(target)
    found.discard(module)
    return found


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or (prefix and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return None if best is None else best[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _show(module: str) -> str:
    return f"{PACKAGE}.{module}" if module else PACKAGE


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_every_module_has_a_layer() -> None:
    missing = [_show(m) for m in _graph() if _layer(m) is None]
    assert not missing, f"modules with no layer (place them in LAYERS): {missing}"


def test_no_upward_import() -> None:
    upward = [
        f"{_show(m)} (layer {_layer(m)}) -> {_show(dep)} (layer {_layer(dep)})"
        for m, deps in sorted(_graph().items())
        for dep in sorted(deps)
        if (m_layer := _layer(m)) is not None
        and (dep_layer := _layer(dep)) is not None
        and dep_layer > m_layer
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    lines = []
    for component in cycles:
        members = set(component)
        edges = [f"{_show(m)} -> {_show(d)}" for m in component for d in sorted(graph[m] & members)]
        lines.append("cycle: " + "; ".join(edges))
    assert not cycles, "\n".join(lines)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    """The checker itself can fail: a circle of two or three modules is found."""
    assert _cycles(graph) == expected


def test_lazy_and_relative_imports_count(tmp_path: Path) -> None:
    """An import inside a function is an edge (a lazy import is still a dependency), and
    so is a relative one."""
    path = tmp_path / "m.py"
    path.write_text(
        "def f():\n    from event_analytics.api import app\n"
        "    from ..store import claims\n    import event_analytics.keys\n"
    )
    modules = {"api.app": path, "store.claims": path, "keys": path, "archive.m": path}
    assert _imports("archive.m", path, modules) == {"api.app", "store.claims", "keys"}


def test_the_command_line_loads_no_metrics_library_before_serve_sets_its_directory() -> None:
    # cli._serve points prometheus_client at the run's directory (PROMETHEUS_MULTIPROC_DIR)
    # before importing it; a command module that reaches the store at import time (the
    # store counts engine errors) loaded it first, and /metrics then showed the serve
    # process's own values only: the query processes' slots and budgets were missing.
    code = (
        "import sys\n"
        "from event_analytics.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
