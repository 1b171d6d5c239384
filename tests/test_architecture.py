"""The layering rules of docs/architecture.rst, checked on the source.

The core -> transports -> service -> command line direction, and no module reaching
into another's ``_private`` names, are what let a newcomer change one module without
reading the others.  These tests read the source files (not the installed package) with
:mod:`ast`, so an import hidden inside a function counts too.  The layers and their
modules are read from the page's table, so that the page and the code cannot disagree:
every module has a row, and imports only from its own layer or the layers above it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asycamore"
BACKENDS = ROOT / "backends"
ARCHITECTURE = ROOT / "docs" / "architecture.rst"

BENCHMARKS = ROOT / "benchmarks"

SOURCES = sorted([*PACKAGE.rglob("*.py"), *BACKENDS.glob("*.py"), *BENCHMARKS.rglob("*.py")])


def _module_name(path: Path) -> str:
    if path.parent == BACKENDS:  # installed as asycamore.backends (pyproject's package-dir)
        path = PACKAGE / "backends" / path.name
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


# -- the layer table of docs/architecture.rst ---------------------------------------------
#
# The table is read from the page, not restated here: when a module or a layer is added
# to the page, these tests follow.  Its format (the literal block under "The layers"):
# a layer's name in the first column on the first line of that layer, the modules in the
# second column (``asycamore.x``, ``asycamore.backends.*``, or ``_transport.x`` relative to
# asycamore, indented or not), descriptions in the third, wrapped onto lines of their own.

LAYER_SOURCES = sorted([*PACKAGE.rglob("*.py"), *BACKENDS.glob("*.py")])
LAYER_MODULES = {_module_name(path): path for path in LAYER_SOURCES}

_MODULE_WORD = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?")


def _layer_table(text: str) -> list[tuple[str, list[str]]]:
    """The layers of the table in *text*, in order: ``(layer name, [module entries])``,
    each entry an absolute name (``asycamore.x``, or ``asycamore.backends.*``)."""
    lines = text.splitlines()
    start = lines.index("The layers")
    intro = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("::"))
    first = next(i for i in range(intro + 1, len(lines)) if lines[i].strip())
    layer_column = len(lines[first]) - len(lines[first].lstrip())
    # The first line holds all three columns, two spaces or more apart: where the second
    # and third start.
    fields = list(re.finditer(r"\S+(?: \S+)*", lines[first]))
    assert len(fields) >= 3, f"architecture.rst:{first + 1}: expected layer, module, text"
    module_column, text_column = fields[1].start(), fields[2].start()
    layers: list[tuple[str, list[str]]] = []
    for number, line in enumerate(lines[first:], first + 1):
        if line.strip() and len(line) - len(line.lstrip()) < layer_column:
            break  # the end of the literal block
        if line[layer_column : layer_column + 1].strip():
            layers.append((line[layer_column:module_column].strip(), []))
        word = line[module_column:].lstrip()
        where = len(line) - len(word)
        if not word or where >= text_column:
            continue  # a description's continuation
        entry = word.split()[0]
        assert _MODULE_WORD.fullmatch(entry), f"architecture.rst:{number}: not a module: {entry}"
        assert layers, f"architecture.rst:{number}: a module before the first layer"
        name = entry if entry.split(".")[0] == "asycamore" else f"asycamore.{entry}"
        layers[-1][1].append(name)
    return layers


LAYERS = _layer_table(ARCHITECTURE.read_text())


def _layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """The index of *module*'s layer, or None if the table does not place it.

    An entry covers the module it names and, unless the table lists modules inside it
    separately, what is inside it: ``asycamore.testing`` covers ``asycamore.testing.kit``
    and ``asycamore.backends.*`` the package and its modules, but ``asycamore`` only
    the package itself.  The longest entry that covers *module* decides.  A package
    that no entry covers belongs to the layer of its modules' entries, if they share
    one (the rows of ``_transport.*`` place ``asycamore._transport``).
    """
    rows = [
        (entry.removesuffix(".*"), entry.endswith(".*"), index)
        for index, (_, entries) in enumerate(layers)
        for entry in entries
    ]

    def covers(name: str, wildcard: bool) -> bool:
        if module == name:
            return True
        if not module.startswith(name + "."):
            return False
        return wildcard or not any(other.startswith(name + ".") for other, _, _ in rows)

    covering = [(len(name), index) for name, wildcard, index in rows if covers(name, wildcard)]
    if covering:
        return max(covering)[1]
    inside = {index for name, _, index in rows if name.startswith(module + ".")}
    return inside.pop() if len(inside) == 1 else None


def _asycamore_imports(module_name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for each asycamore module *path* imports, anywhere in it (a
    function's lazy import and a type-only one too), resolved to a module of *known*
    (the longest that the imported name starts with)."""
    tree = ast.parse(path.read_text())

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                return ".".join(parts[:end])
        return None

    package = module_name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parent = ".".join([*base, node.module] if node.module else base)
            else:
                parent = node.module or ""
            # `from . import cli` imports the module asycamore.cli; `from .x import y`
            # imports from the module x.
            names = [f"{parent}.{alias.name}" for alias in node.names]
        for name in names:
            target = resolve(name)
            if target is not None and target != module_name:
                found.append((node.lineno, target))
    return found


