"""SPEC.md, third wave, "One shape for every transport entry point", rule by rule.

Written against the contract, not against the code:

1. every entry point that creates a transport takes a protocol *factory*; an instance is
   a ``TypeError`` at the call that says to pass a factory, and leaves nothing behind;
   ``start_tls`` keeps taking the protocol itself; return values keep their kind;
2. arguments are checked at the call (``TypeError`` for a type, ``ValueError`` for a
   value, the message names the argument), never later inside a handler, and a refused
   call leaves nothing open or registered;
3. a failure to listen, bind or connect names the address (``127.0.0.1:PORT``,
   ``[::1]:PORT``, a Unix socket's path) in an ``OSError`` that keeps its errno;
4. ``Connection`` and ``TLSConnection`` satisfy ``tcpsocket.StreamTransport`` and
   ``Service`` tracks the transport its protocol sees;
5. ``Listener`` and ``DatagramEndpoint`` have ``.port`` and ``.address``;
6. ``Service.call_every``.

Everything is on loopback; every wait is bounded by a deadline.  "Nothing left open"
is checked with the process's descriptor table (``/proc/self/fd``), the context's
``len()`` and the service's ``listeners``/``endpoints``/``connections``, while the
exception (and so its traceback's frames, which would keep a leaked socket alive) is
still held.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gc
import logging
import math
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asycamore
from asycamore import tcpsocket, udpsocket
from asycamore.servicemodel import DatagramProtocol, LineProtocol, Protocol, Service
from asycamore.tcpsocket import Connection, Listener, Timers
from asycamore.testing import MockClock
from asycamore.udpsocket import DatagramEndpoint

BACKENDS = [info.name for info in asycamore.list_backends() if info.available]
HAVE_PROC_FDS = os.path.isdir("/proc/self/fd")
STREAM_TRANSPORT_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
    "set_write_buffer_limits",
    "get_extra_info",
    "is_closing",
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1) here")


# -- protocols --------------------------------------------------------------------------------


class StreamRecorder(Protocol):
    """Records every callback."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.made: list[Any] = []
        self.lost: list[BaseException | None] = []
        self.failed: list[BaseException] = []
        self.eof = 0
        self.keep_open = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.made.append(transport)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof += 1
        return self.keep_open  # true: stay open for writing (half-close)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def connection_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)

    def handshake_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)

    @property
    def ended(self) -> bool:
        return bool(self.lost or self.failed)


