"""``asycamore echo`` as users run it: a real subprocess, real sockets, every backend.

Every test is bounded: sockets have timeouts, loops have deadlines, and the server is
killed if it does not exit when told.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import asycamore

BACKENDS = [info.name for info in asycamore.list_backends() if info.available]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Linux reads a process's CPU time and RSS from /proc; macOS and the BSDs ask ps(1).
HAVE_PROC = Path("/proc/self/stat").exists()


def _ps(pid: int, field: str) -> str:
    result = subprocess.run(
        ["ps", "-o", f"{field}=", "-p", str(pid)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def _ps_cpu_seconds(text: str) -> float:
    """ps's cumulative CPU time, ``[[dd-]hh:]mm:ss[.ss]``, in seconds."""
    days, _, clock = text.rpartition("-")
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds + (int(days) * 86400 if days else 0)


@dataclass
class EchoServer:
    proc: subprocess.Popen[bytes]
    port: int
    host: str
    stderr_path: Path
    first_line: str

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        if not HAVE_PROC:
            return _ps_cpu_seconds(_ps(self.proc.pid, "time"))
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        if not HAVE_PROC:
            return int(_ps(self.proc.pid, "rss")) * 1024  # ps reports KiB
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the echo server did not exit within {timeout} s of {signum!r}")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"no 'listening on' line within {timeout} s")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise AssertionError(f"the echo server exited early ({proc.wait()})")
        data += chunk
    return data.decode()


