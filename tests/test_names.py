"""Host names: resolution off the loop, Happy Eyeballs, every-address listening, and the
``asycamore echo`` host forms.

Only loopback addresses are used.  A name's addresses come from a ``socket.getaddrinfo``
patched for one made-up name within the test (every other lookup goes to the real
one); the peers are real sockets: a refused port (nobody listens), a slow one (a
listener whose backlog is full, so a SYN is not answered) and a good one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asycamore import create_dispatcher
from asycamore.dispatcher import IDispatchContext
from asycamore.servicemodel import Protocol, Service
from asycamore.tcpsocket import (
    CONNECTION_ATTEMPT_DELAY,
    ConnectError,
    Timers,
    connect_tcp,
    create_listening_socket,
    create_listening_sockets,
    listen_tcp,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="this machine has no IPv6 loopback (::1)")

NAME = "eyeballs.test"  # the made-up name the patched resolver answers
REAL_GETADDRINFO = socket.getaddrinfo


def _info(host: str, port: int) -> tuple[Any, ...]:
    if ":" in host:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (host, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))


@pytest.fixture
def fake_name(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``fake_name([(host, port), ...], delay=0, error=None)`` makes :data:`NAME`
    resolve to those addresses (after *delay* seconds, or fail with *error*); returns
    the list of threads' names the lookups ran in."""
    threads: list[str] = []

    def install(
        addresses: list[tuple[str, int]], delay: float = 0.0, error: Exception | None = None
    ) -> list[str]:
        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
            if host != NAME:
                return REAL_GETADDRINFO(host, port, *args, **kwargs)
            flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            threads.append(threading.current_thread().name)
            time.sleep(delay)
            if error is not None:
                raise error
            return [_info(h, p) for h, p in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return threads

    return install


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Client(Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.made: list[Any] = []
        self.failed: list[BaseException] = []
        self.data = b""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.made.append(transport.getpeername())

    def connection_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)

    def data_received(self, data: bytes) -> None:
        self.data += data


def _spin(
    context: IDispatchContext, timers: Timers, done: Callable[[], bool], timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        timers.run_due()
        context.dispatch_once(0.02)


def _refused_port(family: int = socket.AF_INET) -> int:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def good_server(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen(16)
        yield server


@contextlib.contextmanager
def slow_server() -> Iterator[int]:
    """A port whose listener never answers a new SYN: backlog 0, already full."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        time.sleep(0.05)
        try:
            yield int(server.getsockname()[1])
        finally:
            filler.close()


# -- Happy Eyeballs ------------------------------------------------------------------------


@needs_ipv6
def test_refused_first_address_falls_through_at_once(fake_name: Any) -> None:
    with good_server("127.0.0.1") as server, create_dispatcher() as context:
        clock = FakeClock()  # frozen: only a failure can start the second attempt
        timers = Timers(clock)
        fake_name([("::1", _refused_port(socket.AF_INET6)), server.getsockname()])
        client = Client()
        conn = connect_tcp(context, lambda: client, NAME, server.getsockname()[1], timers=timers)
        assert conn.connecting
        _spin(context, timers, lambda: bool(client.made or client.failed))
        assert client.made == [server.getsockname()]
        conn.write(b"through")
        peer, _ = server.accept()
        with peer:
            assert peer.recv(100) == b"through"
        conn.abort()


@needs_ipv6
def test_slow_first_address_is_overtaken_after_the_stagger(
    fake_name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asycamore")
    with (
        slow_server() as slow_port,
        good_server("::1") as server,
        create_dispatcher() as context,
    ):
        clock = FakeClock()  # the stagger timer fires only when the test says so
        timers = Timers(clock)
        good = server.getsockname()[:2]
        # IPv4 (slow) first, as the resolver put it; the next attempt must be IPv6
        # (families alternate), not the second IPv4 address.
        fake_name([("127.0.0.1", slow_port), ("127.0.0.2", slow_port), good])

        def tried() -> list[str]:
            return [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records if "trying" in r.msg]

        client = Client()
        conn = connect_tcp(context, lambda: client, NAME, server.getsockname()[1], timers=timers)
        _spin(context, timers, lambda: len(tried()) == 1)
        for _ in range(10):
            timers.run_due()
            context.dispatch_once(0.02)
        assert client.made == [] and client.failed == []  # the SYN is not answered
        assert tried() == [f"127.0.0.1:{slow_port}"]
        assert len(context) == 1  # the resolution's target is gone: one attempt
        clock.now += CONNECTION_ATTEMPT_DELAY * 0.9
        timers.run_due()
        assert len(tried()) == 1  # not before 250 ms
        clock.now += CONNECTION_ATTEMPT_DELAY * 0.2
        timers.run_due()
        assert tried() == [f"127.0.0.1:{slow_port}", f"[::1]:{good[1]}"]
        _spin(context, timers, lambda: bool(client.made))
        assert client.made[0][:2] == good
        # The loser was closed at once, and the third address never tried.
        assert len(context) == 1  # just the connection
        assert len(tried()) == 2
        assert conn.fileno() >= 0
        conn.abort()
        assert len(context) == 0


def test_every_attempts_error_is_reported(fake_name: Any) -> None:
    refused = [("127.0.0.1", _refused_port()), ("127.0.0.2", _refused_port())]
    if HAVE_IPV6:
        refused.insert(1, ("::1", _refused_port(socket.AF_INET6)))
    fake_name(refused)
    with create_dispatcher() as context:
        timers = Timers()
        client = Client()
        connect_tcp(context, lambda: client, NAME, 80, timers=timers, timeout=10)
        _spin(context, timers, lambda: bool(client.failed))
        (exc,) = client.failed
        assert isinstance(exc, ConnectError)
        assert isinstance(exc, OSError)
        assert exc.errno == errno.ECONNREFUSED
        # In RFC 8305 order (families alternated), each with its own error.
        tried = [address[0] for address, _ in exc.attempts]
        expected = ["127.0.0.1", "::1", "127.0.0.2"] if HAVE_IPV6 else ["127.0.0.1", "127.0.0.2"]
        assert tried == expected
        assert all(isinstance(e, ConnectionRefusedError) for _, e in exc.attempts)
        for host, port in refused:
            assert str(port) in str(exc) and host in str(exc)
        assert len(context) == 0


def test_a_name_that_does_not_resolve_reaches_connection_failed(fake_name: Any) -> None:
    fake_name([], error=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    with create_dispatcher() as context:
        timers = Timers()
        client = Client()
        conn = connect_tcp(context, lambda: client, NAME, 80, timers=timers)
        _spin(context, timers, lambda: bool(client.failed))
        assert isinstance(client.failed[0], socket.gaierror)
        assert conn.closed and len(context) == 0


def test_resolution_does_not_block_the_loop(fake_name: Any) -> None:
    with good_server() as server, Service() as service:
        threads = fake_name([server.getsockname()], delay=0.5)
        ticks: list[float] = []

        def tick() -> None:
            ticks.append(time.monotonic())
            service.call_later(0.02, tick)

        tick()
        client = Client()
        started = time.monotonic()
        conn = service.connect_tcp(lambda: client, NAME, server.getsockname()[1], timeout=10)
        assert time.monotonic() - started < 0.1  # returned at once
        assert conn.connecting and service.connection_count == 1
        deadline = time.monotonic() + 10
        while not client.made and time.monotonic() < deadline:
            service.run_once(0.05)
        assert client.made == [server.getsockname()]
        during = [t for t in ticks if t - started < 0.45]
        assert len(during) >= 5, f"the timer fired only {len(during)} times while resolving"
        assert threads and threads[0] != threading.main_thread().name


def test_a_numeric_host_needs_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_threads(self: threading.Thread) -> None:
        raise AssertionError("a thread was started for a numeric host")

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    with good_server() as server, create_dispatcher() as context:
        client = Client()
        conn = connect_tcp(context, lambda: client, *server.getsockname())
        assert conn.fileno() >= 0  # the socket exists at once
        _spin(context, Timers(), lambda: bool(client.made))
        conn.abort()
        if HAVE_IPV6:
            conn = connect_tcp(context, Client, "localhost", server.getsockname()[1])
            conn.abort()


def test_close_while_resolving_cancels_everything(fake_name: Any) -> None:
    fake_name([("127.0.0.1", 9)], delay=0.3)
    with create_dispatcher() as context:
        timers = Timers()
        client = Client()
        conn = connect_tcp(context, lambda: client, NAME, 9, timers=timers)
        conn.write(b"buffered meanwhile")
        assert len(context) == 1  # the resolution's wake-up target
        conn.close()
        assert [type(e) for e in client.failed] == [ConnectionAbortedError]
        assert len(context) == 0
        time.sleep(0.4)  # the worker finishes into a closed pair: nothing happens
        for _ in range(3):
            timers.run_due()
            context.dispatch_once(0.02)
        assert len(client.failed) == 1 and client.made == []


def test_a_connect_timeout_covers_resolution_and_attempts(fake_name: Any) -> None:
    with slow_server() as slow_port:
        fake_name([("127.0.0.1", slow_port)])
        with create_dispatcher() as context:
            timers = Timers()
            client = Client()
            connect_tcp(context, lambda: client, NAME, slow_port, timers=timers, timeout=0.3)
            _spin(context, timers, lambda: bool(client.failed))
            assert isinstance(client.failed[0], TimeoutError)
            assert len(context) == 0


def test_malformed_hosts_are_gaierror_not_unicodeerror() -> None:
    with create_dispatcher() as context:
        for host in ("127.0.0..1", "127..1", ".localhost", "a..b", "a" * 64, "a\udcffb", "a\0b"):
            with pytest.raises(socket.gaierror):
                connect_tcp(context, Client, host, 80)
            with pytest.raises(socket.gaierror):
                listen_tcp(context, Client, host, 0)
            with pytest.raises(socket.gaierror):
                create_listening_socket(host, 0)
        assert len(context) == 0


# -- every address ---------------------------------------------------------------------------


def _roundtrip(family: int, address: tuple[str, int], context: IDispatchContext) -> bytes:
    with socket.socket(family) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(b"hello")
        deadline = time.monotonic() + 5
        data = b""
        client.setblocking(False)
        while len(data) < 5 and time.monotonic() < deadline:
            context.dispatch_once(0.02)
            with contextlib.suppress(BlockingIOError):
                data += client.recv(100)
        return data


class Echo(Protocol):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@needs_ipv6
def test_listen_tcp_localhost_listens_on_both_loopbacks_on_one_port() -> None:
    with create_dispatcher() as context:
        listener = listen_tcp(context, Echo, "localhost", 0)
        hosts = [address[0] for address in listener.addresses]
        assert hosts == ["127.0.0.1", "::1"]
        port = listener.port
        assert {address[1] for address in listener.addresses} == {port}
        v6 = listener.sockets[1]
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert _roundtrip(socket.AF_INET, ("127.0.0.1", port), context) == b"hello"
        assert _roundtrip(socket.AF_INET6, ("::1", port), context) == b"hello"
        assert listener.accepted == 2
        listener.close()
        assert all(sock.fileno() == -1 for sock in listener.sockets)
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as probe:
                assert probe.connect_ex((host, port)) == errno.ECONNREFUSED


@needs_ipv6
def test_a_connection_limit_spans_every_address() -> None:
    with create_dispatcher() as context:
        listener = listen_tcp(context, Echo, "localhost", 0, max_connections=1)
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
            for _ in range(5):
                context.dispatch_once(0.02)
            assert listener.connection_count == 1
            assert not listener.accepting
            with socket.socket(socket.AF_INET6) as other:
                other.settimeout(5)
                other.connect(("::1", listener.port))  # the kernel's backlog takes it
                for _ in range(5):
                    context.dispatch_once(0.02)
                assert listener.accepted == 1  # but the listener does not accept it
        listener.close()


@needs_ipv6
def test_service_listens_and_connects_by_name() -> None:
    with Service() as service:
        listener = service.listen_tcp(Echo, "localhost", 0)
        assert len(listener.sockets) == 2
        clients = [Client(), Client()]
        for client in clients:
            service.connect_tcp(
                lambda client=client: client, "localhost", listener.port, timeout=5
            )
        deadline = time.monotonic() + 5
        while not all(c.made for c in clients) and time.monotonic() < deadline:
            service.run_once(0.05)
        assert all(c.made for c in clients)


def test_port_zero_on_several_addresses_is_one_free_port() -> None:
    socks = create_listening_sockets("", 0) if HAVE_IPV6 else create_listening_sockets(None, 0)
    try:
        assert len({sock.getsockname()[1] for sock in socks}) == 1
        assert socks[0].getsockname()[0] == "0.0.0.0"
    finally:
        for sock in socks:
            sock.close()


# -- asycamore echo: host and port forms ----------------------------------------------------


@contextlib.contextmanager
def echo(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asycamore", "echo", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the echo server did not start"
        yield proc.stdout.readline().decode()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert b"Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def _echo_tcp(family: int, host: str, port: int) -> None:
    with socket.socket(family) as client:
        client.settimeout(5)
        client.connect((host, port))
        client.sendall(b"ping")
        assert client.recv(10) == b"ping"


def _port_of(line: str) -> int:
    return int(line.rsplit(":", 1)[1])


@needs_ipv6
def test_cli_localhost_serves_both_addresses() -> None:
    with echo("--host", "localhost") as line:
        assert line.startswith("listening on 127.0.0.1:"), line
        port = _port_of(line)
        _echo_tcp(socket.AF_INET, "127.0.0.1", port)
        _echo_tcp(socket.AF_INET6, "::1", port)


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_cli_ipv6_with_or_without_brackets(host: str) -> None:
    with echo("--host", host) as line:
        assert line.startswith("listening on [::1]:"), line
        _echo_tcp(socket.AF_INET6, "::1", _port_of(line))


@pytest.mark.parametrize("host", ["", "0"])
def test_cli_wildcard_hosts_print_what_they_bound(host: str) -> None:
    with echo("--host", host) as line:
        assert line.startswith("listening on 0.0.0.0:"), line
        _echo_tcp(socket.AF_INET, "127.0.0.1", _port_of(line))


def _run_cli(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "asycamore", "echo", *args],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


BAD_HOSTS: list[str | bytes] = [
    "127.0.0..1",
    "127..1",
    ".localhost",
    "a..b",
    "a" * 64 + ".example",
    os.fsencode("a\udcffb"),  # a byte that is not UTF-8, as argv can carry it
    "[127.0.0.1]",
    "[::1",
    "::1]",
]


@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_cli_bad_host_exits_2_with_one_line(host: str | bytes, udp: bool) -> None:
    result = _run_cli("--host", host, *(["--udp"] if udp else []))
    assert result.returncode == 2, result
    assert result.stdout == b""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert b"bad address" in result.stderr


@pytest.mark.parametrize("port", [" 80 ", "\u0663", "1_000", "+80", "8 0", "65536", "-1", ""])
def test_cli_bad_port_exits_2_with_one_line(port: str) -> None:
    result = _run_cli("--port", port)
    assert result.returncode == 2, result
    assert result.stdout == b""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert b"port" in result.stderr


def test_cli_udp_with_tls_is_refused() -> None:
    result = _run_cli("--udp", "--tls-cert", "cert.pem", "--tls-key", "key.pem")
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr


@needs_ipv6
def test_localhost_failing_at_once_raises_like_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some kernels refuse a loopback connect inside connect() itself: then
    # connect_tcp raises, as it does for a numeric host, instead of calling the
    # handler before it has even returned.
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: errno.ECONNREFUSED)
    with create_dispatcher() as context:
        client = Client()
        with pytest.raises(ConnectError) as info:
            connect_tcp(context, lambda: client, "localhost", 9)
        assert [a[0] for a, _ in info.value.attempts] == ["127.0.0.1", "::1"]
        assert client.failed == [] and client.made == []
        assert len(context) == 0
        with pytest.raises(ConnectionRefusedError):
            connect_tcp(context, lambda: client, "127.0.0.1", 9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12: fork with threads
def test_a_forked_child_resolves_with_its_own_workers(fake_name: Any) -> None:
    with good_server() as server:
        fake_name([server.getsockname()])

        def connect_once() -> bool:
            with create_dispatcher() as context:
                timers = Timers()
                client = Client()
                connect_tcp(context, lambda: client, NAME, server.getsockname()[1], timers=timers)
                _spin(context, timers, lambda: bool(client.made or client.failed))
                return bool(client.made)

        assert connect_once()  # the parent's worker threads exist now
        pid = os.fork()
        if pid == 0:  # the child: the parent's workers are not here
            code = 1
            try:
                code = 0 if connect_once() else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
