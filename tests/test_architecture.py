"""The package's architecture as a rule that cannot rot: imports only go down the layers, no import circle,
and no module longer than the limit without a reason in its docstring.

The layers, bottom to top (docs/architecture.md draws them):
  1. harness/pc/       the PC: CPU glue, bus, clock, loader, BIOS, devices, hot paths, snapshots, events
  2. harness/observe/  observers: tracer, trace formats, auditor, kernel view, diagnosis, system-call table
  3. harness/*.py      the public face: machine (the PC with its observers), api, project, pytest_plugin
  4. harness/front/    front ends: CLI, live console, screenshots, gdb stub, bench
  5. harness/__main__  `python -m harness`
Every import counts: at module level, inside a function, and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harness"
SIZE_LIMIT = 450
SIZE_REASON = "Size:"  # a docstring line starting so says why a module may be longer than SIZE_LIMIT


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (every import statement, wherever it stands)."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from x import y`: y may itself be a module of the package
                candidates = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                              for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in files and c != name)
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "pc":
        return 1
    if len(parts) > 1 and parts[1] == "observe":
        return 2
    if len(parts) > 1 and parts[1] == "front":
        return 4
    if module.endswith(".__main__"):
        return 5
    return 3


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
                  for source, targets in graph.items() for target in targets if layer(target) > layer(source))


def oversized(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines <= SIZE_LIMIT:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.startswith(SIZE_REASON) for line in docstring.splitlines()):
            out.append(f"{path.relative_to(root.parent)}: {lines} lines and no '{SIZE_REASON}' line in its docstring")
    return out


@pytest.fixture(scope="module")
def package_graph() -> dict[str, set[str]]:
    """The package's import graph, read once for the tests that judge it (each read parses every module)."""
    return import_graph(PACKAGE)


def test_no_import_circle(package_graph: dict[str, set[str]]) -> None:
    assert circles(package_graph) == []


def test_imports_only_go_down_the_layers(package_graph: dict[str, set[str]]) -> None:
    assert upward_imports(package_graph) == []


def test_the_pc_imports_no_observer_and_no_front_end(package_graph: dict[str, set[str]]) -> None:
    graph = package_graph
    pc = {name: targets for name, targets in graph.items() if layer(name) == 1}
    assert pc, "the PC layer was not found"
    assert all(layer(target) == 1 for targets in pc.values() for target in targets)


def test_devices_import_only_devices(package_graph: dict[str, set[str]]) -> None:
    """A device model stands alone (one device a file, registers as constants): it never reaches into the board."""
    graph = package_graph
    devices = [name for name in graph if ".pc.devices" in name]
    assert devices
    assert {target for name in devices for target in graph[name] if ".pc.devices" not in target} == set()


def test_no_module_over_the_size_limit_without_a_reason() -> None:
    assert oversized(PACKAGE) == []


@pytest.fixture
def tangled(tmp_path: Path) -> Path:
    """A small package that breaks every rule: a circle, an upward import, a long module without a reason."""
    root = tmp_path / "harness"
    for folder in ("pc", "observe", "front"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "pc" / "board.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from ..observe.trace import Tracer\n")
    (root / "observe" / "trace.py").write_text("def f():\n    from ..pc import board\n")
    (root / "front" / "cli.py").write_text('"""A long module."""\n' + "x = 1\n" * (SIZE_LIMIT + 1))
    return root


def test_the_checks_find_what_they_look_for(tangled: Path) -> None:
    graph = import_graph(tangled)
    assert circles(graph) == [["harness.observe.trace", "harness.pc.board"]]
    assert upward_imports(graph) == ["harness.pc.board (layer 1) imports harness.observe.trace (layer 2)"]
    assert oversized(tangled) == [f"harness/front/cli.py: {SIZE_LIMIT + 2} lines and no 'Size:' line in its docstring"]


def test_every_data_file_of_the_package_is_package_data() -> None:
    """Data is not Python (the font, the native sources): an installed harness finds it only if pyproject.toml
    lists it as package data."""
    import fnmatch
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["harness"]
    data = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*"))
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert "front/font8x16.txt" in data
    assert [name for name in data if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []
