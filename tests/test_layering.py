"""Imports point down: the layering of docs/adr/0003-layering.md, checked on every module.

The import graph is read from the source (every ``import`` and ``from ...
import``, inside functions too), so a lazy import cannot hide a dependency
that points up or closes a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A package may import only packages of a lower layer (and itself).
LAYERS: list[set[str]] = [
    {"errors"},
    {"config", "fsutil", "hooks", "tls"},
    {"pki", "store", "trust"},
    {"agent", "site"},
    {"ceremonies", "apps"},
    {"operations"},
    {"server"},
    {"fleet"},
    {"cli"},
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in (SRC / "homing").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("homing"):
                    graph[module].add(node.module)
                    graph[module].update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                graph[module].update(a.name for a in node.names if a.name.startswith("homing"))
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _imports()} - {None, "__main__", "__version__"}
    assert packages <= set(LAYER), packages - set(LAYER)


def test_imports_point_down() -> None:
    upward = []
    for module, targets in _imports().items():
        source = _package(module)
        for target in targets:
            destination = _package(target)
            if source is None or destination is None or source == destination:
                continue
            if destination not in LAYER:
                continue  # a name imported from a package, e.g. homing.__version__
            if LAYER[destination] >= LAYER[source]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_module_imports_go_in_a_circle() -> None:
    graph = _imports()
    modules = set(graph)
    edges = {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}
    # A package's __init__ re-exporting its own modules is not a circle.
    for module in edges:
        edges[module] = {t for t in edges[module] if not module.startswith(t + ".")}
    seen: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert cycles == []


def _loaded_by(code: str) -> list[str]:
    """What a fresh interpreter running ``code`` prints, one word each (module names)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()


def test_the_device_agent_loads_nothing_of_the_server_side() -> None:
    """A device runs the agent: importing it must not load server, ceremonies or store code."""
    code = (
        "import sys\n"
        "import homing.agent.agent, homing.agent.daemon, homing.agent.runner, "
        "homing.agent.enroll, homing.agent.bundle, homing.agent.update\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('homing'))))\n"
    )
    loaded = _loaded_by(code)
    forbidden = ("homing.server", "homing.ceremonies", "homing.store", "homing.site",
                 "homing.operations", "homing.fleet", "homing.cli")  # fmt: skip
    assert [m for m in loaded if m.startswith(forbidden)] == []
    assert "homing.agent.agent" in loaded


def test_the_resident_agent_keeps_only_the_interpreter_and_its_pacing() -> None:
    """What stays in memory while a device sleeps: each cycle runs in its own process."""
    code = (
        "import sys\n"
        "import homing.agent.daemon\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('homing'))))\n"
        "heavy = ('cryptography', 'tuf', 'securesystemslib', 'urllib3', 'ssl', 'sqlalchemy')\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    loaded = _loaded_by(code)
    assert loaded == ["homing", "homing.agent", "homing.agent.daemon", "homing.agent.pacing"]


# The edges: where a process starts (the CLI, the server's supervisor, the agent's cycle
# process), and the agent's
# egress proxy, read from HTTPS_PROXY/NO_PROXY at each connection as every HTTP client
# reads it (through urllib.request's own parser).
ENVIRONMENT_EDGES = (
    "homing.cli",
    "homing.server.runner",
    "homing.agent.cycle",
    "homing.agent.egress",
)


def test_the_environment_is_read_only_at_the_edges() -> None:
    """Settings reach the library as parameters: no module below the edges reads os.environ."""
    readers = []
    for path in (SRC / "homing").rglob("*.py"):
        module = _module_name(path)
        if module.startswith(ENVIRONMENT_EDGES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(f"{module}:{node.lineno}")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and any(a.name in ("environ", "getenv") for a in node.names)
            ):
                readers.append(f"{module}:{node.lineno}")
    assert readers == []


def test_the_cli_loads_the_database_layer_only_for_a_command_that_uses_it() -> None:
    """A device's ``homing agent ...`` and any refused or help invocation start fast and
    small: neither the database layer nor the site's loads for them (they loaded for
    every command, from an import kept for a type and a cleanup that ran regardless)."""
    code = (
        "import sys\n"
        "from homing.cli import main\n"
        "sys.argv = ['homing', 'agent', 'status', '--state', '/nonexistent-state']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('sqlalchemy', 'homing.site', 'homing.store')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    assert _loaded_by(code) == []
