"""asycamore.metrics and ``asycamore echo --metrics-port/--stats-interval``.

The exposition is read over real HTTP from a real ``asycamore echo`` subprocess and
parsed with prometheus_client's own parser.  A missing ``prometheus_client`` is
simulated by running the command line with ``sys.modules["prometheus_client"] = None``,
which makes every import of it fail as if it were not installed (the import system's
documented way to block a module), in a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import asycamore
from asycamore.metrics import METRICS, MetricsUnavailable, ServiceCollector
from asycamore.servicemodel import Service, ServiceStatistics

BACKENDS = [
    name
    for name in ("epoll", "poll", "select")
    if name in {info.name for info in asycamore.list_backends() if info.available}
]
ECHO = [sys.executable, "-m", "asycamore", "echo", "--host", "127.0.0.1", "--port", "0"]
BLOCKED = (
    "import sys; sys.modules['prometheus_client'] = None; "
    "from asycamore.cli import main; sys.exit(main(sys.argv[1:]))"
)
STAT_NAMES = {field.name for field in dataclasses.fields(ServiceStatistics)} - {"dispatch"}


@dataclasses.dataclass
class Echo:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def lines(self) -> list[str]:
        """The complete lines on stderr so far (the last may still be being written)."""
        return [line for line in self.stderr().splitlines(keepends=True) if line.endswith("\n")]


def _line(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError("no line on stdout in time")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise AssertionError(f"asycamore echo exited early ({proc.wait()})")
        data += chunk
    return data.decode()


@contextlib.contextmanager
def echo(tmp_path: Path, *options: str) -> Iterator[Echo]:
    stderr_path = tmp_path / f"echo-{time.monotonic_ns()}.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*ECHO, *options], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        line = _line(proc)
        assert line.startswith("listening on 127.0.0.1:"), line
        yield Echo(proc, int(line.rsplit(":", 1)[1]), stderr_path)
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == b"", "more than the 'listening on' line on stdout"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def until(what: Callable[[], Any], limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while not (result := what()):
        if time.monotonic() > deadline:
            pytest.fail("not reached in time")
        time.sleep(0.02)
    return result


def echo_bytes(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := client.recv(65536):
            got += chunk
    assert got == payload


def metrics_port(server: Echo) -> int:
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.stderr())
    assert match, server.stderr()
    return int(match.group(1))


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str) -> float:
    family = families[name.removesuffix("_total")]
    (sample,) = family.samples
    return float(sample.value)


# -- the scrape -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_scrape_names_types_labels_and_values(tmp_path: Path, backend: str) -> None:
    payload = os.urandom(100_000)
    with echo(tmp_path, "--backend", backend, "--metrics-port", "0") as server:
        port = metrics_port(server)
        echo_bytes(server.port, payload)

        def closed() -> dict[str, Any] | None:
            families = scrape(port)
            # Counted closed as the socket closes, and no longer open once the service
            # has forgotten it, a moment later: a scrape from its thread can fall between.
            done = (
                value(families, "asycamore_connections_closed_total") == 1
                and value(families, "asycamore_connections_open") == 0
            )
            return families if done else None

        families = until(closed)
    assert all(name.startswith("asycamore_") for name in families)
    exposed = {}
    for family in families.values():
        (sample,) = family.samples
        assert sample.labels == {"backend": backend}
        exposed[sample.name] = family.type
        if family.type == "counter":
            assert sample.name == f"{family.name}_total"
        assert family.documentation
    expected = {name: kind for name, kind, _, _ in METRICS}
    service_only = {name: kind for name, kind, where, _ in METRICS if "." not in where}
    # The dispatch metrics are there exactly when the context has statistics().
    assert exposed in (expected, service_only)
    assert value(families, "asycamore_connections_accepted_total") == 1
    assert value(families, "asycamore_connections_open") == 0
    assert value(families, "asycamore_connections_failed_total") == 0
    assert value(families, "asycamore_received_bytes_total") == len(payload)
    assert value(families, "asycamore_sent_bytes_total") == len(payload)
    assert value(families, "asycamore_tls_handshakes_total") == 0
    assert value(families, "asycamore_processes_running") == 0


def test_metrics_listen_on_the_echo_host_only(tmp_path: Path) -> None:
    with echo(tmp_path, "--metrics-port", "0") as server:
        port = metrics_port(server)
        assert scrape(port)
        # 127.0.0.2 is this host too (all of 127/8 is loopback on Linux): a server on
        # every interface would answer there.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=5):
            pass


def test_the_observing_page_lists_every_metric_with_its_type_and_help() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "observing.rst").read_text()
    for name, kind, _, documentation in METRICS:
        assert f"   * - ``{name}``\n     - {kind}\n     - {documentation}\n" in page, name


def test_metrics_collector_in_process() -> None:
    with Service("select") as service:
        registry = CollectorRegistry()
        registry.register(ServiceCollector(service))
        service.call_later(0, lambda: None)
        service.run_once(0)
        families = {
            family.name: family
            for family in text_string_to_metric_families(generate_latest(registry).decode())
        }
    assert value(families, "asycamore_timers_fired_total") == 1
    assert value(families, "asycamore_connections_open") == 0


def test_metrics_unavailable_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with Service("select") as service, pytest.raises(MetricsUnavailable, match=r"metrics\]"):
        ServiceCollector(service)


# -- the exit-2 cases -----------------------------------------------------------------------


def run_cli(*args: str, blocked: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", BLOCKED] if blocked else [sys.executable, "-m", "asycamore"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_metrics_port_without_the_extra_exits_2() -> None:
    result = run_cli("echo", "--port", "0", "--metrics-port", "0", blocked=True)
    assert_usage_error(result, "asycamore[metrics]")


def test_the_blocked_interpreter_runs_echo_without_metrics(tmp_path: Path) -> None:
    # The same simulation, without --metrics-port: asycamore itself needs no
    # prometheus_client (so the exit above is the option's, not the import's).
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED, "echo", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _line(proc).startswith("listening on ")
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_metrics_port_in_use_exits_2() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("echo", "--port", "0", "--metrics-port", str(port))
    assert_usage_error(result, "cannot serve metrics", str(port))


def test_metrics_port_with_workers_exits_2() -> None:
    result = run_cli("echo", "--metrics-port", "0", "--workers", "2")
    assert_usage_error(result, "--metrics-port", "--workers")


@pytest.mark.parametrize("port", ["-1", "65536", "x", " 80", "1_0"])
def test_bad_metrics_port_exits_2(port: str) -> None:
    assert_usage_error(run_cli("echo", "--metrics-port", port), "port")


@pytest.mark.parametrize(
    "interval", ["0", "0.009", "3600.5", "1e9", "nan", "inf", "-1", "x", " 1", "1_0", ""]
)
def test_bad_stats_interval_exits_2(interval: str) -> None:
    assert_usage_error(run_cli("echo", "--stats-interval", interval), "0.01", "3600")


# -- --stats-interval -----------------------------------------------------------------------

PAIR = re.compile(r"([a-z_.]+)=([0-9]+(?:\.[0-9]+)?)")


def parse_stats(line: str) -> dict[str, str]:
    pairs = line.rstrip("\n").split(" ")
    parsed = dict(pair.split("=", 1) for pair in pairs)
    assert all(PAIR.fullmatch(pair) for pair in pairs), line
    return parsed


@pytest.mark.parametrize("interval", ["0.05", "0.01", "3600"])
def test_stats_interval_boundaries_are_accepted(tmp_path: Path, interval: str) -> None:
    with echo(tmp_path, "--stats-interval", interval):
        pass


def test_stats_interval_prints_statistics_lines_to_stderr(tmp_path: Path) -> None:
    payload = b"s" * 4321
    with echo(tmp_path, "--stats-interval", "0.05") as server:
        echo_bytes(server.port, payload)

        def closed_line() -> dict[str, str] | None:
            for line in server.lines():
                stats = parse_stats(line)
                if stats["connections_closed"] == "1" and stats["connections_open"] == "0":
                    return stats
            return None

        stats = until(closed_line)
        lines = until(lambda: len(server.lines()) >= 3 and server.lines())
    names = [name for name in stats if not name.startswith("dispatch.")]
    assert names == [field.name for field in dataclasses.fields(ServiceStatistics)][:-1]
    assert set(names) == STAT_NAMES
    assert stats["bytes_received"] == stats["bytes_sent"] == str(len(payload))
    assert stats["connections_accepted"] == "1"
    assert len(lines) >= 2
    # Repeated while serving: the timer that prints is counted in the next line.
    assert int(parse_stats(lines[-1])["timers_fired"]) >= len(lines) - 1


def test_stats_interval_with_workers_prints_each_workers_own(tmp_path: Path) -> None:
    with echo(tmp_path, "--stats-interval", "0.05", "--workers", "2") as server:

        def pids() -> set[str] | None:
            seen = set()
            for line in server.lines():
                pid, _, rest = line.partition(" ")
                assert pid.startswith("pid="), line
                assert set(parse_stats(rest)) >= STAT_NAMES
                seen.add(pid.removeprefix("pid="))
            return seen if len(seen) == 2 else None

        workers = until(pids)
    assert str(server.proc.pid) not in workers