class StreamEcho(StreamRecorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(data)


class DuckHandler:
    """A handler that is no subclass of Protocol: callbacks only (not callable)."""

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass

    def error_received(self, exc: OSError) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        pass


class DgramRecorder(DatagramProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.made: list[Any] = []
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.made.append(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((bytes(data), addr))

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class DgramEcho(DgramRecorder):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        assert self.transport is not None
        self.transport.sendto(data, addr)


def factory_of(kind: str, base: type) -> tuple[Callable[[], Any], list[Any]]:
    """A factory of *base* protocols, as the class itself or as a lambda; the list gets
    every protocol it made."""
    made: list[Any] = []
    if kind == "class":

        class Made(base):  # type: ignore[valid-type,misc]
            def __init__(self) -> None:
                super().__init__()
                made.append(self)

        return Made, made
    return (lambda: made.append(base()) or made[-1]), made


# -- certificates -----------------------------------------------------------------------------


@dataclass
class PKI:
    ca: trustme.CA
    server: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def pki() -> PKI:
    ca = trustme.CA()
    return PKI(ca, ca.issue_cert("localhost", "127.0.0.1", "::1"))


# -- descriptors, leaks, pumping ---------------------------------------------------------------


def open_fds() -> set[int]:
    """The process's open descriptors (without the one the listing itself used)."""
    if not HAVE_PROC_FDS:
        return set()
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            os.fstat(int(name))
            fds.add(int(name))
    return fds


def describe_fds(fds: set[int]) -> str:
    out = []
    for fd in sorted(fds):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd} (gone)")
    return ", ".join(out)


def dispose(obj: Any) -> None:
    """Close whatever a call that should have raised returned."""
    if isinstance(obj, list | tuple):
        for item in obj:
            dispose(item)
        return
    for name in ("abort", "close"):
        method = getattr(obj, name, None)
        if method is not None:
            with contextlib.suppress(Exception):
                method()
            return


def raises_at_call(
    expected: type[BaseException] | tuple[type[BaseException], ...],
    pattern: str | None,
    call: Callable[[], Any],
) -> BaseException:
    """Call; it must raise *expected* with a message matching *pattern* (case-blind).

    If it returns instead, what it returned is closed and the test fails.  The
    exception is returned (and with it its traceback: keep it while checking leaks).
    """
    try:
        result = call()
    except expected as exc:
        if pattern is not None:
            assert re.search(pattern, str(exc), re.IGNORECASE), (
                f"{type(exc).__name__}({str(exc)!r}): the message should match {pattern!r}"
            )
        return exc
    dispose(result)
    names = (
        expected.__name__ if isinstance(expected, type) else "/".join(e.__name__ for e in expected)
    )
    pytest.fail(f"the call did not raise {names} (it returned {result!r})")


@dataclass
class Snapshot:
    fds: set[int]
    registered: int


def pump_context(
    context: Any, until: Callable[[], bool], timers: Timers | None = None, timeout: float = 8.0
) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached in time"
        if timers is not None:
            timers.run_due()
        context.dispatch_once(0.01)


def pump_service(service: Service, until: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached in time"
        service.run_once(0.01)


def run_for(service: Service, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        service.run_once(min(0.01, max(0.0, deadline - time.monotonic())))


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


# -- the environment an entry point is called in ----------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short directory for Unix socket paths (pytest's tmp_path may be too long)."""
    path = tempfile.mkdtemp(prefix="one-shape-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Peers:
    """Live peers a connect can target, made before any snapshot."""

    directory: str
    tcp: socket.socket
    unix: socket.socket
    unix_path: str
    udp: socket.socket

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])


@pytest.fixture
def peers(short_dir: str) -> Iterator[Peers]:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    unix_path = os.path.join(short_dir, "peer.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    yield Peers(short_dir, tcp, unix, unix_path, udp)
    for sock in (tcp, unix, udp):
        sock.close()


@dataclass
class Env:
    level: str  # "transport" or "service"
    peers: Peers
    pki: PKI
    context: Any = None
    service: Service | None = None
    timers: Timers = field(default_factory=Timers)
    spare_tcp: socket.socket | None = None
    spare_udp: socket.socket | None = None
    paths: list[str] = field(default_factory=list)

    @property
    def dispatcher(self) -> Any:
        return self.service.dispatcher if self.service is not None else self.context

    def new_path(self) -> str:
        path = os.path.join(self.peers.directory, f"l{len(self.paths)}.sock")
        self.paths.append(path)
        return path

    def snapshot(self) -> Snapshot:
        gc.collect()
        return Snapshot(open_fds(), len(self.dispatcher))

    def assert_nothing_left(self, before: Snapshot) -> None:
        new = open_fds() - before.fds
        assert not new, f"descriptors left open by a refused call: {describe_fds(new)}"
        assert len(self.dispatcher) == before.registered, "a refused call left a registration"
        if self.service is not None:
            assert not self.service.listeners, self.service.listeners
            assert not self.service.endpoints, self.service.endpoints
            assert not self.service.connections, self.service.connections
        for path in self.paths:
            assert not os.path.exists(path), f"a refused call left the socket file {path}"

    def pump(self, until: Callable[[], bool], timeout: float = 8.0) -> None:
        if self.service is not None:
            pump_service(self.service, until, timeout)
        else:
            pump_context(self.context, until, self.timers, timeout)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
        if self.context is not None:
            self.context.close()
        for sock in (self.spare_tcp, self.spare_udp):
            if sock is not None:
                sock.close()


@pytest.fixture
def make_env(peers: Peers, pki: PKI) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(level: str, backend: str | None = None) -> Env:
        spare_tcp = socket.socket()
        spare_tcp.bind(("127.0.0.1", 0))
        spare_tcp.listen(8)
        spare_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spare_udp.bind(("127.0.0.1", 0))
        if level == "transport":
            env = Env(level, peers, pki, context=asycamore.create_dispatcher(backend))
        else:
            service = Service(backend)
            env = Env(level, peers, pki, service=service, timers=service.timers)
        env.spare_tcp, env.spare_udp = spare_tcp, spare_udp
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


# -- the entry points -------------------------------------------------------------------------

_D: Any = object()  # "the default" for host and port


def _hp(host: Any, port: Any, default_port: int) -> tuple[Any, Any]:
    return ("127.0.0.1" if host is _D else host), (default_port if port is _D else port)


def t_connect_tcp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    h, pt = _hp(host, port, e.peers.tcp_port)
    return tcpsocket.connect_tcp(e.context, p, h, pt, timers=e.timers, **kw)


def t_connect_tls(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    kw.setdefault("ssl", e.pki.client_context())
    return t_connect_tcp(e, p, host, port, **kw)


def t_connect_unix(e: Env, p: Any, path: str | None = None, **kw: Any) -> Any:
    return tcpsocket.connect_unix(e.context, p, path or e.peers.unix_path, timers=e.timers, **kw)


def t_listen_tcp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    h, pt = _hp(host, port, 0)
    return tcpsocket.listen_tcp(e.context, p, h, pt, timers=e.timers, **kw)


def t_listen_tls(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    kw.setdefault("ssl", e.pki.server_context())
    return t_listen_tcp(e, p, host, port, **kw)


def t_listen_unix(e: Env, p: Any, path: str | None = None, **kw: Any) -> Any:
    return tcpsocket.listen_unix(e.context, p, path or e.new_path(), timers=e.timers, **kw)


def t_bind_udp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    h, pt = _hp(host, port, 0)
    return udpsocket.bind_udp(e.context, p, h, pt, **kw)


def t_bind_udp_all(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    h, pt = _hp(host, port, 0)
    return udpsocket.bind_udp_all(e.context, p, h, pt, **kw)


def t_connect_udp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    h, pt = _hp(host, port, e.peers.udp_port)
    return udpsocket.connect_udp(e.context, p, h, pt, **kw)


def s_connect_tcp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    assert e.service is not None
    h, pt = _hp(host, port, e.peers.tcp_port)
    return e.service.connect_tcp(p, h, pt, **kw)


def s_connect_tls(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    kw.setdefault("ssl", e.pki.client_context())
    return s_connect_tcp(e, p, host, port, **kw)


def s_connect_unix(e: Env, p: Any, path: str | None = None, **kw: Any) -> Any:
    assert e.service is not None
    return e.service.connect_unix(p, path or e.peers.unix_path, **kw)


def s_listen_tcp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    assert e.service is not None
    h, pt = _hp(host, port, 0)
    return e.service.listen_tcp(p, h, pt, **kw)


def s_listen_tls(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    kw.setdefault("ssl", e.pki.server_context())
    return s_listen_tcp(e, p, host, port, **kw)


def s_listen_unix(e: Env, p: Any, path: str | None = None, **kw: Any) -> Any:
    assert e.service is not None
    return e.service.listen_unix(p, path or e.new_path(), **kw)


def s_listen_socket(e: Env, p: Any, **kw: Any) -> Any:
    assert e.service is not None
    return e.service.listen_socket(p, e.spare_tcp, **kw)


def s_bind_udp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    assert e.service is not None
    h, pt = _hp(host, port, 0)
    return e.service.bind_udp(p, h, pt, **kw)


def s_bind_udp_all(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    assert e.service is not None
    h, pt = _hp(host, port, 0)
    return e.service.bind_udp_all(p, h, pt, **kw)


def s_connect_udp(e: Env, p: Any, host: Any = _D, port: Any = _D, **kw: Any) -> Any:
    assert e.service is not None
    h, pt = _hp(host, port, e.peers.udp_port)
    return e.service.connect_udp(p, h, pt, **kw)


def s_serve_udp_socket(e: Env, p: Any, **kw: Any) -> Any:
    assert e.service is not None
    return e.service.serve_udp_socket(p, e.spare_udp, **kw)


@dataclass(frozen=True)
class Entry:
    level: str
    name: str
    kind: str  # "stream" or "datagram"
    call: Callable[..., Any]
    addressed: bool = False  # takes host and port
    connects: bool = False  # host and port are a peer's

    def __str__(self) -> str:
        return f"{self.level}.{self.name}"


ENTRIES = [
    Entry("transport", "connect_tcp", "stream", t_connect_tcp, True, True),
    Entry("transport", "connect_tcp(ssl)", "stream", t_connect_tls, True, True),
    Entry("transport", "connect_unix", "stream", t_connect_unix),
    Entry("transport", "listen_tcp", "stream", t_listen_tcp, True),
    Entry("transport", "listen_tcp(ssl)", "stream", t_listen_tls, True),
    Entry("transport", "listen_unix", "stream", t_listen_unix),
    Entry("transport", "bind_udp", "datagram", t_bind_udp, True),
    Entry("transport", "bind_udp_all", "datagram", t_bind_udp_all, True),
    Entry("transport", "connect_udp", "datagram", t_connect_udp, True, True),
    Entry("service", "connect_tcp", "stream", s_connect_tcp, True, True),
    Entry("service", "connect_tcp(ssl)", "stream", s_connect_tls, True, True),
    Entry("service", "connect_unix", "stream", s_connect_unix),
    Entry("service", "listen_tcp", "stream", s_listen_tcp, True),
    Entry("service", "listen_tcp(ssl)", "stream", s_listen_tls, True),
    Entry("service", "listen_unix", "stream", s_listen_unix),
    Entry("service", "listen_socket", "stream", s_listen_socket),
    Entry("service", "bind_udp", "datagram", s_bind_udp, True),
    Entry("service", "bind_udp_all", "datagram", s_bind_udp_all, True),
    Entry("service", "connect_udp", "datagram", s_connect_udp, True, True),
    Entry("service", "serve_udp_socket", "datagram", s_serve_udp_socket),
]
ADDRESSED = [entry for entry in ENTRIES if entry.addressed]
BY_NAME = {str(entry): entry for entry in ENTRIES}


def entry_params(entries: list[Entry]) -> Any:
    return pytest.mark.parametrize("entry", entries, ids=[str(e) for e in entries])


def valid_factory(entry: Entry) -> type:
    return StreamRecorder if entry.kind == "stream" else DgramRecorder


# =============================================================================================
# 1. A protocol factory, never an instance
# =============================================================================================

INSTANCES: dict[str, Callable[[str], Any]] = {
    "base-instance": lambda kind: Protocol() if kind == "stream" else DatagramProtocol(),
    "duck-instance": lambda kind: DuckHandler(),
}


@entry_params(ENTRIES)
@pytest.mark.parametrize("instance", list(INSTANCES))
def test_an_instance_is_a_type_error_at_the_call(
    entry: Entry, instance: str, make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    protocol = INSTANCES[instance](entry.kind)
    assert not callable(protocol)
    before = env.snapshot()
    exc = raises_at_call(TypeError, r"factor", lambda: entry.call(env, protocol))
    env.assert_nothing_left(before)
    del exc
    # The refusal broke nothing: the same entry point works with a factory afterwards.
    result = entry.call(env, valid_factory(entry))
    dispose(result)


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_transport_level_tcp_echo_with_factories(
    asycamore_backend: str, factory_kind: str, make_env: Callable[..., Env]
) -> None:
    env = make_env("transport", asycamore_backend)
    servers_factory, servers = factory_of(factory_kind, StreamEcho)
    listener = tcpsocket.listen_tcp(
        env.context, servers_factory, "127.0.0.1", 0, timers=env.timers
    )
    assert isinstance(listener, Listener)
    port = listener.sock.getsockname()[1]
    client_factory, clients = factory_of(factory_kind, StreamRecorder)
    conn = tcpsocket.connect_tcp(env.context, client_factory, "127.0.0.1", port, timers=env.timers)
    assert isinstance(conn, Connection)
    env.pump(lambda: bool(clients) and bool(clients[0].made))
    assert len(clients) == 1, "the factory is called once per connection"
    assert clients[0].made == [conn], "the protocol's transport is the one connect_tcp returned"
    conn.write(b"ping")
    env.pump(lambda: bytes(clients[0].data) == b"ping")
    assert len(servers) == 1
    conn.close()
    env.pump(lambda: bool(clients[0].lost) and bool(servers[0].lost))
    listener.close()


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_transport_level_unix_echo_with_factories(
    factory_kind: str, make_env: Callable[..., Env]
) -> None:
    env = make_env("transport")
    path = env.new_path()
    listener = tcpsocket.listen_unix(env.context, StreamEcho, path, timers=env.timers)
    assert isinstance(listener, Listener)
    client_factory, clients = factory_of(factory_kind, StreamRecorder)
    conn = tcpsocket.connect_unix(env.context, client_factory, path, timers=env.timers)
    assert isinstance(conn, Connection)
    conn.write(b"unix")
    env.pump(lambda: bool(clients) and bytes(clients[0].data) == b"unix")
    assert clients[0].made == [conn]
    conn.close()
    env.pump(lambda: bool(clients[0].lost))
    listener.close()


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_transport_level_udp_echo_with_factories(
    factory_kind: str, make_env: Callable[..., Env]
) -> None:
    env = make_env("transport")
    server = udpsocket.bind_udp(env.context, DgramEcho, "127.0.0.1", 0)
    assert isinstance(server, DatagramEndpoint)
    client_factory, clients = factory_of(factory_kind, DgramRecorder)
    client = udpsocket.connect_udp(
        env.context, client_factory, "127.0.0.1", server.sock.getsockname()[1]
    )
    assert isinstance(client, DatagramEndpoint)
    assert len(clients) == 1 and clients[0].made == [client]
    client.sendto(b"datagram")
    env.pump(lambda: bool(clients[0].datagrams))
    assert clients[0].datagrams[0][0] == b"datagram"
    endpoints = udpsocket.bind_udp_all(env.context, DgramEcho, "127.0.0.1", 0)
    assert isinstance(endpoints, list) and endpoints
    assert all(isinstance(endpoint, DatagramEndpoint) for endpoint in endpoints)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(0)
        peer.sendto(b"all", endpoints[0].sock.getsockname())
        got: list[bytes] = []

        def answered() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.append(peer.recv(100))
            return bool(got)

        env.pump(answered)
        assert got == [b"all"]
    for endpoint in [server, client, *endpoints]:
        endpoint.close()


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_transport_level_tls_echo_with_factories(
    factory_kind: str, make_env: Callable[..., Env], pki: PKI
) -> None:
    env = make_env("transport")
    listener = tcpsocket.listen_tcp(
        env.context, StreamEcho, "127.0.0.1", 0, ssl=pki.server_context(), timers=env.timers
    )
    client_factory, clients = factory_of(factory_kind, StreamRecorder)
    tls = tcpsocket.connect_tcp(
        env.context, client_factory, "127.0.0.1", listener.sock.getsockname()[1],
        ssl=pki.client_context(), timers=env.timers,
    )  # fmt: skip
    assert isinstance(tls, tcpsocket.TLSConnection)
    tls.write(b"secret")
    env.pump(lambda: bool(clients) and bytes(clients[0].data) == b"secret")
    assert clients[0].made == [tls]
    tls.abort()
    listener.close()


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_service_tcp_echo_with_factories(asycamore_backend: str, factory_kind: str) -> None:
    with Service(asycamore_backend) as service:
        server_factory, servers = factory_of(factory_kind, StreamEcho)
        listener = service.listen_tcp(server_factory, "127.0.0.1", 0)
        assert isinstance(listener, Listener)
        client_factory, clients = factory_of(factory_kind, StreamRecorder)
        conn = service.connect_tcp(client_factory, "127.0.0.1", listener.sock.getsockname()[1])
        assert isinstance(conn, Connection)
        conn.write(b"ping")
        pump_service(service, lambda: bool(clients) and bytes(clients[0].data) == b"ping")
        assert len(clients) == 1 and len(servers) == 1
        assert clients[0].made == [conn]
        conn.close()
        pump_service(service, lambda: bool(clients[0].lost) and bool(servers[0].lost))


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_service_unix_echo_with_factories(factory_kind: str, short_dir: str) -> None:
    path = os.path.join(short_dir, "svc.sock")
    with Service() as service:
        listener = service.listen_unix(StreamEcho, path)
        assert isinstance(listener, Listener)
        client_factory, clients = factory_of(factory_kind, StreamRecorder)
        conn = service.connect_unix(client_factory, path)
        assert isinstance(conn, Connection)
        conn.write(b"unix")
        pump_service(service, lambda: bool(clients) and bytes(clients[0].data) == b"unix")
        assert clients[0].made == [conn]


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_service_listen_socket_with_factories(factory_kind: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with Service() as service:
        server_factory, servers = factory_of(factory_kind, StreamEcho)
        listener = service.listen_socket(server_factory, sock)
        assert isinstance(listener, Listener)
        with socket.create_connection(sock.getsockname(), timeout=5) as peer:
            peer.sendall(b"hello")
            peer.setblocking(False)
            got = bytearray()

            def echoed() -> bool:
                with contextlib.suppress(BlockingIOError):
                    got.extend(peer.recv(100))
                return bytes(got) == b"hello"

            pump_service(service, echoed)
        assert len(servers) == 1


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_service_udp_with_factories(factory_kind: str) -> None:
    with Service() as service:
        server = service.bind_udp(DgramEcho, "127.0.0.1", 0)
        assert isinstance(server, DatagramEndpoint)
        client_factory, clients = factory_of(factory_kind, DgramRecorder)
        client = service.connect_udp(client_factory, "127.0.0.1", server.sock.getsockname()[1])
        assert isinstance(client, DatagramEndpoint)
        assert len(clients) == 1 and clients[0].made == [client]
        client.sendto(b"udp")
        pump_service(service, lambda: bool(clients[0].datagrams))
        assert clients[0].datagrams[0][0] == b"udp"

        endpoints = service.bind_udp_all(DgramEcho, "127.0.0.1", 0)
        assert isinstance(endpoints, list) and endpoints
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        served_factory, served = factory_of(factory_kind, DgramEcho)
        endpoint = service.serve_udp_socket(served_factory, raw)
        assert isinstance(endpoint, DatagramEndpoint) and len(served) == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.setblocking(False)
            for target in (endpoints[0].sock.getsockname(), raw.getsockname()):
                peer.sendto(b"hop", target)
                got: list[bytes] = []

                def answered(got: list[bytes] = got) -> bool:
                    with contextlib.suppress(BlockingIOError):
                        got.append(peer.recv(100))
                    return bool(got)

                pump_service(service, answered)
                assert got == [b"hop"]


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_service_tls_echo_with_factories(factory_kind: str, pki: PKI) -> None:
    with Service() as service:
        server_factory, servers = factory_of(factory_kind, StreamEcho)
        listener = service.listen_tcp(server_factory, "127.0.0.1", 0, ssl=pki.server_context())
        client_factory, clients = factory_of(factory_kind, StreamRecorder)
        tls = service.connect_tcp(
            client_factory, "127.0.0.1", listener.sock.getsockname()[1], ssl=pki.client_context()
        )
        assert isinstance(tls, tcpsocket.TLSConnection)
        tls.write(b"over tls")
        pump_service(service, lambda: bool(clients) and bytes(clients[0].data) == b"over tls")
        assert clients[0].made == [tls]
        assert len(servers) == 1 and isinstance(servers[0].made[0], tcpsocket.TLSConnection)


class StartTLSServer(StreamRecorder):
    """``STARTTLS`` -> ``OK`` and the upgrade; over TLS, echoes."""

    service: ClassVar[Service]
    context: ClassVar[ssl.SSLContext]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        if isinstance(self.transport, tcpsocket.TLSConnection):
            self.transport.write(data)
        elif data == b"STARTTLS\n":
            self.transport.write(b"OK\n")
            self.service.start_tls(self.transport, self.context, server_side=True)


def test_start_tls_keeps_taking_a_protocol_instance(pki: PKI) -> None:
    """start_tls hands an existing connection to a protocol: the protocol itself."""
    with Service() as service:
        servers: list[StartTLSServer] = []

        class Server(StartTLSServer):
            def __init__(self) -> None:
                super().__init__()
                servers.append(self)

        Server.service, Server.context = service, pki.server_context()
        listener = service.listen_tcp(Server, "127.0.0.1", 0)
        first = StreamRecorder()
        plain = service.connect_tcp(lambda: first, "127.0.0.1", listener.sock.getsockname()[1])
        plain.write(b"STARTTLS\n")
        pump_service(service, lambda: bytes(first.data) == b"OK\n")
        second = StreamRecorder()  # an instance, not a factory
        tls = service.start_tls(
            plain, pki.client_context(), server_hostname="localhost", protocol=second
        )
        assert isinstance(tls, tcpsocket.TLSConnection)
        tls.write(b"upgraded")
        pump_service(service, lambda: bytes(second.data) == b"upgraded")
        assert second.made == [tls]
        # Service tracks the transports the protocols see: the TLS ones now, both sides.
        seen = {id(second.transport), id(servers[0].transport)}
        assert isinstance(servers[0].transport, tcpsocket.TLSConnection)
        tracked = {id(conn) for conn in service.connections}
        assert tracked == seen, (service.connections, second.transport, servers[0].transport)


PROCESS_AND_PIPES = ["spawn", "connect_read_pipe", "connect_write_pipe"]


@pytest.mark.parametrize("method", PROCESS_AND_PIPES)
def test_processes_and_pipes_refuse_an_instance(method: str, make_env: Callable[..., Env]) -> None:
    """The third wave's spawn and connect_*_pipe take a factory too (skipped until they
    exist)."""
    env = make_env("service")
    service = env.service
    if not hasattr(service, method):
        pytest.skip(f"Service.{method} does not exist yet")
    from asycamore import servicemodel

    base = getattr(servicemodel, "ProcessProtocol", Protocol) if method == "spawn" else Protocol
    instance = base()
    r, w = os.pipe()
    try:
        calls: dict[str, Callable[[], Any]] = {
            "spawn": lambda: service.spawn(instance, [sys.executable, "-c", "pass"]),
            "connect_read_pipe": lambda: service.connect_read_pipe(instance, r),
            "connect_write_pipe": lambda: service.connect_write_pipe(instance, w),
        }
        before = env.snapshot()
        exc = raises_at_call(TypeError, r"factor", calls[method])
        env.assert_nothing_left(before)
        os.fstat(r)  # the caller's pipe is left open
        os.fstat(w)
        del exc
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.parametrize("factory_kind", ["class", "lambda"])
def test_connect_read_pipe_with_a_factory(factory_kind: str) -> None:
    with Service() as service:
        if not hasattr(service, "connect_read_pipe"):
            pytest.skip("Service.connect_read_pipe does not exist yet")
        r, w = os.pipe()
        try:
            factory, made = factory_of(factory_kind, StreamRecorder)
            transport = service.connect_read_pipe(factory, r)
            assert len(made) == 1 and made[0].made == [transport]
            os.write(w, b"piped")
            pump_service(service, lambda: bytes(made[0].data) == b"piped")
            transport.close()
        finally:
            os.close(w)


# =============================================================================================
# 2. Arguments checked at the call
# =============================================================================================

BAD_PORTS: list[tuple[Any, type[Exception]]] = [
    ("80", TypeError),
    (b"80", TypeError),
    (80.0, TypeError),
    (70000, ValueError),
    (65536, ValueError),
    (-1, ValueError),
]
BAD_HOSTS: list[Any] = [123, b"127.0.0.1", 1.5, ("127.0.0.1",)]


@entry_params(ADDRESSED)
@pytest.mark.parametrize(("port", "error"), BAD_PORTS, ids=repr)
def test_a_bad_port_is_refused_at_the_call(
    entry: Entry, port: Any, error: type[Exception], make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(
        error, r"\bport\b", lambda: entry.call(env, valid_factory(entry), port=port)
    )
    env.assert_nothing_left(before)
    del exc


@entry_params([entry for entry in ADDRESSED if entry.connects])
def test_a_connect_to_port_none_is_a_type_error(
    entry: Entry, make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(
        TypeError, r"\bport\b", lambda: entry.call(env, valid_factory(entry), port=None)
    )
    env.assert_nothing_left(before)
    del exc


@entry_params(ADDRESSED)
@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
def test_a_host_that_is_not_a_str_is_a_type_error(
    entry: Entry, host: Any, make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(
        TypeError, r"\bhost\b", lambda: entry.call(env, valid_factory(entry), host=host)
    )
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize("level", ["transport", "service"])
@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"local_port": "80"}, TypeError, "local_port"),
        ({"local_port": 70000}, ValueError, "local_port"),
        ({"local_host": 123}, TypeError, "local_host"),
        ({"local_host": b"127.0.0.1"}, TypeError, "local_host"),
    ],
    ids=["local_port='80'", "local_port=70000", "local_host=123", "local_host=bytes"],
)
def test_connect_udp_local_address_arguments_are_named(
    level: str,
    options: dict[str, Any],
    error: type[Exception],
    name: str,
    make_env: Callable[..., Env],
) -> None:
    """The message names the argument: connect_udp's local_port/local_host, not "port"."""
    env = make_env(level)
    entry = BY_NAME[f"{level}.connect_udp"]
    before = env.snapshot()
    exc = raises_at_call(error, rf"\b{name}\b", lambda: entry.call(env, DgramRecorder, **options))
    env.assert_nothing_left(before)
    del exc


NON_INT_PORTS = st.one_of(
    st.text(max_size=6),
    st.binary(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(0, 65535), max_size=2),
    st.tuples(st.integers(0, 65535)),
    st.decimals(allow_nan=False, allow_infinity=False),
)
OUT_OF_RANGE_PORTS = st.one_of(st.integers(max_value=-1), st.integers(min_value=65536))
NON_STR_HOSTS = st.one_of(
    st.integers(),
    st.binary(max_size=16),
    st.floats(),
    st.lists(st.text(max_size=4), max_size=2),
    st.tuples(st.text(max_size=4)),
)
_QUICK = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@entry_params(ADDRESSED)
def test_every_bad_port_and_host_property(entry: Entry, make_env: Callable[..., Env]) -> None:
    """Every non-int port is a TypeError, every int outside 0-65535 a ValueError, every
    host that is not a str/None a TypeError; each names its argument and leaves nothing."""
    env = make_env(entry.level)
    before = env.snapshot()

    @_QUICK
    @given(st.one_of(
        st.tuples(st.just("port"), NON_INT_PORTS, st.just(TypeError)),
        st.tuples(st.just("port"), OUT_OF_RANGE_PORTS, st.just(ValueError)),
        st.tuples(st.just("host"), NON_STR_HOSTS, st.just(TypeError)),
    ))  # fmt: skip
    def check(case: tuple[str, Any, type[Exception]]) -> None:
        argument, value, error = case
        exc = raises_at_call(
            error,
            rf"\b{argument}\b",
            lambda: entry.call(env, valid_factory(entry), **{argument: value}),
        )
        env.assert_nothing_left(before)
        del exc

    check()


class Port(enum.IntEnum):
    ANY = 0


@entry_params([e for e in ADDRESSED if e.name in ("listen_tcp", "bind_udp", "connect_tcp")])
def test_an_int_subclass_port_is_an_int(entry: Entry, make_env: Callable[..., Env]) -> None:
    """An IntEnum member is an int in 0-65535: accepted (not refused, nor passed on to
    getaddrinfo, which takes exact ints only)."""
    env = make_env(entry.level)
    port = (
        enum.IntEnum("PeerPort", {"PEER": env.peers.tcp_port})["PEER"]
        if entry.connects
        else Port.ANY
    )
    result = entry.call(env, valid_factory(entry), port=port)
    dispose(result)
    raises_at_call(
        ValueError,
        r"\bport\b",
        lambda: entry.call(env, valid_factory(entry), port=enum.IntEnum("Big", {"X": 70000})["X"]),
    )


# -- str where bytes are wanted ------------------------------------------------------------------


@dataclass
class Pair:
    service: Service
    conn: Any  # what connect_tcp returned
    clients: list[StreamRecorder]
    servers: list[StreamRecorder]
    listener: Listener

    @property
    def client(self) -> StreamRecorder:
        return self.clients[0]

    @property
    def server(self) -> StreamRecorder:
        return self.servers[0]


def make_pair(service: Service, pki: PKI | None, *, wait: bool = True) -> Pair:
    servers: list[StreamRecorder] = []
    clients: list[StreamRecorder] = []
    listener = service.listen_tcp(
        lambda: servers.append(StreamRecorder()) or servers[-1],
        "127.0.0.1",
        0,
        ssl=None if pki is None else pki.server_context(),
    )
    conn = service.connect_tcp(
        lambda: clients.append(StreamRecorder()) or clients[-1],
        "127.0.0.1",
        listener.sock.getsockname()[1],
        ssl=None if pki is None else pki.client_context(),
    )
    pair = Pair(service, conn, clients, servers, listener)
    if wait:
        pump_service(
            service, lambda: bool(clients and clients[0].made and servers and servers[0].made)
        )
    return pair


WRITE_SITUATIONS = [
    "plain-client-open",
    "plain-server-open",
    "plain-client-connecting",
    "tls-client-open",
    "tls-server-open",
    "tls-client-handshaking",
]


@pytest.mark.parametrize("situation", WRITE_SITUATIONS)
def test_write_of_str_says_to_encode(situation: str, pki: PKI) -> None:
    """Refused at the call -- also while connecting or handshaking, when the data would
    otherwise only be buffered and fail later inside a handler -- and nothing of it is
    sent: the next bytes written arrive alone."""
    tls, side, state = situation.split("-")
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None, wait=state == "open")
        if state == "open":
            transport = pair.client.transport if side == "client" else pair.server.transport
        else:
            transport = pair.conn
            assert transport.is_closing() is False
        raises_at_call(TypeError, r"encode", lambda: transport.write("text"))
        transport.write(b"bytes")
        peers = pair.servers if side == "client" else pair.clients
        pump_service(service, lambda: bool(peers) and len(peers[0].data) >= 5)
        run_for(service, 0.05)
        assert bytes(peers[0].data) == b"bytes"
        assert not pair.client.ended and not pair.server.ended


@pytest.mark.parametrize("tls", ["plain", "tls"])
def test_writelines_of_str_is_a_type_error(tls: str, pki: PKI) -> None:
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None)
        transport = pair.client.transport
        raises_at_call(TypeError, None, lambda: transport.writelines(["text"]))
        transport.writelines([b"by", b"tes"])
        pump_service(service, lambda: len(pair.server.data) >= 5)
        assert bytes(pair.server.data) == b"bytes"


@pytest.mark.parametrize("tls", ["plain", "tls"])
def test_writelines_with_one_str_writes_nothing(tls: str, pki: PKI) -> None:
    """The check is made before anything is written: a refused writelines() sends none
    of its chunks."""
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None)
        transport = pair.client.transport
        raises_at_call(TypeError, None, lambda: transport.writelines([b"partial", "text"]))
        transport.write(b"next")
        pump_service(service, lambda: len(pair.server.data) >= 4)
        run_for(service, 0.05)
        assert bytes(pair.server.data) == b"next"


@pytest.mark.parametrize(
    "situation", ["plain-open", "plain-connecting", "tls-open", "tls-handshaking"]
)
def test_bytes_likes_are_still_accepted(situation: str, pki: PKI) -> None:
    tls, state = situation.split("-")
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None, wait=state == "open")
        transport = pair.conn
        transport.write(bytearray(b"ab"))
        transport.write(memoryview(b"cd"))
        transport.writelines([bytearray(b"e"), memoryview(b"f"), b"g"])
        pump_service(service, lambda: bool(pair.servers) and len(pair.server.data) >= 7)
        assert bytes(pair.server.data) == b"abcdefg"


@pytest.mark.parametrize("tls", ["plain", "tls"])
def test_write_of_str_on_a_closed_transport_is_still_refused(tls: str, pki: PKI) -> None:
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None)
        transport = pair.client.transport
        transport.close()
        raises_at_call(TypeError, r"encode", lambda: transport.write("text"))


class Lines(LineProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []

    def line_received(self, line: bytes) -> None:
        self.lines.append(line)


def test_send_line_of_str_says_to_encode() -> None:
    with Service() as service:
        servers: list[Lines] = []
        listener = service.listen_tcp(
            lambda: servers.append(Lines()) or servers[-1], "127.0.0.1", 0
        )
        client = Lines()
        service.connect_tcp(lambda: client, "127.0.0.1", listener.sock.getsockname()[1])
        pump_service(service, lambda: bool(servers) and client.transport is not None)
        raises_at_call(TypeError, r"encode", lambda: client.send_line("text"))
        client.send_line(b"bytes")
        pump_service(service, lambda: bool(servers[0].lines))
        assert servers[0].lines == [b"bytes"]


def test_send_line_of_str_without_a_transport_says_to_encode() -> None:
    """Checked at the call even before the protocol has a transport."""
    raises_at_call(TypeError, r"encode", lambda: Lines().send_line("text"))


@pytest.mark.parametrize("which", ["bound", "connected", "closed"])
def test_sendto_of_str_says_to_encode(which: str) -> None:
    with Service() as service, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        if which == "connected":
            endpoint = service.connect_udp(DgramRecorder, *peer.getsockname())
            addr = None
        else:
            endpoint = service.bind_udp(DgramRecorder, "127.0.0.1", 0)
            addr = peer.getsockname()
        if which == "closed":
            endpoint.close()
            pump_service(service, lambda: not service.endpoints)
        if addr is None:
            raises_at_call(TypeError, r"encode", lambda: endpoint.sendto("text"))
        else:
            raises_at_call(TypeError, r"encode", lambda: endpoint.sendto("text", addr))
        if which != "closed":
            endpoint.sendto(b"bytes", addr)
            data, _ = peer.recvfrom(100)
            assert data == b"bytes", "the refused str must not have been sent or queued"


# -- water marks ----------------------------------------------------------------------------------

WATER_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"high_water": -1}, ValueError, r"\bhigh_water\b"),
    ({"low_water": -1}, ValueError, r"\blow_water\b"),
    ({"high_water": 1000, "low_water": 5000}, ValueError, r"\b(high|low)_water\b"),
    ({"high_water": "1000"}, TypeError, r"\bhigh_water\b"),
]
WATER_IDS = ["high=-1", "low=-1", "low>high", "high='1000'"]


@entry_params(ENTRIES)
@pytest.mark.parametrize(("options", "error", "pattern"), WATER_CASES, ids=WATER_IDS)
def test_bad_water_marks_are_refused_at_the_call(
    entry: Entry,
    options: dict[str, Any],
    error: type[Exception],
    pattern: str,
    make_env: Callable[..., Env],
) -> None:
    """Also by a listener, whose marks would otherwise only be used at accept time."""
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(error, pattern, lambda: entry.call(env, valid_factory(entry), **options))
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize(("options", "error", "pattern"), WATER_CASES, ids=WATER_IDS)
def test_bad_water_marks_of_a_service(
    options: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    gc.collect()
    before = open_fds()
    exc = raises_at_call(error, pattern, lambda: Service(**options))
    new = open_fds() - before
    assert not new, f"Service() left descriptors open: {describe_fds(new)}"
    del exc


@pytest.mark.parametrize("name", ["service.listen_tcp", "service.connect_tcp", "service.bind_udp"])
def test_a_low_water_above_the_services_high_water_is_refused(
    name: str, make_env: Callable[..., Env]
) -> None:
    """The service's default high_water and the call's low_water, together: low > high."""
    env = make_env("service")
    assert env.service is not None
    env.service.close()
    env.service = Service(high_water=1000)
    before = env.snapshot()
    entry = BY_NAME[name]
    exc = raises_at_call(
        ValueError,
        r"\b(high|low)_water\b",
        lambda: entry.call(env, valid_factory(entry), low_water=5000),
    )
    env.assert_nothing_left(before)
    del exc


MARK = st.one_of(st.none(), st.integers(-3, 3), st.integers(-(2**40), 2**40))


def marks_are_valid(high: int | None, low: int | None) -> bool:
    if high is not None and high < 0:
        return False
    if low is not None and low < 0:
        return False
    return not (high is not None and low is not None and low > high)


def test_water_marks_property(make_env: Callable[..., Env]) -> None:
    """Over every (high_water, low_water), None included: refused at the call exactly
    when one is negative or low > high; accepted otherwise."""
    env = make_env("transport")
    before = env.snapshot()

    @_QUICK
    @given(MARK, MARK)
    def check(high: int | None, low: int | None) -> None:
        call = lambda: udpsocket.bind_udp(  # noqa: E731
            env.context, DgramRecorder, "127.0.0.1", 0, high_water=high, low_water=low
        )
        if marks_are_valid(high, low):
            dispose(call())
        else:
            exc = raises_at_call(ValueError, r"\b(high|low)_water\b", call)
            del exc
        env.assert_nothing_left(before)

    check()


def test_set_write_buffer_limits_property() -> None:
    with Service() as service:
        pair = make_pair(service, None)
        transport = pair.client.transport

        @_QUICK
        @given(MARK, MARK)
        def check(high: int | None, low: int | None) -> None:
            if marks_are_valid(high, low):
                transport.set_write_buffer_limits(high=high, low=low)
            else:
                raises_at_call(
                    ValueError, None, lambda: transport.set_write_buffer_limits(high=high, low=low)
                )

        check()
        raises_at_call(TypeError, None, lambda: transport.set_write_buffer_limits(high="1000"))


# -- timeouts -------------------------------------------------------------------------------------

NAN = float("nan")
TIMEOUT_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("transport.connect_tcp", {"timeout": -1}, ValueError, r"\btimeout\b"),
    ("transport.connect_tcp", {"timeout": NAN}, ValueError, r"\btimeout\b"),
    ("transport.connect_tcp", {"timeout": "5"}, TypeError, r"\btimeout\b"),
    ("transport.connect_unix", {"timeout": -0.5}, ValueError, r"\btimeout\b"),
    (
        "transport.connect_tcp(ssl)",
        {"handshake_timeout": -1},
        ValueError,
        r"\bhandshake_timeout\b",
    ),
    ("transport.connect_tcp(ssl)", {"shutdown_timeout": NAN}, ValueError, r"\bshutdown_timeout\b"),
    (
        "transport.listen_tcp(ssl)",
        {"handshake_timeout": NAN},
        ValueError,
        r"\bhandshake_timeout\b",
    ),
    ("service.connect_tcp", {"timeout": -1}, ValueError, r"\btimeout\b"),
    ("service.connect_tcp", {"timeout": NAN}, ValueError, r"\btimeout\b"),
    ("service.connect_tcp", {"timeout": "5"}, TypeError, r"\btimeout\b"),
    ("service.connect_tcp", {"idle_timeout": -1}, ValueError, r"\bidle_timeout\b"),
    ("service.connect_tcp", {"idle_timeout": NAN}, ValueError, r"\bidle_timeout\b"),
    ("service.connect_unix", {"timeout": NAN}, ValueError, r"\btimeout\b"),
    ("service.connect_tcp(ssl)", {"handshake_timeout": NAN}, ValueError, r"\bhandshake_timeout\b"),
    ("service.listen_tcp", {"idle_timeout": -1}, ValueError, r"\bidle_timeout\b"),
    ("service.listen_tcp", {"idle_timeout": NAN}, ValueError, r"\bidle_timeout\b"),
    ("service.listen_tcp(ssl)", {"handshake_timeout": NAN}, ValueError, r"\bhandshake_timeout\b"),
    ("service.listen_tcp(ssl)", {"handshake_timeout": -1}, ValueError, r"\bhandshake_timeout\b"),
    ("service.listen_tcp(ssl)", {"shutdown_timeout": -1}, ValueError, r"\bshutdown_timeout\b"),
    ("service.listen_unix", {"idle_timeout": -1}, ValueError, r"\bidle_timeout\b"),
    ("service.listen_socket", {"idle_timeout": NAN}, ValueError, r"\bidle_timeout\b"),
]


@pytest.mark.parametrize(
    ("name", "options", "error", "pattern"),
    TIMEOUT_CASES,
    ids=[f"{name}-{next(iter(o))}={next(iter(o.values()))!r}" for name, o, _, _ in TIMEOUT_CASES],
)
def test_bad_timeouts_are_refused_at_the_call(
    name: str,
    options: dict[str, Any],
    error: type[Exception],
    pattern: str,
    make_env: Callable[..., Env],
) -> None:
    entry = BY_NAME[name]
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(error, pattern, lambda: entry.call(env, valid_factory(entry), **options))
    env.assert_nothing_left(before)
    del exc


SERVICE_TIMEOUT_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"stop_timeout": -1}, ValueError, r"\bstop_timeout\b"),
    ({"stop_timeout": NAN}, ValueError, r"\bstop_timeout\b"),
    ({"stop_timeout": "5"}, TypeError, r"\bstop_timeout\b"),
    ({"idle_timeout": NAN}, ValueError, r"\bidle_timeout\b"),
    ({"idle_timeout": -1}, ValueError, r"\bidle_timeout\b"),
]


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    SERVICE_TIMEOUT_CASES,
    ids=[f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _, _ in SERVICE_TIMEOUT_CASES],
)
def test_bad_service_timeouts(
    options: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    gc.collect()
    before = open_fds()
    exc = raises_at_call(error, pattern, lambda: Service(**options))
    new = open_fds() - before
    assert not new, f"a refused Service() left descriptors open: {describe_fds(new)}"
    del exc


@pytest.mark.parametrize("timeout", [-1, NAN], ids=repr)
def test_a_bad_stop_timeout_is_refused_by_stop(timeout: float) -> None:
    with Service() as service:
        raises_at_call(ValueError, r"timeout", lambda: service.stop(timeout))
        assert not service.stopping


def test_service_timeouts_property() -> None:
    """stop_timeout and idle_timeout: negative or NaN refused, positive finite taken."""

    @settings(max_examples=30, deadline=None)
    @given(
        st.sampled_from(["stop_timeout", "idle_timeout"]),
        st.floats(allow_nan=True, allow_infinity=False) | st.integers(-(10**6), 10**6),
    )
    def check(name: str, value: float) -> None:
        if value > 0:
            Service(**{name: value}).close()
        elif value < 0 or math.isnan(value):
            gc.collect()
            before = open_fds()
            exc = raises_at_call(ValueError, rf"\b{name}\b", lambda: Service(**{name: value}))
            assert not open_fds() - before
            del exc

    check()


def test_a_bad_stop_timeout_from_another_thread_is_refused_in_that_thread() -> None:
    """stop() may be called from any thread: its argument is still checked at the
    call, in the caller's thread, not later inside the service's loop."""
    with Service() as service:
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                service.serve_forever(handle_signals=False)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while not service.running:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        try:
            raises_at_call(ValueError, r"timeout", lambda: service.stop(-1))
            time.sleep(0.05)
            assert service.running and not service.stopping and thread.is_alive()
        finally:
            service.stop()
            thread.join(5)
        assert not thread.is_alive() and not errors, errors


def test_dispatch_once_keeps_polling_on_a_negative_timeout(asycamore_backend: str) -> None:
    """The rule is for transport and Service timeouts, not dispatch_once's."""
    with asycamore.create_dispatcher(asycamore_backend) as context:
        assert context.dispatch_once(-1) == 0


# -- a server given a client context ------------------------------------------------------------

CLIENT_CONTEXTS: dict[str, Callable[[], ssl.SSLContext]] = {
    "PROTOCOL_TLS_CLIENT": lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
    "create_default_context": ssl.create_default_context,
}
SERVER_CONTEXT_HINT = r"PROTOCOL_TLS_SERVER|CLIENT_AUTH"


@pytest.mark.parametrize(
    "name", ["transport.listen_tcp", "service.listen_tcp", "service.listen_socket"]
)
@pytest.mark.parametrize("client_context", list(CLIENT_CONTEXTS))
def test_a_server_given_a_client_context_says_which_to_make(
    name: str, client_context: str, make_env: Callable[..., Env]
) -> None:
    entry = BY_NAME[name]
    env = make_env(entry.level)
    before = env.snapshot()
    exc = raises_at_call(
        (ValueError, TypeError),
        SERVER_CONTEXT_HINT,
        lambda: entry.call(env, StreamRecorder, ssl=CLIENT_CONTEXTS[client_context]()),
    )
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize("client_context", list(CLIENT_CONTEXTS))
def test_start_tls_server_side_with_a_client_context_says_which_to_make(
    client_context: str,
) -> None:
    with Service() as service:
        pair = make_pair(service, None)
        raises_at_call(
            (ValueError, TypeError),
            SERVER_CONTEXT_HINT,
            lambda: service.start_tls(
                pair.server.transport, CLIENT_CONTEXTS[client_context](), server_side=True
            ),
        )


# -- register() of an incomplete target ---------------------------------------------------------


def _minimal_plugin() -> type:
    from asycamore.backends.base import DispatcherBase

    class MinimalPlugin(DispatcherBase):
        """A third-party backend on the public base, with a kernel that only records."""

        name = "one-shape-minimal"
        priority = 0

        def __init__(self) -> None:
            super().__init__()
            self.kernel: dict[int, int] = {}

        @classmethod
        def is_available(cls) -> bool:
            return True

        def kernel_add(self, fd: int, events: int) -> None:
            self.kernel[fd] = events

        def kernel_modify(self, fd: int, old: int, new: int) -> None:
            self.kernel[fd] = new

        def kernel_remove(self, fd: int, events: int) -> None:
            self.kernel.pop(fd, None)

        def kernel_poll(self, timeout: float | None) -> list[Any]:
            return []

    return MinimalPlugin


def make_context(backend: str) -> Any:
    if backend == "plugin-on-base":
        return _minimal_plugin()()
    return asycamore.create_dispatcher(backend)


class FilenoOnly:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


class ReadOnly(FilenoOnly):
    def handle_read_event(self) -> None:
        pass


class NoFileno:
    def handle_read_event(self) -> None:
        pass

    def handle_write_event(self) -> None:
        pass


class Complete(ReadOnly):
    def handle_write_event(self) -> None:
        pass


INCOMPLETE: dict[str, tuple[Callable[[socket.socket], Any], list[str]]] = {
    "raw-socket": (lambda sock: sock, ["handle_read_event", "handle_write_event"]),
    "fileno-only": (FilenoOnly, ["handle_read_event", "handle_write_event"]),
    "no-write-handler": (ReadOnly, ["handle_write_event"]),
    "no-fileno": (lambda sock: NoFileno(), ["fileno"]),
}


@pytest.mark.parametrize("backend", [*BACKENDS, "plugin-on-base"])
@pytest.mark.parametrize("target", list(INCOMPLETE))
@pytest.mark.parametrize("events", ["READ", "NONE"])
def test_register_of_an_incomplete_target_names_what_is_missing(
    backend: str, target: str, events: str
) -> None:
    make, missing = INCOMPLETE[target]
    with contextlib.closing(make_context(backend)) as context, socket.socket() as sock:
        obj = make(sock)
        exc = raises_at_call(
            TypeError, None, lambda: context.register(obj, getattr(asycamore.Events, events))
        )
        for name in missing:
            assert name in str(exc), f"the message {str(exc)!r} should name {name}"
        assert len(context) == 0
        assert obj not in context
        if hasattr(context, "kernel"):
            assert context.kernel == {}, "the kernel was told about a refused target"
        # Nothing of it stayed behind: a complete target on the same descriptor registers.
        good = Complete(sock)
        context.register(good, asycamore.Events.READ)
        assert len(context) == 1
        context.unregister(good)


@pytest.mark.parametrize("backend", [*BACKENDS, "plugin-on-base"])
def test_register_checks_each_object_not_only_its_class(backend: str) -> None:
    """Handlers may be instance attributes: one complete instance does not vouch for
    another instance of the same class that lacks them."""

    class Dynamic(FilenoOnly):
        pass

    with (
        contextlib.closing(make_context(backend)) as context,
        socket.socket() as first_sock,
        socket.socket() as second_sock,
    ):
        first = Dynamic(first_sock)
        first.handle_read_event = lambda: None  # type: ignore[attr-defined]
        first.handle_write_event = lambda: None  # type: ignore[attr-defined]
        context.register(first, asycamore.Events.READ)
        second = Dynamic(second_sock)
        raises_at_call(TypeError, r"handle_read_event", lambda: context.register(second))
        assert len(context) == 1
        context.unregister(first)


# =============================================================================================
# 3. A failure to listen, bind or connect names the address
# =============================================================================================


def address_pattern(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return re.escape(f"{shown}:{port}") + r"(?!\d)"


@pytest.fixture
def busy_tcp() -> Iterator[Callable[[str], int]]:
    socks: list[socket.socket] = []

    def make(host: str) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        socks.append(sock)
        sock.bind((host, 0))
        sock.listen(8)
        return int(sock.getsockname()[1])

    yield make
    for sock in socks:
        sock.close()


@pytest.fixture
def busy_udp() -> Iterator[Callable[[str], int]]:
    socks: list[socket.socket] = []

    def make(host: str) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        socks.append(sock)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

    yield make
    for sock in socks:
        sock.close()


HOSTS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=needs_ipv6)]
LISTENERS = [e for e in ENTRIES if e.name in ("listen_tcp", "listen_tcp(ssl)")]
BINDERS = [e for e in ENTRIES if e.name in ("bind_udp", "bind_udp_all")]


