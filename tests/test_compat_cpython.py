"""CPython 3.11's own ``test_asyncore`` and ``test_asynchat``, run against asycamore.compat.

The suites are not copied here: they are loaded at test time from the ``test`` package of
an installed Python 3.11 (the running interpreter if it is 3.11, else ``pyenv prefix
3.11``, else ``~/.pyenv/versions/3.11*``), with ``asyncore`` and ``asynchat`` in
``sys.modules`` pointing at asycamore.compat while they import.  Their helpers come from
the *running* interpreter's ``test.support`` (3.12 and 3.13 still have every name they
use).  Each suite runs once per available backend (``ASYCAMORE_BACKEND``).

Exclusions, each with its reason, are in ``EXCLUDED`` below.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import unittest
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import asycamore
from asycamore.compat import asynchat, asyncore

SUITES = ("test_asyncore", "test_asynchat")

EXCLUDED: dict[str, str] = {}
"""``"suite.Class.test"`` -> why it does not run.  Empty: every test of both suites runs,
on every backend.  The skips pytest reports are the suites' own (tests that do not apply
to AF_UNIX sockets, and test_quick_connect, which is specific to AF_INET/AF_INET6)."""


def _python311_test_dir() -> Path | None:
    """The ``test`` package directory of an installed Python 3.11, or None."""
    if sys.version_info[:2] == (3, 11):
        candidates = [Path(sysconfig.get_paths()["stdlib"]) / "test"]
    else:
        candidates = []
        pyenv = shutil.which("pyenv")
        if pyenv is not None:
            found = subprocess.run(
                [pyenv, "prefix", "3.11"], capture_output=True, text=True, check=False
            )
            if found.returncode == 0 and found.stdout.strip():
                candidates.append(Path(found.stdout.strip()) / "lib" / "python3.11" / "test")
        pattern = os.path.expanduser("~/.pyenv/versions/3.11*/lib/python3.11/test")
        candidates += [Path(path) for path in sorted(glob.glob(pattern), reverse=True)]
    for directory in candidates:
        if all((directory / f"{suite}.py").is_file() for suite in SUITES):
            return directory
    return None


def _load(directory: Path, suite: str) -> ModuleType:
    """Import *suite* from *directory* with ``asyncore``/``asynchat`` being ours."""
    saved = {name: sys.modules.get(name) for name in ("asyncore", "asynchat")}
    sys.modules["asyncore"] = asyncore
    sys.modules["asynchat"] = asynchat
    try:
        spec = importlib.util.spec_from_file_location(
            f"cpython311_{suite}", directory / f"{suite}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    assert module.asyncore is asyncore
    return module


def _backends() -> list[str]:
    return [info.name for info in asycamore.list_backends() if info.available]


_TEST_DIR = _python311_test_dir()
if _TEST_DIR is None:
    pytest.skip(
        "no Python 3.11 installation with test/test_asyncore.py and test/test_asynchat.py "
        "found (looked at the running interpreter, `pyenv prefix 3.11`, ~/.pyenv/versions)",
        allow_module_level=True,
    )


def _variants(directory: Path) -> dict[str, type[unittest.TestCase]]:
    """Every TestCase class of both suites, once per available backend."""
    variants: dict[str, type[unittest.TestCase]] = {}
    for suite in SUITES:
        module = _load(directory, suite)
        for name, cls in vars(module).items():
            if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                continue
            if cls.__module__ != module.__name__:
                continue  # unittest.TestCase itself, or one imported by the suite
            for key, reason in EXCLUDED.items():
                excluded_suite, excluded_cls, test = key.split(".")
                if excluded_suite == suite and excluded_cls == name:
                    setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))
            for backend in _backends():
                variant = f"{suite}_{name}_{backend}"
                variants[variant] = type(variant, (cls,), {"asycamore_backend": backend})
    return variants


globals().update(_variants(_TEST_DIR))


@pytest.fixture(autouse=True)
def _on_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Run each test on its class's backend, in a scratch directory (os_helper.TESTFN is
    relative), with the default map's context made afresh."""
    monkeypatch.setenv("ASYCAMORE_BACKEND", request.cls.asycamore_backend)
    monkeypatch.chdir(tmp_path)
    asyncore.close_all(ignore_all=True)
    yield
    asyncore.close_all(ignore_all=True)
