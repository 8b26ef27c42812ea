"""The layout keeps its promises: read from the source, every import (including those inside
functions) follows the layers, no module imports itself back in a cycle, and no function or
class grows past the size a reviewer can hold in mind."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "commands_worker", "queries_service", "hfctl")
MAX_FUNCTION_LINES = 40
MAX_CLASS_LINES = 200


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = ast.parse(path.read_text(), str(path))
    return found


def _imported(module: str, tree: ast.Module) -> Iterator[str]:
    """Every module name ``module`` imports, wherever the import statement stands."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").exists()


@cache
def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (third-party names kept apart)."""
    modules = _sources()
    graph: dict[str, set[str]] = {}
    for module, tree in modules.items():
        graph[module] = {name for name in _imported(module, tree)
                         if name in modules and name != module}
    return graph


def _all_imports(module: str) -> set[str]:
    return set(_imported(module, _sources()[module]))


def _cycle() -> list[str] | None:
    graph, state, stack = _graph(), dict.fromkeys(_graph(), 0), []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state[target] == 1:
                return [*stack[stack.index(target):], target]
            if state[target] == 0 and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state[node] == 0 and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read_from_real_imports() -> None:
    executor = _graph()["commands_worker.service_layer.executor"]
    assert "commands_worker.service_layer.handlers" in executor
    assert len(_graph()) > 30


def test_no_import_cycle_even_inside_functions() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def _violations(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {name}" for module in _sources()
                  if module == prefix or module.startswith(prefix + ".")
                  for name in _all_imports(module)
                  if name.split(".")[0] in forbidden or name.startswith(
                      tuple(f for f in forbidden if "." in f)))


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("shared", ("commands_worker", "queries_service", "hfctl")),
    ("queries_service", ("commands_worker", "hfctl")),
    ("commands_worker", ("queries_service", "hfctl")),
    ("commands_worker.domain", ("celery", "kombu", "redis", "sqlalchemy",
                                "commands_worker.service_layer", "commands_worker.adapters",
                                "commands_worker.entrypoints", "commands_worker.bootstrap")),
    ("commands_worker.service_layer", ("celery", "kombu", "redis", "sqlalchemy",
                                       "commands_worker.adapters",
                                       "commands_worker.entrypoints",
                                       "commands_worker.bootstrap")),
    # The gateway publishes by the wire contract and never touches the store or the cache
    # (redis only for the broker's Redis, where it keeps what each Idempotency-Key named).
    ("commands_worker.gateway", ("sqlalchemy", "commands_worker.domain",
                                 "commands_worker.service_layer", "commands_worker.adapters",
                                 "commands_worker.entrypoints", "commands_worker.bootstrap")),
    # The AWS provider is an ordinary provider: the feed in, the public commands out.
    ("hfctl.aws", ("commands_worker", "queries_service")),
    ("hfctl", ("queries_service", "commands_worker.domain", "commands_worker.service_layer",
               "commands_worker.adapters", "commands_worker.bootstrap",
               "commands_worker.entrypoints.celery_app", "commands_worker.entrypoints.tasks")),
])
def test_layers(layer: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(layer, forbidden) == []


def test_the_layer_check_catches_a_violation() -> None:
    tree = ast.parse("def f():\n    import sqlalchemy\n")
    assert "sqlalchemy" in set(_imported("commands_worker.domain.model", tree))


def _sizes() -> Iterator[tuple[str, str, int]]:
    for module, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                yield kind, f"{module}.{node.name}", lines


def test_no_function_over_40_lines_and_no_class_over_200() -> None:
    limits = {"function": MAX_FUNCTION_LINES, "class": MAX_CLASS_LINES}
    too_long = [f"{name} ({kind}, {lines} lines)" for kind, name, lines in _sizes()
                if lines > limits[kind]]
    assert too_long == []


@pytest.mark.parametrize(("layer", "allowed"), [
    # The table in docs/architecture.md, as allowlists: of the project's packages, each may
    # import only these (third-party imports are held by test_layers).
    ("hfctl", ("shared", "hfctl", "commands_worker.entrypoints.admin")),
    ("commands_worker.gateway", ("shared", "commands_worker.gateway")),
    ("queries_service", ("shared", "queries_service")),
    ("shared", ("shared",)),
])
def test_each_layer_imports_only_what_the_table_allows(layer: str,
                                                       allowed: tuple[str, ...]) -> None:
    project = PACKAGES
    found = sorted(
        f"{module} imports {name}" for module in _sources()
        if module == layer or module.startswith(layer + ".")
        for name in _all_imports(module)
        if name.split(".")[0] in project
        and not any(name == a or name.startswith(a + ".") for a in allowed)
        # ``from commands_worker.entrypoints import admin`` names the package on its way.
        and not any(a.startswith(name + ".") for a in allowed))
    assert found == []