@entry_params(LISTENERS)
@pytest.mark.parametrize("host", HOSTS)
def test_listen_on_a_busy_port_names_the_address(
    entry: Entry, host: str, make_env: Callable[..., Env], busy_tcp: Callable[[str], int]
) -> None:
    env = make_env(entry.level)
    port = busy_tcp(host)
    before = env.snapshot()
    exc = raises_at_call(
        OSError,
        address_pattern(host, port),
        lambda: entry.call(env, StreamRecorder, host=host, port=port),
    )
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE, repr(exc)
    env.assert_nothing_left(before)
    del exc


@entry_params(BINDERS)
@pytest.mark.parametrize("host", HOSTS)
def test_bind_on_a_busy_port_names_the_address(
    entry: Entry, host: str, make_env: Callable[..., Env], busy_udp: Callable[[str], int]
) -> None:
    env = make_env(entry.level)
    port = busy_udp(host)
    before = env.snapshot()
    exc = raises_at_call(
        OSError,
        address_pattern(host, port),
        lambda: entry.call(env, DgramRecorder, host=host, port=port),
    )
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE, repr(exc)
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize(
    "name",
    [
        "transport.listen_tcp",
        "service.listen_tcp",
        "transport.bind_udp_all",
        "service.bind_udp_all",
    ],
)
def test_a_name_with_one_busy_address_names_that_address(
    name: str,
    make_env: Callable[..., Env],
    busy_tcp: Callable[[str], int],
    busy_udp: Callable[[str], int],
) -> None:
    """localhost is 127.0.0.1 and ::1: the one that is busy is named, and the socket
    already bound on the other is closed again."""
    entry = BY_NAME[name]
    env = make_env(entry.level)
    port = (busy_tcp if entry.kind == "stream" else busy_udp)("127.0.0.1")
    before = env.snapshot()
    exc = raises_at_call(
        OSError,
        address_pattern("127.0.0.1", port),
        lambda: entry.call(env, valid_factory(entry), host="localhost", port=port),
    )
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE, repr(exc)
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize("level", ["transport", "service"])
def test_connect_udp_from_a_busy_local_port_names_the_address(
    level: str, make_env: Callable[..., Env], busy_udp: Callable[[str], int]
) -> None:
    env = make_env(level)
    port = busy_udp("127.0.0.1")
    entry = BY_NAME[f"{level}.connect_udp"]
    before = env.snapshot()
    exc = raises_at_call(
        OSError,
        address_pattern("127.0.0.1", port),
        lambda: entry.call(env, DgramRecorder, local_host="127.0.0.1", local_port=port),
    )
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE, repr(exc)
    env.assert_nothing_left(before)
    del exc


