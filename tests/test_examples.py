"""The programs in examples/ run, as real subprocesses, and do what they say."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(path.name for path in EXAMPLES.glob("*.py"))


def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


@contextlib.contextmanager
def server(*args: str) -> Iterator[int]:
    """Start a server that prints ``listening on HOST:PORT``; yield the port; stop it
    with SIGTERM and check that it exits 0."""
    proc = subprocess.Popen(
        [sys.executable, *args, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the server did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert b"Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_all_examples_are_tested() -> None:
    assert SCRIPTS == [
        "chat_server.py",
        "echo_client.py",
        "echo_server.py",
        "many_clients.py",
        "nc.py",
        "proxy.py",
        "tls_echo_server.py",
        "udp_echo.py",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    result = run(str(EXAMPLES / script), "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_echo_server_and_client() -> None:
    with server(str(EXAMPLES / "echo_server.py")) as port:
        result = run(
            str(EXAMPLES / "echo_client.py"),
            "--port",
            str(port),
            "--connections",
            "20",
            "--count",
            "200",
            "--size",
            "3000",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4000 messages echoed on 20 connection(s)" in result.stdout
        assert "0 failure(s)" in result.stdout


def test_echo_client_against_asycamore_echo() -> None:
    with server("-m", "asycamore", "echo") as port:
        result = run(str(EXAMPLES / "echo_client.py"), "--port", str(port), "--count", "500")
        assert result.returncode == 0, result.stdout + result.stderr


def test_echo_client_reports_a_refused_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(str(EXAMPLES / "echo_client.py"), "--port", str(port), "--timeout", "10")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_echo_server_duration_is_bounded() -> None:
    started = time.monotonic()
    result = run(str(EXAMPLES / "echo_server.py"), "--duration", "0.3", timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("listening on 127.0.0.1:")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("target", ["asycamore", "example"])
def test_many_clients(target: str) -> None:
    args = (
        ("-m", "asycamore", "echo")
        if target == "asycamore"
        else (str(EXAMPLES / "echo_server.py"),)
    )
    with server(*args) as port:
        result = run(
            str(EXAMPLES / "many_clients.py"),
            "--port",
            str(port),
            "--connections",
            "300",
            "--rounds",
            "3",
            "--interval",
            "0.05",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "300 connections, 900/900 messages echoed" in result.stdout


def test_udp_echo_server_and_client() -> None:
    with server(str(EXAMPLES / "udp_echo.py"), "server") as port:
        result = run(
            str(EXAMPLES / "udp_echo.py"),
            "client",
            "--port",
            str(port),
            "--count",
            "200",
            "--size",
            "1200",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "200/200 datagrams echoed" in result.stdout


def test_udp_echo_client_against_asycamore_echo_udp() -> None:
    with server("-m", "asycamore", "echo", "--udp") as port:
        result = run(
            str(EXAMPLES / "udp_echo.py"), "client", "--port", str(port), "--size", "65507"
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_udp_echo_client_reports_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(str(EXAMPLES / "udp_echo.py"), "client", "--port", str(port))
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert "Traceback" not in result.stderr


class ChatUser:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def hear(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_chat_server() -> None:
    with server(str(EXAMPLES / "chat_server.py")) as port:
        alice = ChatUser(port)
        assert alice.hear().startswith("* welcome, guest")
        alice.say("/nick alice")
        assert alice.hear() == "* you are now alice"
        bob = ChatUser(port)
        assert bob.hear().startswith("* welcome, guest")
        assert alice.hear().endswith(" joined")
        bob.say("/nick bob")
        assert bob.hear() == "* you are now bob"
        assert alice.hear().endswith(" is now bob")
        alice.say("hello bob")
        assert bob.hear() == "<alice> hello bob"
        bob.sock.sendall(b"hi al")
        bob.sock.sendall(b"ice\n")  # one line in two pieces
        assert alice.hear() == "<bob> hi alice"
        bob.say("/who")
        assert bob.hear() == "* here: alice, bob"
        bob.say("/quit")
        assert bob.hear() == "* bye"
        assert bob.hear() == ""  # closed
        assert alice.hear() == "* bob left"
        alice.close()
        bob.close()


def test_chat_server_idle_timeout() -> None:
    with server(str(EXAMPLES / "chat_server.py"), "--idle-timeout", "0.3") as port:
        user = ChatUser(port)
        assert user.hear().startswith("* welcome")
        started = time.monotonic()
        assert user.hear() == "* disconnected for inactivity"
        assert user.hear() == ""
        assert 0.25 < time.monotonic() - started < 5
        user.close()


def test_tls_echo_server_self_test() -> None:
    result = run(str(EXAMPLES / "tls_echo_server.py"), "--self-test", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test: echoed" in result.stdout


def test_tls_echo_server_self_test_without_trustme(tmp_path: Path) -> None:
    """trustme is a test dependency: without it --self-test says how to get it, in one
    line, instead of a traceback."""
    (tmp_path / "trustme.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'trustme'\", name='trustme')\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = run(
        str(EXAMPLES / "tls_echo_server.py"),
        "--self-test",
        timeout=30,
        env={"PYTHONPATH": pythonpath},
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install trustme" in lines[0]
    assert "Traceback" not in result.stderr


def test_tls_echo_server_with_a_python_client(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    script = str(EXAMPLES / "tls_echo_server.py")
    with (
        server(script, "--cert", str(cert), "--key", str(key)) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"ping\n")
        assert tls.recv(5) == b"ping\n"


def test_proxy_self_test() -> None:
    """8 MiB through the proxy to an echo while the client does not read for a while:
    byte-exact, and the proxy buffers at most about a high-water mark per side."""
    result = run(str(EXAMPLES / "proxy.py"), "--self-test", timeout=90)
    assert result.returncode == 0, result.stderr
    assert "self-test: relayed" in result.stdout


def test_proxy_in_front_of_asycamore_echo() -> None:
    """The proxy relays to a real upstream (``asycamore echo``) both ways, and passes the
    client's half-close on: the echo comes back, then EOF."""
    with (
        server("-m", "asycamore", "echo") as upstream,
        server(str(EXAMPLES / "proxy.py"), "--upstream", f"127.0.0.1:{upstream}") as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        lines = b"".join(b"line %d\n" % i for i in range(1000))
        sock.sendall(lines)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    assert bytes(received) == lines


def nc_relay(port: int, payload: bytes, *, slow_for: float = 0.0) -> tuple[bytes, str, int]:
    """Pipe *payload* through ``nc.py --measure`` (stdin and stdout pipes) from a feeding
    thread; read its stdout (slowly, 4 KiB per 10 ms, for the first *slow_for* seconds).
    Return the sha256 of what came out, nc's stderr, and its exit status."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "nc.py"), "127.0.0.1", str(port), "--measure"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    feeder = threading.Thread(target=lambda: (proc.stdin.write(payload), proc.stdin.close()))
    feeder.start()
    killer = threading.Timer(90, proc.kill)  # bounded, whatever happens
    killer.start()
    try:
        digest = hashlib.sha256()
        started = time.monotonic()
        while True:
            slow = time.monotonic() - started < slow_for
            chunk = proc.stdout.read1(4096 if slow else 1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            if slow:
                time.sleep(0.01)
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=30)
        feeder.join(timeout=30)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return digest.digest(), stderr, proc.returncode


def peak_buffered(stderr: str) -> int:
    line = next(line for line in stderr.splitlines() if line.startswith("peak buffered:"))
    return int(line.split()[2])


def test_nc_through_asycamore_echo() -> None:
    """8 MiB from nc's stdin to ``asycamore echo`` and back to its stdout, byte-exact; the
    end of stdin is passed on as a half-close, and nc exits 0 once the echo has closed."""
    payload = os.urandom(8 << 20)
    with server("-m", "asycamore", "echo") as port:
        digest, stderr, status = nc_relay(port, payload)
    assert status == 0, stderr
    assert digest == hashlib.sha256(payload).digest()
    assert "Traceback" not in stderr


def test_nc_with_a_slow_consumer() -> None:
    """stdout read slowly for a while: the socket is not read while stdout's buffer is
    over its mark, nor stdin while the socket's is -- nc buffers about a high-water
    mark per direction (64 KiB each), not the payload."""
    payload = os.urandom(6 << 20)
    with server("-m", "asycamore", "echo") as port:
        digest, stderr, status = nc_relay(port, payload, slow_for=1.0)
    assert status == 0, stderr
    assert digest == hashlib.sha256(payload).digest()
    assert peak_buffered(stderr) <= 1 << 20, stderr


def test_nc_with_regular_files(tmp_path: Path) -> None:
    """A regular file as stdin and as stdout (which no backend can watch) works too."""
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(os.urandom(3 << 20) + b"end")
    with (
        server("-m", "asycamore", "echo") as port,
        source.open("rb") as stdin,
        target.open("wb") as stdout,
    ):
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "nc.py"), "127.0.0.1", str(port)],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()


def test_nc_reports_a_refused_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(str(EXAMPLES / "nc.py"), "127.0.0.1", str(port), timeout=30)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "refused" in lines[0]


@pytest.mark.parametrize("args", [(), ("127.0.0.1",), ("127.0.0.1", "99999"), ("h", "x")])
def test_nc_argument_errors(args: tuple[str, ...]) -> None:
    result = run(str(EXAMPLES / "nc.py"), *args, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nc.py: error:")
    assert result.stdout == ""
