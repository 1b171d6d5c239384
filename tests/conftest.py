"""Shared fixtures.  Keep this small: most helpers belong in the test module using them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# pytester: tests/test_pytest_plugin.py runs user test files through the plugin.
pytest_plugins = ["pytester"]


@pytest.fixture
def fresh_factory() -> Iterator[None]:
    """Forget asycamore's cached backend discovery before and after the test, and the
    test plugins' modules (named ``asycamore_test_*``) it imported."""
    from asycamore import factory

    factory._discover.cache_clear()
    yield
    factory._discover.cache_clear()
    for name in [name for name in sys.modules if name.startswith("asycamore_test_")]:
        del sys.modules[name]


@pytest.fixture
def write_distribution(tmp_path: Path) -> Callable[..., Path]:
    """``write_distribution(dist, entry_points, modules=None, version="1.0") -> site``.

    Name test plugin modules ``asycamore_test_*`` so ``fresh_factory`` unloads them.

    Writes an installed distribution as an installer would leave it: the modules, and a
    ``<dist>-<version>.dist-info`` with ``METADATA`` and ``entry_points.txt`` declaring
    *entry_points* (``{name: "module:attr"}``) in the ``asycamore.backends`` group, into
    one site directory, which it returns.  Put it on ``sys.path`` (``monkeypatch.
    syspath_prepend``) or ``PYTHONPATH`` and importlib.metadata finds it for real.
    """
    site = tmp_path / "site"

    def write(
        dist: str,
        entry_points: dict[str, str],
        modules: dict[str, str] | None = None,
        version: str = "1.0",
    ) -> Path:
        site.mkdir(exist_ok=True)
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(source)
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        lines = ["[asycamore.backends]"] + [f"{k} = {v}" for k, v in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        return site

    return write


# tests/plugins/ holds out-of-tree plugin packages (and their own test suites), which
# tests/test_plugins.py installs into a throwaway venv; they are not part of this suite.
collect_ignore = ["plugins"]