@pytest.mark.parametrize("level", ["transport", "service"])
def test_listen_unix_in_a_missing_directory_names_the_path(
    level: str, make_env: Callable[..., Env]
) -> None:
    env = make_env(level)
    path = os.path.join(env.peers.directory, "no-such-directory", "s.sock")
    entry = BY_NAME[f"{level}.listen_unix"]
    before = env.snapshot()
    exc = raises_at_call(
        OSError, re.escape(path), lambda: entry.call(env, StreamRecorder, path=path)
    )
    assert isinstance(exc, OSError) and exc.errno == errno.ENOENT, repr(exc)
    env.assert_nothing_left(before)
    del exc


def connect_failure(env: Env, entry: Entry, **options: Any) -> BaseException:
    """The error of a failing connect: raised by the call, or given to connection_failed."""
    made: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        made.append(StreamRecorder())
        return made[-1]

    try:
        transport = entry.call(env, factory, **options)
    except OSError as exc:
        return exc
    env.pump(lambda: bool(made) and (made[0].ended or bool(made[0].made)))
    assert not made[0].made, f"connected?! {transport!r}"
    assert len(made[0].failed) == 1, made[0].failed
    return made[0].failed[0]


CONNECTORS = [e for e in ENTRIES if e.name in ("connect_tcp", "connect_tcp(ssl)")]


