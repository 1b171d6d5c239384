"""``asycamore echo --workers N`` and :mod:`asycamore.workers`, with real processes.

Every test is bounded: sockets have timeouts, waits have deadlines, and every process
a test started (the parent and its workers) is SIGKILLed in a ``finally`` if it is
still there.  Worker pids are found through ``/proc`` (the children of the parent), so
these tests run where ``/proc`` exists.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds worker pids through /proc"
)

ASYCAMORE = [sys.executable, "-m", "asycamore"]
DEADLINE = 10.0


def _children(pid: int) -> set[int]:
    """The live (not zombie) children of *pid*."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(predicate: object, timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Pool:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    workers: set[int]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def current_workers(self) -> set[int]:
        return _children(self.proc.pid)

    def wait_for_workers(self, count: int) -> set[int]:
        _wait_until(lambda: len(self.current_workers()) == count, what=f"{count} workers")
        return self.current_workers()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(DEADLINE)


@contextlib.contextmanager
def start(argv: list[str], tmp_path: Path, workers: int | None) -> Iterator[Pool]:
    """Start *argv*, read its ``listening on`` line, wait for its *workers*; kill the
    parent and every worker it ever had on the way out."""
    stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}"
    seen: set[int] = set()
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert proc.stdout is not None
        line = _read_line(proc)
        assert line.startswith("listening on "), (line, stderr_path.read_text())
        port = int(line.rsplit(":", 1)[1])
        pool = Pool(proc, port, stderr_path, set())
        if workers is not None:
            pool.workers = pool.wait_for_workers(workers)
        seen |= pool.workers
        yield pool
        seen |= pool.current_workers()
    finally:
        seen |= _children(proc.pid)
        for pid in [proc.pid, *seen]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(DEADLINE)
        assert proc.stdout is not None
        proc.stdout.close()


def _read_line(proc: subprocess.Popen[bytes], timeout: float = DEADLINE) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line within {timeout} s (got {data!r})")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"stdout closed (got {data!r}, exit {proc.wait(5)})")
            data += chunk
    return data.decode()


