"""The tree's layering holds: who may import whom, and no import cycles (read from the source, nothing run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agents", "models")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (at any depth of its code)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


GRAPH = _imports()


def _third_party(module: str) -> set[str]:
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_layout_has_no_import_cycles():
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("models")))
def test_models_are_pure(module):
    """models/ imports no agent code and nothing of HTTP, files or the clock's transports."""
    assert not {m for m in GRAPH[module] if m.startswith("agents")}
    assert not _third_party(module) & {"fastapi", "httpx", "aiohttp", "starlette", "uvicorn", "sqlite3", "openai"}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("agents") and "coordinator" not in m))
def test_no_agent_imports_the_coordinator(module):
    assert not {m for m in GRAPH[module] if m.startswith("agents.coordinator")}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("agents.planners")))
def test_planners_see_no_transport(module):
    """Planners read the typed snapshot: no app, no device agent, no grid cycle, no HTTP server."""
    forbidden = ("agents.device", "agents.cycle", "agents.grid", "agents.home", "agents.battery")
    assert not {m for m in GRAPH[module] if m.startswith(forbidden)}
    assert "fastapi" not in _third_party(module)


def test_dashboard_reads_the_grid_agent_through_a_protocol():
    assert "agents.cycle.grid_agent" not in GRAPH["agents.cycle.dashboard"]