@entry_params(CONNECTORS)
@pytest.mark.parametrize("host", HOSTS)
def test_a_refused_connect_names_the_address(
    entry: Entry, host: str, make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    port = free_port(host=host)
    exc = connect_failure(env, entry, host=host, port=port)
    assert isinstance(exc, OSError), repr(exc)
    assert exc.errno == errno.ECONNREFUSED, repr(exc)
    assert re.search(address_pattern(host, port), str(exc)), str(exc)


@pytest.mark.parametrize("level", ["transport", "service"])
def test_a_failed_unix_connect_names_the_path(level: str, make_env: Callable[..., Env]) -> None:
    env = make_env(level)
    path = os.path.join(env.peers.directory, "nobody-listens.sock")
    exc = connect_failure(env, BY_NAME[f"{level}.connect_unix"], path=path)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOENT, repr(exc)
    assert path in str(exc), str(exc)


@pytest.fixture
def stuck_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connect to it stays pending
    (the kernel drops its SYNs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    probe = socket.socket()
    probe.setblocking(False)
    probe.connect_ex(("127.0.0.1", port))
    fillers.append(probe)
    import select

    _, writable, _ = select.select([], [probe], [], 0.2)
    try:
        if writable:
            pytest.skip("this kernel completes connects beyond the accept queue")
        yield port
    finally:
        for sock in (*fillers, server):
            sock.close()


@entry_params(CONNECTORS)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_refused_connect_to_a_name_or_number_keeps_errno_and_names_it(
    entry: Entry, host: str, make_env: Callable[..., Env]
) -> None:
    env = make_env(entry.level)
    port = free_port()
    if host == "localhost" and HAVE_IPV6:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", port))  # free there too (else ::1 might accept)
    exc = connect_failure(env, entry, host=host, port=port)
    assert isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED, repr(exc)
    assert re.search(rf"(localhost|127\.0\.0\.1):{port}(?!\d)", str(exc)), str(exc)


@pytest.mark.parametrize("level", ["transport", "service"])
def test_a_connect_timeout_names_the_address(
    level: str, make_env: Callable[..., Env], stuck_port: int
) -> None:
    env = make_env(level)
    started = time.monotonic()
    exc = connect_failure(env, BY_NAME[f"{level}.connect_tcp"], port=stuck_port, timeout=0.2)
    assert time.monotonic() - started < 4
    assert isinstance(exc, OSError) and isinstance(exc, TimeoutError), repr(exc)
    assert re.search(address_pattern("127.0.0.1", stuck_port), str(exc)), str(exc)


@pytest.mark.parametrize(
    "pending", ["not-yet-dispatched", "in-the-kernel", "tls-handshake", "localhost"]
)
def test_a_stop_during_a_connect_is_not_logged_as_a_failure(
    pending: str, caplog: pytest.LogCaptureFixture, peers: Peers, stuck_port: int, pki: PKI
) -> None:
    """A deliberate stop is not a failed connect: no WARNING (the default protocol's
    connection_failed would log "connect failed")."""
    with Service() as service:
        if pending == "not-yet-dispatched":
            service.connect_tcp(Protocol, "127.0.0.1", peers.tcp_port)
        elif pending == "in-the-kernel":
            service.connect_tcp(Protocol, "127.0.0.1", stuck_port)
            run_for(service, 0.05)
        elif pending == "tls-handshake":
            # A plain listener that never answers the ClientHello.
            conn = service.connect_tcp(
                Protocol, "127.0.0.1", peers.tcp_port, ssl=pki.client_context()
            )
            run_for(service, 0.05)
            assert conn.is_closing() is False
        else:
            service.connect_tcp(Protocol, "localhost", stuck_port)
        assert len(service.connections) == 1
        service.call_soon(service.stop)
        safety = service.call_later(5, service.close)
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="asycamore"):
            service.serve_forever(handle_signals=False)
        safety.cancel()
        assert time.monotonic() - started < 4, "the stop did not complete"
        assert not service.connections
    warnings_seen = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.name.startswith("asycamore")
    ]
    assert not warnings_seen, warnings_seen


