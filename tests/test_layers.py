"""The imports keep the layers of docs/reference/architecture.md: no cycle between fedsim's packages or between its
modules, counting every import (inside functions and under TYPE_CHECKING too), and an import inside a function
says why it is there. import-linter (`make lint`) checks the layer order itself."""

from __future__ import annotations

import ast
from collections import defaultdict
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedsim"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The fedsim modules an import statement of `module` loads (a name imported from a package counts as its
    submodule when there is one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    found = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]
        if name in MODULES and name.startswith("fedsim") and name != module:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(imported(module, node))
    return graph


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_scan_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The check itself: two modules that import each other, one of them inside a function, are a cycle."""
    graph = {"fedsim.a": {"fedsim.b"}, "fedsim.b": set()}
    assert cycle(graph) is None
    graph["fedsim.b"].add("fedsim.a")
    assert cycle(graph) is not None
    a = ast.parse("def f():\n    from fedsim.system import errors\n")
    assert imported("fedsim.system.files", a.body[0].body[0]) == ["fedsim.system.errors"]


def test_no_module_imports_itself_back():
    assert cycle(import_graph()) is None


def test_no_package_imports_itself_back():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        packages[package_of(module)].update(package_of(t) for t in targets if package_of(t) != package_of(module))
    assert cycle(packages) is None


def in_function_imports() -> list[tuple[str, int, str]]:
    """Every import statement inside a function of fedsim: (module, line, the line with the one above it)."""
    found = {}
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        above = lines[node.lineno - 2] if node.lineno > 1 else ""
                        found[module, node.lineno] = above + "\n" + lines[node.lineno - 1]
    return [(module, line, text) for (module, line), text in sorted(found.items())]


@pytest.mark.parametrize("module, line, text", in_function_imports(), ids=lambda v: str(v).split("\n")[-1].strip())
def test_an_import_inside_a_function_says_why(module, line, text):
    """Kept only for a process's start-up cost, with a comment on its line or the line above saying so."""
    assert "#" in text, f"{module}:{line}: an import inside a function without its reason"
