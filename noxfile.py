"""Development sessions: ``nox`` runs lint, typecheck, tests and docs.

    python -m pip install nox uv     # uv is optional: nox falls back to virtualenv
    python -m nox                    # lint, typecheck, tests (3.11-3.13), docs, plugin_example
    python -m nox -s tests-3.12 -- -k iterate -x   # arguments after -- go to pytest
    python -m nox -s bench -- --help               # not run by default

Every session installs the package as a regular (non-editable) install, so what is
tested, type-checked and documented is what users get: ``backends/`` installs as
``asycamore.backends`` only through the wheel's package-dir mapping.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["lint", "typecheck", "tests", "docs", "plugin_example"]
# uv makes the fresh venvs about three times faster; without it nox uses virtualenv.
nox.options.default_venv_backend = "uv|virtualenv"
# Interpreters come from the machine (pyenv, .python-version, PATH), never a download.
nox.options.download_python = "never"
nox.options.error_on_external_run = True


def _extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return set(project.get("optional-dependencies", {}))


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run pytest against the installed package (posargs go to pytest)."""
    session.install(".[test]")
    # The `pytest` command, not `python -m pytest`: the latter puts the repo root on
    # sys.path, so the source tree (whose asycamore/backends links to backends/) would be
    # tested instead of the installed package.  pyproject sets --import-mode=importlib.
    # Two workers: most tests wait on sockets, timers and children rather than compute,
    # so on CI's two CPUs this about halves the suite's time (posargs `-n 0` undoes it).
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[0])
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the installed asycamore, asycamore.backends included."""
    # The test extra brings pytest and hypothesis, which asycamore.testing imports.
    session.install("mypy", ".[test]")
    # From inside the repo mypy would read the source `asycamore/` and silently skip
    # `backends/`; from elsewhere it checks the installed package as a whole.
    # (`-p asycamore` covers asycamore.backends: naming it too is a duplicate module.)
    config = str(ROOT / "pyproject.toml")
    with session.chdir(session.create_tmp()):
        session.run("mypy", "--config-file", config, "-p", "asycamore", *session.posargs)


@nox.session(python=PYTHONS[0])
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors (docs/_build/html)."""
    session.install(".[docs]")
    out = ROOT / "docs" / "_build" / "html"
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", *session.posargs,
        "docs", str(out),
    )  # fmt: skip


@nox.session(python=PYTHONS[0])
def plugin_example(session: nox.Session) -> None:
    """The example plugin from docs/plugins.rst, installed, against the conformance kit."""
    example = ROOT / "docs" / "examples" / "asycamore-selectors"
    session.install(".", f"{example}[test]")
    session.run("asycamore", "backends")
    with session.chdir(example):
        session.run("pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHONS[0])
def bench(session: nox.Session) -> None:
    """Run benchmarks/run.py (posargs go to the script).  Not a default session."""
    session.install(".[bench]" if "bench" in _extras() else ".")
    script = ROOT / "benchmarks" / "run.py"
    if not script.exists():
        session.error(f"{script.relative_to(ROOT)} does not exist yet")
    session.run("python", str(script), *session.posargs)