# =============================================================================================
# 4. StreamTransport: one handler-facing API on Connection and TLSConnection
# =============================================================================================


def test_stream_transport_is_a_public_typing_protocol() -> None:
    stream_transport = tcpsocket.StreamTransport
    assert getattr(stream_transport, "_is_protocol", False), "not a typing.Protocol"
    for name in STREAM_TRANSPORT_METHODS:
        assert callable(getattr(stream_transport, name, None)), f"StreamTransport lacks {name}"
    if getattr(stream_transport, "_is_runtime_protocol", False):
        assert not isinstance(object(), stream_transport)


SIDES = ["plain-client", "plain-server", "tls-client", "tls-server"]


@pytest.fixture(params=SIDES)
def side(
    request: pytest.FixtureRequest, pki: PKI
) -> Iterator[tuple[Pair, Any, StreamRecorder, StreamRecorder]]:
    """(pair, the transport a protocol saw, that protocol, its peer protocol)."""
    tls, which = request.param.split("-")
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None)
        ours, theirs = (
            (pair.client, pair.server) if which == "client" else (pair.server, pair.client)
        )
        transport = ours.made[0]
        expected = tcpsocket.TLSConnection if tls == "tls" else Connection
        assert isinstance(transport, expected)
        yield pair, transport, ours, theirs


