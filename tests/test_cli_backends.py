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


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a command that failed on bad input (status 2, no traceback)."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "command"),
    [
        ([], "asycamore"),
        (["frobnicate"], "asycamore"),
        (["--bogus", "echo"], "asycamore"),
        (["backends", "--bogus"], "asycamore backends"),
        (["backends", "extra"], "asycamore backends"),
        (["echo", "--bogus"], "asycamore echo"),
        (["echo", "extra"], "asycamore echo"),
        (["echo", "--version"], "asycamore echo"),
        (["echo", "--port"], "asycamore echo"),
        (["echo", "--port", "70000"], "asycamore echo"),
        (["echo", "--port", "http"], "asycamore echo"),
        (["echo", "--workers", "0"], "asycamore echo"),
        # Options that do not go together: checked before any file is read.
        (["echo", "--tls-cert", "cert.pem"], "asycamore echo"),
        (["echo", "--tls-key", "key.pem"], "asycamore echo"),
        (["echo", "--udp", "--tls-cert", "cert.pem", "--tls-key", "key.pem"], "asycamore echo"),
        (["bench", "--seconds"], "asycamore bench"),
        (["bench", "--seconds", "inf"], "asycamore bench"),
        (["bench", "extra"], "asycamore bench"),
    ],
    ids=lambda value: (" ".join(value) or "no-args") if isinstance(value, list) else None,
)
def test_usage_error_points_to_its_command_help(run: Run, args: list[str], command: str) -> None:
    """Named by the (sub)command it belongs to, pointing to that command's --help:
    argparse alone would send ``echo --bogus`` to the top-level help."""
    line = _error_line(run(*args))
    assert line.startswith(f"{command}: error: "), line
    assert line.endswith(f" (see {command} --help)"), line


BAD_SECONDS = ["0", "-1", "601", "nan", "inf", "1e3", "abc", "0.001", "", " 1", "1_0", "0x10"]


def test_bench_seconds_has_one_message_for_every_bad_value(run: Run) -> None:
    """Out of range or malformed, the user needs the same thing: the accepted range."""
    messages = set()
    for value in BAD_SECONDS:
        line = _error_line(run("bench", "--seconds", value))
        assert f"not {value!r}" in line, line
        messages.add(line.replace(f"not {value!r}", "not VALUE"))
    assert messages == {
        "asycamore bench: error: argument --seconds: expected a decimal number of seconds "
        "from 0.01 to 600, not VALUE (see asycamore bench --help)"
    }


def _options_help(text: str) -> dict[str, str]:
    """``{option: its help text}`` from argparse's help output, whitespace normalised."""
    options: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        # An option starts a line indented by two spaces; its wrapped help is indented more
        # (and may start with another option's name: "needs\n    --tls-key ...").
        if line.startswith("  -") and not line.startswith("   "):
            name, _, rest = line.strip().partition(" ")
            current = options.setdefault(name.rstrip(","), [])
            current.append(rest)
        elif line.startswith("   "):
            current.append(line)
        else:
            current = []
    return {name: " ".join(" ".join(parts).split()) for name, parts in options.items()}


def test_top_level_help_says_what_echo_serves(run: Run) -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "TCP, TLS or UDP echo service" in " ".join(result.stdout.split())
    assert "asycamore COMMAND --help" in result.stdout


def test_echo_help_shows_every_default(run: Run) -> None:
    result = run("echo", "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    options = _options_help(result.stdout)
    expected = {
        "--backend": "ASYCAMORE_BACKEND environment variable",
        "--host": "(default: 127.0.0.1)",
        "--port": "(default: 0, any free port)",
        "--udp": "(default: TCP)",
        "--tls-cert": "(default: none, plain TCP)",
        "--tls-key": "(default: none)",
        "--workers": "(default: none, serve in this process)",
    }
    assert set(expected) <= set(options), options
    for option, text in expected.items():
        assert "(default: " in options[option], (option, options[option])
        assert text in options[option], (option, options[option])
    description = " ".join(result.stdout.split())
    assert "listening on HOST:PORT" in description


def test_bench_help_shows_the_range_and_default(run: Run) -> None:
    result = run("bench", "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    seconds = _options_help(result.stdout)["--seconds"]
    assert "0.01 to 600 (default: 1)" in seconds, seconds


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