def _echo(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def _answering_pid(port: int) -> int:
    """Connect to the pid server below and read the pid it answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(64):
            data += chunk
    return int(data)


PID_SERVER = textwrap.dedent(
    """
    import os, sys
    from asycamore.servicemodel import Protocol
    from asycamore.workers import WorkerPool

    class Pid(Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"%d" % os.getpid())
            transport.close()

    workers, mode, crash = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    pool = WorkerPool(workers, reuse_port=(mode == "reuseport"), stop_timeout=1.0)
    pool.min_uptime = 5.0
    pool.max_restart_delay = 0.4
    host, port = pool.bind_tcp("127.0.0.1", 0)[0][:2]

    def setup(service, worker):
        if crash == "setup":
            raise RuntimeError("setup failed on purpose")
        if crash == "loop":
            service.call_later(0.05, os._exit, 3)
        worker.listen(service, Pid)

    def ready():
        print(f"listening on {host}:{port}", flush=True)

    sys.exit(pool.run(setup, on_ready=ready))
    """
)


@pytest.fixture
def pid_server(tmp_path: Path) -> Path:
    script = tmp_path / "pid_server.py"
    script.write_text(PID_SERVER)
    return script


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "65", "-1", "abc", "1.5", "", " 2", "1_0", "\u0663"])
def test_bad_worker_counts_are_refused(value: str) -> None:
    result = subprocess.run(
        [*ASYCAMORE, "echo", "--workers", value],
        check=False,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--workers" in lines[0], result.stderr


@pytest.mark.parametrize("udp", [[], ["--udp"]], ids=["tcp", "udp"])
@pytest.mark.parametrize(
    "argv",
    [["--host", "256.1.1.1"], ["--host", "no-such-host.invalid"], ["--backend", "nonesuch"]],
)
def test_bad_address_or_backend_fails_before_any_worker_starts(
    argv: list[str], udp: list[str]
) -> None:
    result = subprocess.run(
        [*ASYCAMORE, "echo", "--workers", "2", *udp, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_a_port_in_use_fails_before_any_worker_starts(kind: int) -> None:
    udp = ["--udp"] if kind == socket.SOCK_DGRAM else []
    with socket.socket(socket.AF_INET, kind) as busy:  # no SO_REUSEPORT: nobody may share
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*ASYCAMORE, "echo", "--workers", "2", *udp, "--port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr


# -- serving -----------------------------------------------------------------------------


def test_echo_workers_serve_one_port_and_print_one_line(tmp_path: Path) -> None:
    with start([*ASYCAMORE, "echo", "--workers", "3"], tmp_path, workers=3) as pool:
        for i in range(20):
            assert _echo(pool.port, b"x%d" % i) == b"x%d" % i
        assert pool.stop() == 0
        assert pool.proc.stdout is not None
        assert pool.proc.stdout.read() == b""  # the one line only
        _wait_until(lambda: not any(map(_alive, pool.workers)), what="workers gone")
        assert pool.stderr() == ""


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_connections_are_spread_over_the_workers(
    pid_server: Path, tmp_path: Path, mode: str
) -> None:
    if mode == "reuseport" and not sys.platform.startswith("linux"):
        pytest.skip("SO_REUSEPORT balances connections on Linux only")
    with start([sys.executable, str(pid_server), "3", mode, "no"], tmp_path, 3) as pool:
        answered = [_answering_pid(pool.port) for _ in range(90)]
        assert set(answered) <= pool.workers
        if mode == "reuseport":
            # The kernel hashes each connection's addresses: with 90 connections from
            # as many source ports, a worker left out would be a 1-in-10^15 event.
            assert set(answered) == pool.workers
        assert pool.stop() == 0


def test_a_killed_worker_is_reported_and_replaced(tmp_path: Path) -> None:
    with start([*ASYCAMORE, "echo", "--workers", "2"], tmp_path, workers=2) as pool:
        victim = min(pool.workers)
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: "SIGKILL" in pool.stderr(), what="the report")
        report = pool.stderr()
        assert f"pid {victim}" in report and "starting a new one" in report
        now = pool.wait_for_workers(2)
        assert victim not in now and len(now & pool.workers) == 1
        for _ in range(20):  # every socket is served again, the victim's included
            assert _echo(pool.port) == b"ping"
        assert pool.stop() == 0
        _wait_until(lambda: not any(map(_alive, now)), what="workers gone")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_every_worker_gracefully(tmp_path: Path, signum: int) -> None:
    with start([*ASYCAMORE, "echo", "--workers", "2"], tmp_path, workers=2) as pool:
        clients = [socket.create_connection(("127.0.0.1", pool.port), timeout=5) for _ in range(8)]
        try:
            for client in clients:
                client.sendall(b"hello")
                assert client.recv(16) == b"hello"
            assert pool.stop(signum) == 0
            for client in clients:  # closed by the server, not reset
                assert client.recv(16) == b""
        finally:
            for client in clients:
                client.close()
        assert not any(map(_alive, pool.workers))
        assert "Traceback" not in pool.stderr()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", pool.port), timeout=2).close()


def test_workers_exit_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    with start([*ASYCAMORE, "echo", "--workers", "2"], tmp_path, workers=2) as pool:
        pool.proc.kill()
        pool.proc.wait(DEADLINE)
        _wait_until(lambda: not any(map(_alive, pool.workers)), 5.0, "orphans to exit")


def test_a_crash_looping_worker_is_restarted_with_a_growing_delay(
    pid_server: Path, tmp_path: Path
) -> None:
    with start(
        [sys.executable, str(pid_server), "1", "reuseport", "loop"], tmp_path, None
    ) as pool:
        time.sleep(1.5)
        reports = [line for line in pool.stderr().splitlines() if "starting a new one" in line]
        # Without the delay, a worker dying 50 ms after its start would be restarted
        # some 30 times in 1.5 s; with 0.1, 0.2, 0.4, 0.4... s between, a handful.
        assert 2 <= len(reports) <= 8, reports
        assert "in 0.4 s" in reports[-1]
        assert pool.stop() == 0


def test_a_worker_that_fails_setup_stops_the_pool(pid_server: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(pid_server), "2", "reuseport", "setup"],
        check=False,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "setup failed on purpose" in result.stderr
    assert "WorkerStartError" in result.stderr


def test_pool_arguments_are_checked() -> None:
    from asycamore.workers import WorkerPool

    for bad in (0, 65):
        with pytest.raises(ValueError, match="between 1 and 64"):
            WorkerPool(bad)
    for wrong in (1.5, "2", True):
        with pytest.raises(TypeError):
            WorkerPool(wrong)  # type: ignore[arg-type]


# -- with the other echo options ---------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_workers_serve_every_address_of_the_host(tmp_path: Path) -> None:
    argv = [*ASYCAMORE, "echo", "--workers", "2", "--host", "localhost"]
    with start(argv, tmp_path, workers=2) as pool:
        assert _echo(pool.port, b"v4") == b"v4"
        if _ipv6_loopback():
            with socket.create_connection(("::1", pool.port), timeout=5) as sock:
                sock.sendall(b"v6")
                assert sock.recv(16) == b"v6"
        assert pool.stop() == 0


def test_workers_serve_tls(tmp_path: Path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    argv = [*ASYCAMORE, "echo", "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key)]
    with start(argv, tmp_path, workers=2) as pool:
        for _ in range(4):
            with (
                socket.create_connection(("127.0.0.1", pool.port), timeout=5) as raw,
                client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"secret")
                assert tls.recv(16) == b"secret"
        assert pool.stop() == 0


def _udp_echo(port: int, payload: bytes) -> bytes:
    """One datagram from a fresh socket (a fresh source port), and its echo."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(payload, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65536)
    return data


def test_echo_workers_serve_udp_and_survive_a_killed_worker(tmp_path: Path) -> None:
    argv = [*ASYCAMORE, "echo", "--workers", "2", "--udp"]
    with start(argv, tmp_path, workers=2) as pool:
        for i in range(30):
            assert _udp_echo(pool.port, b"d%d" % i * 100) == b"d%d" % i * 100
        victim = min(pool.workers)
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: "SIGKILL" in pool.stderr(), what="the report")
        now = pool.wait_for_workers(2)
        assert victim not in now
        for i in range(30):  # the victim's socket is served again, by its replacement
            assert _udp_echo(pool.port, b"again %d" % i) == b"again %d" % i
        assert pool.stop() == 0
        _wait_until(lambda: not any(map(_alive, now)), what="workers gone")