def test_both_transports_satisfy_stream_transport(side: Any) -> None:
    _, transport, _, _ = side
    stream_transport = tcpsocket.StreamTransport
    if getattr(stream_transport, "_is_runtime_protocol", False):
        assert isinstance(transport, stream_transport)
    for name in STREAM_TRANSPORT_METHODS:
        assert callable(getattr(transport, name, None)), f"{type(transport).__name__} lacks {name}"


def test_get_write_buffer_size_is_an_int(side: Any) -> None:
    _, transport, _, _ = side
    size = transport.get_write_buffer_size()
    assert type(size) is int and size == 0


def test_get_extra_info_gives_the_addresses(side: Any) -> None:
    pair, transport, ours, _ = side
    other_end = pair.server.transport if ours is pair.client else pair.client.transport
    peer = transport.get_extra_info("peername")
    assert peer is not None and tuple(peer[:2]) == tuple(other_end.get_extra_info("sockname")[:2])
    if ours is pair.client:
        assert tuple(peer[:2]) == ("127.0.0.1", pair.listener.sock.getsockname()[1])
    assert transport.get_extra_info("no-such-information", "default") == "default"
    assert transport.get_extra_info("no-such-information") is None


def test_is_closing_flips_after_close(side: Any) -> None:
    pair, transport, ours, _ = side
    assert transport.is_closing() is False
    transport.close()
    assert transport.is_closing() is True
    pump_service(pair.service, lambda: bool(ours.lost))
    assert transport.is_closing() is True


def test_abort(side: Any) -> None:
    pair, transport, ours, theirs = side
    transport.abort()
    assert transport.is_closing() is True
    pump_service(pair.service, lambda: bool(ours.lost) and bool(theirs.ended))


def test_set_write_buffer_limits_validates(side: Any) -> None:
    _, transport, _, _ = side
    raises_at_call(ValueError, None, lambda: transport.set_write_buffer_limits(high=100, low=200))
    raises_at_call(ValueError, None, lambda: transport.set_write_buffer_limits(high=-1))
    raises_at_call(ValueError, None, lambda: transport.set_write_buffer_limits(high=100, low=-1))
    transport.set_write_buffer_limits(high=4096, low=1024)
    assert transport.get_write_buffer_size() == 0


def test_can_write_eof_is_a_bool_and_write_eof_keeps_it(side: Any) -> None:
    pair, transport, _, theirs = side
    can = transport.can_write_eof()
    assert type(can) is bool
    if isinstance(transport, Connection):
        assert can is True
    if can:
        theirs.keep_open = True
        transport.write(b"last")
        transport.write_eof()
        pump_service(pair.service, lambda: theirs.eof == 1)
        assert bytes(theirs.data) == b"last"


def test_writelines_and_pause_resume_reading(side: Any) -> None:
    pair, transport, ours, theirs = side
    transport.writelines([b"ab", b"cd"])
    pump_service(pair.service, lambda: len(theirs.data) >= 4)
    assert bytes(theirs.data) == b"abcd"
    transport.pause_reading()
    theirs.transport.write(b"held")
    run_for(pair.service, 0.1)
    assert bytes(ours.data) == b"", "data arrived while reading was paused"
    transport.resume_reading()
    pump_service(pair.service, lambda: bytes(ours.data) == b"held")


@pytest.mark.parametrize("tls", ["plain", "tls"])
def test_service_tracks_the_transport_its_protocol_sees(tls: str, pki: PKI) -> None:
    with Service() as service:
        pair = make_pair(service, pki if tls == "tls" else None)
        assert pair.client.made == [pair.conn]
        seen = {id(pair.client.transport), id(pair.server.transport)}
        tracked = {id(conn) for conn in service.connections}
        assert tracked == seen, (service.connections, pair.client.transport, pair.server.transport)
        pair.client.transport.close()
        pump_service(service, lambda: pair.client.ended and pair.server.ended)
        pump_service(service, lambda: not service.connections)


def test_service_tracks_a_tls_client_while_it_connects(pki: PKI) -> None:
    """Before its handshake, the connection the service lists is still the one
    connect_tcp returned (the protocol will see it)."""
    with Service() as service:
        pair = make_pair(service, pki, wait=False)
        assert isinstance(pair.conn, tcpsocket.TLSConnection)
        assert [id(conn) for conn in service.connections] == [id(pair.conn)]


def test_service_tracks_a_tls_server_connection_during_its_handshake(pki: PKI) -> None:
    """An accepted TLS connection still in its handshake: the service lists the
    TLSConnection its protocol will see, not the plain connection under it."""
    with Service() as service:
        listener = service.listen_tcp(StreamRecorder, "127.0.0.1", 0, ssl=pki.server_context())
        with socket.create_connection(listener.sock.getsockname(), timeout=5):
            pump_service(service, lambda: bool(service.connections))
            (conn,) = service.connections
            assert isinstance(conn, tcpsocket.TLSConnection), conn


