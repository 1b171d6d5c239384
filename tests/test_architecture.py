"""The layering rules of docs/architecture.rst, checked on the source.

The core -> transports -> service -> command line direction, and no module reaching
into another's ``_private`` names, are what let a newcomer change one module without
reading the others.  These tests read the source files (not the installed package) with
:mod:`ast`, so an import hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asycamore"
BACKENDS = ROOT / "backends"

BENCHMARKS = ROOT / "benchmarks"

SOURCES = sorted([*PACKAGE.rglob("*.py"), *BACKENDS.glob("*.py"), *BENCHMARKS.rglob("*.py")])


def _module_name(path: Path) -> str:
    if path.parent == BACKENDS:
        return f"asycamore.backends.{path.stem}"
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(module_name: str, path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Absolute names of every module *path* imports, with their line numbers."""
    package = module_name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from . import cli` imports a module through its parent.
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


# namedtuple's public API has leading underscores (to keep clear of field names).
NAMEDTUPLE_API = frozenset({"_asdict", "_field_defaults", "_fields", "_make", "_replace"})


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API


def _own_private_names(tree: ast.Module) -> set[str]:
    """The ``_names`` a module defines itself: its functions, classes, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if _private(name)}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_entry_point_imports_the_cli(path: Path) -> None:
    """No module below the command line depends on it, not even inside a function."""
    if path.name in {"cli.py", "__main__.py"} and path.parent == PACKAGE:
        return
    tree = ast.parse(path.read_text())
    offending = [
        (line, module)
        for line, module in _imported_modules(_module_name(path), path, tree)
        if module == "asycamore.cli" or module.startswith("asycamore.cli.")
    ]
    assert not offending, f"{path.name} imports the command line: {offending}"


def _reach_ins(module_name: str, path: Path) -> list[tuple[int, str]]:
    """Where *path* imports a ``_private`` name or touches one it does not define."""
    tree = ast.parse(path.read_text())
    own = _own_private_names(tree)
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    offending = []
    for line, module in _imported_modules(module_name, path, tree):
        parts = module.split(".")
        if parts[0] != "asycamore":
            continue  # the stdlib's and third parties' business
        for i, part in enumerate(parts[1:], 1):
            # A private module is its package's own: the modules inside that package
            # may import it (asycamore._transport for the facades, a compat helper).
            owner = ".".join(parts[:i])
            inside = package == owner or package.startswith(owner + ".")
            if _private(part) and not inside:
                offending.append((line, module))
                break
    # `os._exit`, `sys._getframe`: the stdlib's own names are its business.
    foreign = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if not alias.name.startswith("asycamore")
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in foreign:
            continue
        if isinstance(value, ast.Name) and value.id in {"self", "cls"}:
            continue
        if isinstance(value, ast.Call) and ast.unparse(value.func) == "super":
            continue
        if node.attr not in own:
            offending.append((node.lineno, ast.unparse(node)))
    return offending


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_reach_ins(path: Path) -> None:
    """No module imports a ``_private`` name, or touches one it does not define."""
    offending = _reach_ins(_module_name(path), path)
    assert not offending, f"{path.name} reaches into private names: {offending}"


def test_the_checks_see_every_layer() -> None:
    """The scan covers the package, its private transport package, the backends and the
    benchmark suite."""
    names = {_module_name(path) for path in SOURCES}
    assert {
        "asycamore.cli",
        "asycamore.dispatcher",
        "asycamore.servicemodel",
        "asycamore._transport.stream",
        "asycamore.backends.epoll",
        "benchmarks.run",
    } <= names


def test_a_reach_in_is_caught(tmp_path: Path) -> None:
    """The scanner flags what it is meant to flag (planted offenders), and only that."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from asycamore.tcpsocket import _remove_socket_file\n"
        "from asycamore.backends import _base\n"
        "import asycamore.tcpsocket as t\n"
        "from ._transport import stream\n"
        "from ._transport.stream import _no_data\n"
        "class Mine:\n"
        "    _own = 1\n"
        "import os\n"
        "def f(listener, other):\n"
        "    os._exit(0)\n"
        "    listener._unix_path = None\n"
        "    return t.Listener._closed, other._own\n"
    )
    found = {what for _, what in _reach_ins("asycamore.planted", planted)}
    assert found == {
        "asycamore.tcpsocket._remove_socket_file",
        "asycamore.backends._base",
        "asycamore._transport.stream._no_data",
        "t.Listener._closed",
    }
