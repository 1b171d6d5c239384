"""``asycamore backends`` and the command line's error contract, run in real subprocesses
through both the ``asycamore`` console script and ``python -m asycamore``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import asycamore

LINUX = sys.platform.startswith("linux")
KQUEUE_HERE = sys.platform == "darwin" or "bsd" in sys.platform
DEFAULT_HERE = "kqueue" if KQUEUE_HERE else "epoll" if LINUX else "poll"


def _console_script() -> str:
    """The ``asycamore`` script installed beside this interpreter (or on PATH)."""
    bindir = Path(sys.executable).parent
    for candidate in (bindir / "asycamore", bindir / "asycamore.exe"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("asycamore")
    assert found, "the asycamore console script is not installed"
    return found


COMMANDS = {
    "script": [_console_script()],
    "module": [sys.executable, "-m", "asycamore"],
}


@pytest.fixture(params=sorted(COMMANDS))
def run(request: pytest.FixtureRequest) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(*args, env={...})``: the command line in a subprocess, output captured."""
    command = COMMANDS[request.param]

    def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "ASYCAMORE_BACKEND"}
        environ.update(env or {})
        return subprocess.run(
            [*command, *args],
            check=False,
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    return run_cli


Run = Callable[..., subprocess.CompletedProcess[str]]


def _json(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def test_backends_json(run: Run) -> None:
    rows = _json(run("backends", "--json"))
    for row in rows:
        assert {"name", "available", "priority", "reason"} <= set(row)
        assert isinstance(row["available"], bool)
        assert type(row["priority"]) is int
        assert (row["reason"] is None) == row["available"]
    names = [row["name"] for row in rows]
    assert {"select", "poll", "epoll", "kqueue"} <= set(names)
    assert rows == sorted(rows, key=lambda row: (-row["priority"], row["name"]))
    # The same as the API says, in this environment.
    assert names == [info.name for info in asycamore.list_backends()]
    defaults = [row["name"] for row in rows if row.get("default")]
    assert defaults == [DEFAULT_HERE]
    by_name = {row["name"]: row for row in rows}
    assert by_name["poll"]["origin"] == "built-in"
    if not KQUEUE_HERE:
        assert by_name["kqueue"]["available"] is False
        assert sys.platform in by_name["kqueue"]["reason"]


def test_backends_json_follows_the_preference(run: Run) -> None:
    rows = _json(run("backends", "--json", env={"ASYCAMORE_BACKEND": "kqueue,select"}))
    expected = "kqueue" if KQUEUE_HERE else "select"
    assert [row["name"] for row in rows if row.get("default")] == [expected]


def test_backends_table(run: Run) -> None:
    result = run("backends")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    for name in ("select", "poll", "epoll", "kqueue"):
        assert any(name in line.split()[:2] for line in lines), name
    assert DEFAULT_HERE in lines[-1]
    assert "default" in lines[-1]


def test_backends_table_says_why_there_is_no_default(run: Run) -> None:
    result = run("backends", env={"ASYCAMORE_BACKEND": "nope"})
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert "no default backend here" in last
    assert "'nope'" in last
    assert "installed: " in last


def test_backends_lists_a_broken_plugin(run: Run, write_distribution: Callable[..., Path]) -> None:
    """A plugin that fails to import is listed with its reason; the command succeeds and
    the default is unchanged."""
    site = write_distribution(
        "asycamore-cli-broken",
        {"clibroken": "asycamore_cli_broken:Dispatcher"},
        {"asycamore_cli_broken": "raise ImportError('the plugin is broken on purpose')\n"},
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    rows = _json(run("backends", "--json", env=env))
    by_name = {row["name"]: row for row in rows}
    broken = by_name["clibroken"]
    assert broken["available"] is False
    assert "broken on purpose" in broken["reason"]
    assert "asycamore-cli-broken" in broken["origin"]
    assert [row["name"] for row in rows if row.get("default")] == [DEFAULT_HERE]
    table = run("backends", env=env)
    assert table.returncode == 0
    assert "clibroken" in table.stdout
    assert "Traceback" not in table.stdout + table.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["backends", "--bogus"],
        ["backends", "extra"],
        ["echo", "--port", "70000"],
        ["echo", "--port", "http"],
        ["bench", "--seconds", "-1"],
        ["bench", "--seconds", "inf"],
    ],
    ids=lambda args: " ".join(args) or "no-args",
)
def test_bad_input_is_one_line_and_status_2(run: Run, args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("asycamore: ")
    assert result.stdout == ""


def test_version(run: Run) -> None:
    result = run("--version")
    assert result.returncode == 0
    assert asycamore.__version__ in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["echo", "--backend", "no-such-backend"], {}, "no-such-backend"),
        (["echo"], {"ASYCAMORE_BACKEND": "no-such-backend"}, "no-such-backend"),
        (["echo", "--backend", "kqueue"], {}, "kqueue"),
    ],
    ids=["unknown-name", "unknown-preference", "unavailable"],
)
def test_bad_backend_is_one_line_and_status_2(
    run: Run, args: list[str], env: dict[str, str], expected: str
) -> None:
    if "kqueue" in args and KQUEUE_HERE:
        pytest.skip("kqueue is available here")
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