def _downward_imports(
    module_name: str, path: Path, layers: list[tuple[str, list[str]]], known: set[str]
) -> list[tuple[int, str, str]]:
    """``(line, module, its layer)`` for each import of *path* that goes to a layer below
    its own (later in the table).

    An import under ``if TYPE_CHECKING:`` counts like any other.  It costs nothing at
    run time, but an annotation that names a lower layer's type ties the module's API to
    that layer just the same, which is what the table is there to prevent (a higher
    layer can always be given a Protocol of its own instead).  None of the tree's
    type-only imports needs an exception today: they stay within their layer or go up.
    """
    own = _layer_of(module_name, layers)
    assert own is not None, f"{module_name} is not in the layer table"
    offending = []
    for line, target in _asycamore_imports(module_name, path, known):
        layer = _layer_of(target, layers)
        # A module the table does not place is reported by the first test, not here.
        if layer is not None and layer > own:
            offending.append((line, target, layers[layer][0]))
    return offending


def test_the_layer_table_is_read() -> None:
    """The parser finds the page's layers, in order, and modules in each."""
    names = [name for name, _ in LAYERS]
    assert names[:2] == ["core", "backends"], names
    assert "transports" in names and "service" in names, names
    assert names.index("transports") < names.index("service")
    assert all(entries for _, entries in LAYERS), LAYERS
    everything = {entry for _, entries in LAYERS for entry in entries}
    assert {"asycamore.dispatcher", "asycamore.backends.*", "asycamore.cli"} <= everything
    assert any(entry.startswith("asycamore._transport.") for entry in everything)


@pytest.mark.parametrize("module", sorted(LAYER_MODULES))
def test_every_module_is_in_the_layer_table(module: str) -> None:
    """Each module of the package and of the backends has its place in the table."""
    assert _layer_of(module, LAYERS) is not None, (
        f"{module} is not in the layer table of docs/architecture.rst: add it to its layer"
    )


@pytest.mark.parametrize("module", sorted(LAYER_MODULES))
def test_imports_go_only_up_the_layer_table(module: str) -> None:
    """A module imports asycamore modules of its own layer or the layers above it only."""
    layer = _layer_of(module, LAYERS)
    if layer is None:
        pytest.skip(f"{module} is not in the layer table (see the test above)")
    offending = _downward_imports(module, LAYER_MODULES[module], LAYERS, set(LAYER_MODULES))
    assert not offending, f"{module} ({LAYERS[layer][0]}) imports from layers below: {offending}"


def test_a_downward_import_is_caught(tmp_path: Path) -> None:
    """The layer check flags what it is meant to flag (a planted core module), and only
    that: relative, absolute, lazy and type-only imports of lower layers."""
    table = tmp_path / "architecture.rst"
    table.write_text(
        "The layers\n----------\n\nIn order::\n\n"
        "    core            asycamore               the package\n"
        "                    asycamore.dispatcher    the protocols,\n"
        "                                            iterate\n"
        "                    asycamore.errors        the exceptions\n"
        "    backends        asycamore.backends.base the base\n"
        "                    asycamore.backends.*    the mechanisms\n"
        "    transports      asycamore.tcpsocket     the facade\n"
        "                      _transport.stream       connections\n"
        "    service         asycamore.servicemodel  Service\n"
        "\nAfter the table.\n"
    )
    layers = _layer_table(table.read_text())
    assert layers == [
        ("core", ["asycamore", "asycamore.dispatcher", "asycamore.errors"]),
        ("backends", ["asycamore.backends.base", "asycamore.backends.*"]),
        ("transports", ["asycamore.tcpsocket", "asycamore._transport.stream"]),
        ("service", ["asycamore.servicemodel"]),
    ]
    assert _layer_of("asycamore._transport", layers) == 2  # the package of its rows
    assert _layer_of("asycamore.backends", layers) == 1
    assert _layer_of("asycamore.backends.epoll", layers) == 1
    assert _layer_of("asycamore", layers) == 0
    assert _layer_of("asycamore.unlisted", layers) is None  # not by the package's row
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "from .errors import BackendError\n"
        "from .servicemodel import Service\n"
        "import asycamore.backends.epoll\n"
        "from asycamore import tcpsocket\n"
        "from ._transport.stream import Connection\n"
        "from .unlisted import thing\n"
        "if TYPE_CHECKING:\n"
        "    from asycamore.servicemodel import Protocol\n"
        "def lazy():\n"
        "    from .backends import base\n"
    )
    known = {
        "asycamore",
        "asycamore.dispatcher",
        "asycamore.errors",
        "asycamore.servicemodel",
        "asycamore.tcpsocket",
        "asycamore.unlisted",
        "asycamore.backends",
        "asycamore.backends.base",
        "asycamore.backends.epoll",
        "asycamore._transport",
        "asycamore._transport.stream",
    }
    found = _downward_imports("asycamore.dispatcher", planted, layers, known)
    assert sorted(found) == [
        (4, "asycamore.servicemodel", "service"),
        (5, "asycamore.backends.epoll", "backends"),
        (6, "asycamore.tcpsocket", "transports"),
        (7, "asycamore._transport.stream", "transports"),
        (10, "asycamore.servicemodel", "service"),
        (12, "asycamore.backends.base", "backends"),
    ]
    # The same imports from the service layer go up or sideways: nothing to report.
    assert _downward_imports("asycamore.servicemodel", planted, layers, known) == []