PID_UDP_SERVER = textwrap.dedent(
    """
    import os, sys
    from asycamore.servicemodel import DatagramProtocol
    from asycamore.workers import WorkerPool

    class Pid(DatagramProtocol):
        def datagram_received(self, data, addr):
            self.transport.sendto(b"%d" % os.getpid(), addr)

    workers, mode = int(sys.argv[1]), sys.argv[2]
    pool = WorkerPool(workers, reuse_port=(mode == "reuseport"), stop_timeout=1.0)
    host, port = pool.bind_udp("127.0.0.1", 0)[0][:2]

    def ready():
        print(f"listening on {host}:{port}", flush=True)

    sys.exit(pool.run(lambda service, worker: worker.serve_udp(service, Pid), on_ready=ready))
    """
)


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_datagrams_reach_the_workers(tmp_path: Path, mode: str) -> None:
    # reuseport: spread over every worker, each client's datagrams on one; shared: any
    # idle worker answers (whichever reads first), and every datagram is answered.
    if mode == "reuseport" and not sys.platform.startswith("linux"):
        pytest.skip("SO_REUSEPORT balances datagrams on Linux only")
    script = tmp_path / "pid_udp_server.py"
    script.write_text(PID_UDP_SERVER)
    with start([sys.executable, str(script), "3", mode], tmp_path, 3) as pool:
        answered = [int(_udp_echo(pool.port, b"who")) for _ in range(90)]
        assert set(answered) <= pool.workers
        if mode == "reuseport":
            # As for connections: the kernel hashes each datagram's addresses, and 90
            # source ports leave no worker out but by a 1-in-10^15 chance.
            assert set(answered) == pool.workers
            # And each worker reads only its own socket: one client's datagrams all
            # reach the same worker (on a shared socket any idle worker may take one).
            for _ in range(10):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.settimeout(5)
                    pids = set()
                    for _ in range(6):
                        client.sendto(b"who", ("127.0.0.1", pool.port))
                        pids.add(int(client.recv(64)))
                    assert len(pids) == 1, pids
        assert pool.stop() == 0