# =============================================================================================
# 5. Listener.port/.address, DatagramEndpoint.port/.address
# =============================================================================================


@pytest.mark.parametrize("level", ["transport", "service"])
@pytest.mark.parametrize("host", HOSTS)
def test_listener_port_and_address(level: str, host: str, make_env: Callable[..., Env]) -> None:
    env = make_env(level)
    listener = BY_NAME[f"{level}.listen_tcp"].call(env, StreamRecorder, host=host, port=0)
    try:
        bound = listener.sock.getsockname()
        assert type(listener.port) is int and listener.port == bound[1] != 0
        assert tuple(listener.address[:2]) == tuple(bound[:2])
        assert listener.address[0] == host
    finally:
        listener.close()


def test_listen_socket_listener_port_and_address(make_env: Callable[..., Env]) -> None:
    env = make_env("service")
    assert env.service is not None and env.spare_tcp is not None
    bound = env.spare_tcp.getsockname()
    listener = env.service.listen_socket(StreamRecorder, env.spare_tcp)
    env.spare_tcp = None  # the listener owns it now
    assert type(listener.port) is int and listener.port == bound[1]
    assert tuple(listener.address[:2]) == tuple(bound[:2])
    listener.close()


@pytest.mark.parametrize("level", ["transport", "service"])
def test_unix_listener_address_is_its_path(level: str, make_env: Callable[..., Env]) -> None:
    env = make_env(level)
    path = env.new_path()
    listener = BY_NAME[f"{level}.listen_unix"].call(env, StreamRecorder, path=path)
    try:
        assert listener.address == path
    finally:
        listener.close()


@pytest.mark.parametrize("level", ["transport", "service"])
@pytest.mark.parametrize("host", HOSTS)
def test_datagram_endpoint_port_and_address(
    level: str, host: str, make_env: Callable[..., Env]
) -> None:
    env = make_env(level)
    endpoints = [BY_NAME[f"{level}.bind_udp"].call(env, DgramRecorder, host=host, port=0)]
    endpoints += BY_NAME[f"{level}.bind_udp_all"].call(env, DgramRecorder, host=host, port=0)
    with socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
    ) as peer:
        peer.bind((host, 0))
        endpoints.append(
            BY_NAME[f"{level}.connect_udp"].call(
                env, DgramRecorder, host=host, port=peer.getsockname()[1]
            )
        )
        try:
            for endpoint in endpoints:
                bound = endpoint.sock.getsockname()
                assert type(endpoint.port) is int and endpoint.port == bound[1] != 0
                assert tuple(endpoint.address[:2]) == tuple(bound[:2])
                assert endpoint.address[0] == host
        finally:
            for endpoint in endpoints:
                endpoint.abort()


def test_service_serve_udp_socket_endpoint_address(make_env: Callable[..., Env]) -> None:
    env = make_env("service")
    assert env.service is not None and env.spare_udp is not None
    bound = env.spare_udp.getsockname()
    endpoint = env.service.serve_udp_socket(DgramRecorder, env.spare_udp)
    env.spare_udp = None  # the endpoint owns it now
    assert endpoint.port == bound[1] and tuple(endpoint.address[:2]) == tuple(bound[:2])
    endpoint.abort()


# =============================================================================================
# 6. Service.call_every
# =============================================================================================


# On the pytest plugin's fixtures: ``service`` runs on ``mock_clock`` when a test asks for
# both, so the schedule is checked exactly, in no real time (a test's advance() is the
# only thing that moves time; a callback's "work" is an advance too).


def run_at(service: Service, clock: MockClock, when: float) -> None:
    """Move the clock to *when* and let the service run what came due."""
    clock.advance(when - clock())
    service.run_once(0)


def test_call_every_first_call_is_one_interval_from_now(
    service: Service, mock_clock: MockClock
) -> None:
    calls: list[float] = []
    handle = service.call_every(0.15, lambda: calls.append(service.time()))
    for _ in range(3):
        service.run_once(0)
    assert calls == [], "call_every called at once"
    run_at(service, mock_clock, 0.1499)
    assert calls == []
    run_at(service, mock_clock, 0.15)
    assert calls == [0.15]
    handle.cancel()


def test_call_every_on_the_real_clock_passes_its_arguments(asycamore_backend: str) -> None:
    with Service(asycamore_backend) as service:
        calls: list[tuple[Any, ...]] = []
        handle = service.call_every(0.01, lambda *args: calls.append(args), 1, "two")
        pump_service(service, lambda: len(calls) >= 2, timeout=5)
        handle.cancel()
    assert calls[:2] == [(1, "two"), (1, "two")]


def test_call_every_is_fixed_rate_without_drift(service: Service, mock_clock: MockClock) -> None:
    """The k-th call is due at start + k * interval: the callback's own work (here 0.3
    of an interval) and a loop that runs late do not push the schedule."""
    mock_clock.advance(1000)
    times: list[float] = []

    def tick() -> None:
        times.append(service.time())
        mock_clock.advance(0.6)  # work

    handle = service.call_every(2, tick)
    for k in range(1, 31):
        run_at(service, mock_clock, 1000 + 2 * k + (0.5 if k % 3 else 0))  # sometimes late
    handle.cancel()
    assert times == [1000 + 2 * k + (0.5 if k % 3 else 0) for k in range(1, 31)]
    # ...and each late call was still followed by the next tick of the schedule:
    assert all(t - (1000 + 2 * k) in (0, 0.5) for k, t in enumerate(times, 1))


def test_call_every_after_a_stall_makes_at_most_one_late_call(
    service: Service, mock_clock: MockClock
) -> None:
    times: list[float] = []

    def tick() -> None:
        times.append(service.time())
        if len(times) == 3:
            mock_clock.advance(5.5)  # the callback stalls: misses ticks 4-8, ends at 8.5

    handle = service.call_every(1, tick)
    for when in (1, 2, 3):
        run_at(service, mock_clock, when)
    assert service.time() == 8.5
    for _ in range(3):
        service.run_once(0)
    assert times == [1, 2, 3], "a catch-up burst after the stall"
    for when in (9, 10, 11):
        run_at(service, mock_clock, when)
    handle.cancel()
    assert times == [1, 2, 3, 9, 10, 11]


def test_call_every_after_a_blocked_loop_makes_at_most_one_late_call(
    service: Service, mock_clock: MockClock
) -> None:
    """The stall is the loop's (nothing ran for 5.5 intervals), not the callback's."""
    times: list[float] = []
    handle = service.call_every(1, lambda: times.append(service.time()))
    run_at(service, mock_clock, 1)
    run_at(service, mock_clock, 2)
    run_at(service, mock_clock, 7.5)  # ticks 3-7 passed unserved
    for _ in range(3):
        service.run_once(0)
    assert times == [1, 2, 7.5], "not exactly one late call"
    run_at(service, mock_clock, 7.99)
    run_at(service, mock_clock, 8)
    handle.cancel()
    assert times == [1, 2, 7.5, 8], "not back on the schedule"


def test_call_every_cancel_stops_it(service: Service, mock_clock: MockClock) -> None:
    calls: list[float] = []
    handle = service.call_every(0.01, lambda: calls.append(service.time()))
    for k in range(1, 4):
        run_at(service, mock_clock, 0.01 * k)
    handle.cancel()
    run_at(service, mock_clock, 1)
    assert len(calls) == 3


def test_call_every_cancel_twice_is_harmless(service: Service, mock_clock: MockClock) -> None:
    calls: list[float] = []
    handle = service.call_every(0.01, lambda: calls.append(service.time()))
    run_at(service, mock_clock, 0.01)
    handle.cancel()
    handle.cancel()
    run_at(service, mock_clock, 1)
    assert calls == [0.01]


def test_call_every_cancel_before_the_first_call(service: Service, mock_clock: MockClock) -> None:
    calls: list[float] = []
    handle = service.call_every(0.01, lambda: calls.append(service.time()))
    handle.cancel()
    run_at(service, mock_clock, 1)
    assert calls == []


def test_call_every_cancel_from_inside_the_callback(
    service: Service, mock_clock: MockClock
) -> None:
    calls: list[float] = []
    holder: dict[str, Any] = {}

    def tick() -> None:
        calls.append(service.time())
        if len(calls) == 2:
            holder["handle"].cancel()

    holder["handle"] = service.call_every(0.01, tick)
    for k in range(1, 11):
        run_at(service, mock_clock, 0.01 * k)
    assert calls == [0.01, 0.02]


@pytest.mark.parametrize("interval", [0, 0.0, -0.0, -1, -0.5, NAN, math.inf, -math.inf], ids=repr)
def test_call_every_refuses_an_interval_that_is_not_positive_and_finite(
    service: Service, interval: float
) -> None:
    calls: list[int] = []
    raises_at_call(ValueError, r"interval", lambda: service.call_every(interval, calls.append, 1))
    run_for(service, 0.03)
    assert calls == []


@pytest.mark.parametrize("interval", ["1", b"1", None, [1]], ids=repr)
def test_call_every_refuses_an_interval_that_is_not_a_number(
    service: Service, interval: Any
) -> None:
    calls: list[int] = []
    raises_at_call(
        (TypeError, ValueError), r"interval", lambda: service.call_every(interval, calls.append, 1)
    )
    run_for(service, 0.03)
    assert calls == []


def test_call_every_interval_property(service: Service) -> None:
    @settings(max_examples=60, deadline=None)
    @given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70))
    def check(interval: float) -> None:
        if interval > 0 and math.isfinite(interval):
            service.call_every(interval, lambda: None).cancel()
        else:
            raises_at_call(
                ValueError, r"interval", lambda: service.call_every(interval, lambda: None)
            )

    check()