@contextlib.contextmanager
def echo_server(
    tmp_path: Path,
    backend: str | None = None,
    host: str = "127.0.0.1",
    nofile: int | None = None,
) -> Iterator[EchoServer]:
    cmd = [sys.executable, "-m", "asycamore", "echo", "--host", host, "--port", "0"]
    if backend is not None:
        cmd += ["--backend", backend]
    stderr_path = tmp_path / f"echo-{time.monotonic_ns()}.err"

    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if hard != resource.RLIM_INFINITY:
                hard = max(hard, nofile)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=limit,  # noqa: PLW1509 - only setrlimit, before exec
        )
    try:
        line = _read_line(proc, 20.0)
        shown = f"[{host}]" if ":" in host else host
        assert line.startswith(f"listening on {shown}:"), line
        port = int(line.rsplit(":", 1)[1])
        yield EchoServer(proc, port, host, stderr_path, line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# -- a bounded multi-connection client -------------------------------------------------------


@dataclass
class _Peer:
    sock: socket.socket
    payload: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    shut: bool = False


def echo_many(
    server: EchoServer,
    payloads: list[bytes],
    *,
    seed: int = 0,
    deadline: float = 40.0,
    max_chunk: int = 16384,
) -> None:
    """Send each payload on its own connection in random chunks, half-close, and check
    that exactly the payload comes back, then EOF."""
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    peers = []
    try:
        for payload in payloads:
            sock = server.connect()
            sock.setblocking(False)
            peer = _Peer(sock, payload)
            peers.append(peer)
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
        open_count = len(peers)
        end = time.monotonic() + deadline
        while open_count:
            if time.monotonic() > end:
                done = sum(p.eof for p in peers)
                pytest.fail(
                    f"echo of {len(peers)} connections not done in {deadline} s ({done} finished)"
                )
            for key, mask in sel.select(0.5):
                peer = key.data
                if mask & selectors.EVENT_WRITE and not peer.shut:
                    if peer.sent < len(peer.payload):
                        size = rng.randint(1, max_chunk)
                        with contextlib.suppress(BlockingIOError):
                            peer.sent += peer.sock.send(peer.payload[peer.sent : peer.sent + size])
                    if peer.sent == len(peer.payload):
                        peer.sock.shutdown(socket.SHUT_WR)
                        peer.shut = True
                        sel.modify(peer.sock, selectors.EVENT_READ, peer)
                if mask & selectors.EVENT_READ:
                    try:
                        data = peer.sock.recv(rng.randint(1, 65536))
                    except BlockingIOError:
                        continue
                    if data:
                        peer.received += data
                        assert len(peer.received) <= len(peer.payload)
                    else:
                        peer.eof = True
                        open_count -= 1
                        sel.unregister(peer.sock)
        for i, peer in enumerate(peers):
            assert peer.shut, f"connection {i} closed before it sent everything"
            assert bytes(peer.received) == peer.payload, f"connection {i}: bytes differ"
    finally:
        sel.close()
        for peer in peers:
            peer.sock.close()


def _payloads(count: int, seed: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    payloads = []
    for i in range(count):
        size = rng.choice([0, 1, rng.randint(1, 4096), rng.randint(1, max_size)])
        start = rng.randrange(len(block))
        data = (block[start:] + block)[:size]
        payloads.append(struct.pack("!I", i)[: min(4, size)] + data[4:])
    return payloads


def _echo_once(server: EchoServer, data: bytes = b"ping", timeout: float = 10.0) -> None:
    with server.connect(timeout) as sock:
        sock.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            received += chunk
        assert received == data


def _repeated(block: bytes, offset: int, size: int) -> bytes:
    """*size* bytes at *offset* of *block* repeated forever."""
    out = bytearray()
    while len(out) < size:
        start = (offset + len(out)) % len(block)
        out += block[start : start + size - len(out)]
    return bytes(out)


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the command line ----------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_one_line_and_exits_0_on_signal(tmp_path: Path, signum: int) -> None:
    with echo_server(tmp_path) as server:
        _echo_once(server)
        assert server.stop(signum) == 0
        assert server.proc.stdout is not None
        assert server.proc.stdout.read() == b""  # exactly one line
        assert "Traceback" not in server.stderr()


def test_ipv6_host_is_printed_in_brackets(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not available")
    with echo_server(tmp_path, host="::1") as server:
        assert server.first_line.startswith("listening on [::1]:")
        _echo_once(server, b"over IPv6")
        assert server.stop() == 0


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asycamore", "echo", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["--backend", "no-such-backend"], False),
        (["--host", "999.1.1.1"], False),
        (["--host", "no-such-host.invalid"], False),
        (["--port", "65536"], True),
        (["--port", "http"], True),
        (["--bogus"], True),
        (["--tls-cert", "cert.pem"], True),
        (["--udp", "--tls-cert", "cert.pem", "--tls-key", "key.pem"], True),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], usage: bool) -> None:
    """A usage error is echo's and points to its help; bad input found while starting
    (a backend, an address) is the program's, with nothing to look up in --help."""
    result = _run_cli(*args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    if usage:
        assert lines[0].startswith("asycamore echo: error: "), lines[0]
        assert lines[0].endswith(" (see asycamore echo --help)"), lines[0]
    else:
        assert lines[0].startswith("asycamore: error: "), lines[0]
        assert "--help" not in lines[0]


def test_port_in_use_exits_2_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run_cli("--port", str(busy.getsockname()[1]))
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "in use" in result.stderr


# -- load, on every backend ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_hundreds_of_connections_random_chunks(tmp_path: Path, backend: str) -> None:
    with echo_server(tmp_path, backend) as server:
        echo_many(server, _payloads(300, seed=len(backend), max_size=96 * 1024), seed=7)
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_peer_that_does_not_read(tmp_path: Path, backend: str) -> None:
    """The server stops reading from a peer that does not read: its memory stays
    bounded, it keeps serving others, and every byte arrives once the peer reads."""
    block = random.Random(1).randbytes(1 << 20)
    with echo_server(tmp_path, backend) as server:
        rss_before = server.rss_bytes()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect((server.host, server.port))
        sock.setblocking(False)
        sent = 0
        limit = 256 << 20
        stalled_since = None
        deadline = time.monotonic() + 20
        while sent < limit and time.monotonic() < deadline:
            try:
                sent += sock.send(block[sent % len(block) :])
                stalled_since = None
            except BlockingIOError:
                if stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > 0.5:
                    break
                select.select([], [sock], [], 0.05)
        assert sent < limit, "the server never stopped reading"
        rss_growth = server.rss_bytes() - rss_before
        assert rss_growth < 16 << 20, f"server RSS grew by {rss_growth} bytes"
        _echo_once(server, b"still serving others")
        cpu = server.cpu_seconds()
        time.sleep(0.5)
        assert server.cpu_seconds() - cpu < 0.2, "the server spins while the peer stalls"
        # Now read everything back.
        received = 0
        sock.setblocking(True)
        sock.settimeout(10)
        while received < sent:
            chunk = sock.recv(1 << 20)
            assert chunk, "EOF before every byte came back"
            assert chunk == _repeated(block, received, len(chunk)), f"bytes differ at {received}"
            received += len(chunk)
        assert received == sent
        sock.close()
        assert server.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_resets_do_not_disturb_the_others(tmp_path: Path, backend: str) -> None:
    with echo_server(tmp_path, backend) as server:
        # Peers that reset while the server has data for them, some mid-flight.
        for i in range(30):
            sock = server.connect()
            sock.sendall(b"x" * (1 + i * 10_000))
            if i % 2:
                time.sleep(0.001)
            _rst(sock)
        # Peers that reset while the server cannot write to them.
        stuck = []
        for _ in range(5):
            sock = server.connect()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(200):
                    sock.send(b"y" * 65536)
            stuck.append(sock)
        time.sleep(0.1)
        for sock in stuck:
            _rst(sock)
        echo_many(server, _payloads(40, seed=3, max_size=32 * 1024), seed=3)
        assert server.proc.poll() is None
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()


def test_half_close_keeps_echoing_until_everything_is_back(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(3 << 20)
    with echo_server(tmp_path) as server, server.connect() as sock:
        sock.setblocking(False)
        sent = 0
        received = bytearray()
        deadline = time.monotonic() + 20
        eof = False
        while not eof:
            assert time.monotonic() < deadline
            want_write = [sock] if sent < len(data) else []
            readable, writable, _ = select.select([sock], want_write, [], 1)
            if writable:
                sent += sock.send(data[sent : sent + 200_000])
                if sent == len(data):
                    sock.shutdown(socket.SHUT_WR)
            if readable:
                chunk = sock.recv(1 << 20)
                received += chunk
                eof = not chunk
        assert bytes(received) == data


# -- signals ----------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_connections_and_exits_0(tmp_path: Path, signum: int, backend: str) -> None:
    with echo_server(tmp_path, backend) as server:
        idle = [server.connect() for _ in range(20)]
        busy = server.connect()
        busy.sendall(b"z" * 100_000)
        time.sleep(0.2)
        started = time.monotonic()
        assert server.stop(signum) == 0
        assert time.monotonic() - started < 5
        for sock in idle:
            assert sock.recv(10) == b""  # closed by the server: EOF
            sock.close()
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := busy.recv(1 << 20):
                received += len(chunk)
        assert received == 100_000  # flushed before closing
        busy.close()


def test_idle_server_does_not_spin(tmp_path: Path) -> None:
    with echo_server(tmp_path) as server:
        conns = [server.connect() for _ in range(50)]
        _echo_once(server)
        time.sleep(0.2)
        cpu = server.cpu_seconds()
        time.sleep(1.0)
        assert server.cpu_seconds() - cpu < 0.1
        for sock in conns:
            sock.close()
        assert server.stop() == 0


# -- descriptor limits ----------


def test_fd_exhaustion_backs_off_and_recovers(tmp_path: Path) -> None:
    nofile = 40
    with echo_server(tmp_path, nofile=nofile) as server:
        clients = []
        for _ in range(2 * nofile):
            clients.append(server.connect())
        time.sleep(0.3)
        # The connections the server could accept are served...
        for sock in clients:
            sock.sendall(b"hello")
        served = 0
        waiting = list(clients)
        deadline = time.monotonic() + 2.0
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(waiting, [], [], 0.2)
            for sock in readable:
                assert sock.recv(5) == b"hello"
                served += 1
                waiting.remove(sock)
        assert nofile // 2 < served < nofile
        # ...and it does not spin on the listener it cannot accept from.
        cpu = server.cpu_seconds()
        time.sleep(1.0)
        assert server.cpu_seconds() - cpu < 0.15
        assert "pausing accepts" in server.stderr()
        assert server.stderr().count("pausing accepts") == 1
        for sock in clients:
            sock.close()
        # Descriptors are free again: new connections are accepted and echoed.
        time.sleep(0.5)
        for _ in range(10):
            _echo_once(server, b"recovered", timeout=10)
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()


@pytest.mark.skipif("select" not in BACKENDS, reason="no select backend")
def test_select_backend_closes_connections_past_fd_setsize(tmp_path: Path) -> None:
    total = 1100
    _raise_nofile(total + 200)
    with echo_server(tmp_path, "select", nofile=total + 200) as server:
        clients = [server.connect() for _ in range(total)]
        refused = 0
        for sock in clients[-80:]:
            sock.settimeout(5)
            try:
                sock.sendall(b"?")
                if sock.recv(1) == b"":
                    refused += 1
            except (ConnectionResetError, BrokenPipeError):
                refused += 1
        assert refused > 50
        for sock in clients[:50]:
            sock.sendall(b"early")
            assert sock.recv(5) == b"early"
        for sock in clients:
            sock.close()
        time.sleep(0.3)
        for _ in range(5):
            _echo_once(server, b"after")
        stderr = server.stderr()
        assert "FD_SETSIZE" in stderr
        assert len(stderr.splitlines()) < 20  # rate-limited
        assert server.stop() == 0
        assert "Traceback" not in stderr


def test_ps_cpu_time_parsing() -> None:
    """The fallback that macOS/BSD runs use instead of /proc (ps's time formats)."""
    assert _ps_cpu_seconds("0:00.12") == pytest.approx(0.12)
    assert _ps_cpu_seconds("01:02:03") == 3723
    assert _ps_cpu_seconds("1-00:00:01") == 86401


@pytest.mark.skipif(not HAVE_PROC or shutil.which("ps") is None, reason="needs /proc and ps")
def test_ps_fallback_agrees_with_proc() -> None:
    rss_kib = int(_ps(os.getpid(), "rss"))
    statm = int(Path("/proc/self/statm").read_text().split()[1]) * PAGE // 1024
    assert abs(rss_kib - statm) < max(statm // 10, 1024)
    _ps_cpu_seconds(_ps(os.getpid(), "time"))  # parses what this system's ps prints
