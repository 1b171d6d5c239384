"""asycamore.tcpsocket on real sockets, on every available backend."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import asycamore
from asycamore import Events, IDispatchContext
from asycamore.echo import EchoProtocol
from asycamore.tcpsocket import (
    Connection,
    Listener,
    Timers,
    TransportOptions,
    connect_tcp,
    connect_unix,
    create_listening_socket,
    listen_tcp,
    listen_unix,
)
from asycamore.timers import ReadyQueue


@pytest.fixture
def context(asycamore_backend: str) -> Iterator[IDispatchContext]:
    """A context of each backend in turn (the asycamore pytest plugin's fixture)."""
    with asycamore.create_dispatcher(asycamore_backend) as dispatcher:
        yield dispatcher


class Recorder:
    """A handler that records everything."""

    def __init__(self, keep_open: bool = False) -> None:
        self.conn: Connection | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[BaseException | None] = []
        self.failed: list[BaseException] = []
        self.keep_open = keep_open

    def connection_made(self, connection: Connection) -> None:
        self.conn = connection
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.append(exc)

    def connection_failed(self, exc: BaseException) -> None:
        self.events.append("failed")
        self.failed.append(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


def pump(
    context: IDispatchContext,
    until: Callable[[], bool],
    timeout: float = 5.0,
    timers: Timers | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        if timers is not None:
            timers.run_due()
        context.dispatch_once(0.01)


def pair(
    context: IDispatchContext, handler: Recorder, **options: Any
) -> tuple[Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    return Connection(context, ours, handler, TransportOptions(**options)), theirs


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


def pump_recv(context: IDispatchContext, sock: socket.socket, size: int) -> bytes:
    """Dispatch until *size* bytes arrived on the (test's) socket *sock*."""
    data = bytearray()
    sock.setblocking(False)
    deadline = time.monotonic() + 5
    while len(data) < size:
        assert time.monotonic() < deadline, "timed out"
        context.dispatch_once(0.01)
        try:
            chunk = sock.recv(size - len(data))
        except BlockingIOError:
            continue
        assert chunk, "unexpected EOF"
        data += chunk
    sock.setblocking(True)
    return bytes(data)


def small_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


# -- connections ----------


def test_reads_arrive_as_bytes_and_write_goes_out_directly(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler)
    assert handler.events == ["made"] and conn in context
    assert conn.events == Events.READ
    peer.sendall(b"hello")
    pump(context, lambda: handler.data == b"hello")
    conn.write(b"world")
    assert conn.write_buffer_size == 0
    assert conn.events == Events.READ  # sent at once: no interest change
    assert recv_exactly(peer, 5) == b"world"
    conn.close()
    assert conn.closed and conn not in context and handler.lost == [None]
    assert peer.recv(10) == b""


def test_data_received_replaced_in_connection_made_is_the_one_called(
    context: IDispatchContext,
) -> None:
    # The documented seam EchoProtocol relies on: data_received is looked up again
    # after connection_made, so an instance attribute set there wins over the method.
    class Rerouting(Recorder):
        def connection_made(self, connection: Connection) -> None:
            super().connection_made(connection)
            self.routed = bytearray()
            self.data_received = self.routed.extend  # type: ignore[method-assign]

    handler = Rerouting()
    conn, peer = pair(context, handler)
    peer.sendall(b"rerouted")
    pump(context, lambda: handler.routed == b"rerouted")
    assert handler.data == b""
    conn.close()


def test_a_close_in_connection_made_delivers_nothing_more(context: IDispatchContext) -> None:
    # The peer spoke first, so close() lingers at once, discarding the peer's input;
    # looking data_received up again after connection_made must not undo that.
    class Refusing(Recorder):
        def connection_made(self, connection: Connection) -> None:
            super().connection_made(connection)
            connection.close()

        def data_received(self, data: bytes) -> None:
            self.events.append("data")  # whatever the type: nothing may arrive at all

    timers = Timers()
    handler = Refusing()
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    peer.sendall(b"hello")
    conn = Connection(context, ours, handler, timers=timers)
    assert conn.is_closing() and not conn.closed  # lingering: the peer has spoken
    peer.sendall(b"more")
    context.dispatch_once(0.5)
    peer.shutdown(socket.SHUT_WR)
    pump(context, lambda: conn.closed, timers=timers)
    assert handler.events == ["made", "lost"] and handler.lost == [None]
    assert peer.recv(10) == b""
    peer.close()


def test_echo_protocol_writes_directly_and_a_subclass_keeps_its_override(
    context: IDispatchContext,
) -> None:
    class Counting(EchoProtocol):
        calls = 0

        def data_received(self, data: bytes) -> None:
            Counting.calls += 1
            super().data_received(data)

    for protocol, direct in ((EchoProtocol(), True), (Counting(), False)):
        ours, peer = socket.socketpair()
        peer.settimeout(5)
        conn = Connection(context, ours, protocol)
        assert ("data_received" in vars(protocol)) is direct
        peer.sendall(b"ping")
        assert pump_recv(context, peer, 4) == b"ping"
        conn.close()
        peer.close()
    assert Counting.calls == 1


def test_memoryview_handlers_get_views_of_the_shared_buffer(context: IDispatchContext) -> None:
    class Views(Recorder):
        receive_memoryview = True

        def data_received(self, data: Any) -> None:
            assert isinstance(data, memoryview)
            self.data += data
            assert self.conn is not None
            self.conn.write(data)  # writing a view back is safe

    handler = Views()
    conn, peer = pair(context, handler)
    peer.sendall(b"x" * 1000)
    pump(context, lambda: len(handler.data) == 1000)
    assert recv_exactly(peer, 1000) == b"x" * 1000
    conn.abort()


def test_buffered_writes_drain_in_order_and_interest_follows(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=1 << 30)
    small_buffers(peer)
    payload = os.urandom(2 << 20)
    for start in range(0, len(payload), 100_000):
        conn.write(payload[start : start + 100_000])
    assert conn.write_buffer_size > 0
    assert conn.events == Events.READ | Events.WRITE
    received = bytearray()
    peer.setblocking(False)
    deadline = time.monotonic() + 10
    while len(received) < len(payload):
        assert time.monotonic() < deadline
        context.dispatch_once(0.01)
        with contextlib.suppress(BlockingIOError):
            received += peer.recv(1 << 20)
    assert received == payload
    pump(context, lambda: conn.events == Events.READ)
    assert conn.write_buffer_size == 0
    conn.abort()


def test_large_buffer_drains_without_quadratic_copying(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=1 << 30)
    payload = b"q" * (64 << 20)
    conn.write(payload)  # one huge chunk, drained in many small sends
    peer.setblocking(False)
    received = 0
    started = time.monotonic()
    while received < len(payload):
        assert time.monotonic() - started < 20
        context.dispatch_once(0.01)
        with contextlib.suppress(BlockingIOError):
            received += len(peer.recv(1 << 20))
    assert received == len(payload)
    # 64 MiB through a socket pair: seconds at worst, not the minutes of re-copying.
    assert time.monotonic() - started < 15
    conn.abort()


def test_flow_control_pauses_reading_and_resumes(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=64 * 1024, low_water=16 * 1024)
    small_buffers(peer)
    chunk = b"f" * 32 * 1024
    while conn.write_buffer_size <= 64 * 1024:
        conn.write(chunk)
    assert handler.events[-1] == "pause"
    assert not conn.reading and conn.events == Events.WRITE
    # While paused, what the peer sends is not read.
    peer.sendall(b"ignored for now")
    context.dispatch_once(0.05)
    assert handler.data == b""
    peer.setblocking(False)
    deadline = time.monotonic() + 5
    while "resume" not in handler.events:
        assert time.monotonic() < deadline
        with pytest.raises(BlockingIOError):
            while True:
                if not peer.recv(1 << 20):
                    break
        context.dispatch_once(0.01)
    assert conn.write_buffer_size <= 16 * 1024
    pump(context, lambda: handler.data == b"ignored for now")
    conn.abort()


def test_pause_and_resume_reading(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler)
    conn.pause_reading()
    assert conn.events == Events.NONE
    peer.sendall(b"later")
    context.dispatch_once(0.05)
    assert handler.data == b""
    conn.resume_reading()
    pump(context, lambda: handler.data == b"later")
    conn.abort()


def test_peer_eof_closes_after_flushing_by_default(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=1 << 30)
    small_buffers(peer)
    payload = os.urandom(1 << 20)
    conn.write(payload)
    peer.shutdown(socket.SHUT_WR)
    pump(context, lambda: "eof" in handler.events)
    assert conn.is_closing() and not conn.closed
    peer.setblocking(False)
    received = bytearray()
    deadline = time.monotonic() + 10
    while not conn.closed:
        assert time.monotonic() < deadline
        context.dispatch_once(0.01)
        with contextlib.suppress(BlockingIOError):
            received += peer.recv(1 << 20)
    peer.setblocking(True)
    while chunk := peer.recv(1 << 20):
        received += chunk
    assert received == payload
    assert handler.lost == [None]


def test_half_close_both_ways(context: IDispatchContext) -> None:
    handler = Recorder(keep_open=True)
    conn, peer = pair(context, handler)
    peer.sendall(b"request")
    peer.shutdown(socket.SHUT_WR)
    pump(context, lambda: "eof" in handler.events)
    assert conn.eof_received and not conn.is_closing()
    assert handler.data == b"request"
    conn.write(b"response")
    conn.write_eof()
    assert conn.eof_written
    assert recv_exactly(peer, 8) == b"response"
    assert peer.recv(10) == b""
    assert conn.closed and handler.lost == [None]  # both sides done: closed itself


def test_write_eof_waits_for_the_buffer_and_keeps_reading(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=1 << 30)
    small_buffers(peer)
    conn.write(b"d" * (1 << 20))
    conn.write_eof()
    with pytest.raises(RuntimeError):
        conn.write(b"too late")
    peer.sendall(b"still reading")
    peer.setblocking(False)
    received = 0
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline
        context.dispatch_once(0.01)
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        received += len(chunk)
    assert received == 1 << 20
    assert handler.data == b"still reading"
    assert not conn.closed
    conn.close()


def test_close_inside_data_received(context: IDispatchContext) -> None:
    class Closer(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.conn is not None
            self.conn.write(b"bye")
            self.conn.close()
            self.conn.write(b"dropped")  # after close: silently dropped
            self.conn.close()  # idempotent

    handler = Closer()
    conn, peer = pair(context, handler)
    peer.sendall(b"hi")
    pump(context, lambda: conn.closed)
    assert handler.lost == [None]
    assert peer.recv(100) == b"bye"
    assert peer.recv(100) == b""


def test_abort_discards_the_buffer(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, high_water=1 << 30)
    small_buffers(peer)
    conn.write(b"a" * (1 << 20))
    assert conn.write_buffer_size > 0
    conn.abort()
    assert conn.closed and conn.write_buffer_size == 0 and handler.lost == [None]
    assert conn not in context and conn.fileno() == -1
    received = 0
    while chunk := peer.recv(1 << 20):
        received += len(chunk)
    assert received < 1 << 20


def test_reset_by_peer_is_reported_once(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    server.close()
    handler = Recorder()
    conn = Connection(context, accepted, handler)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    pump(context, lambda: conn.closed)
    assert handler.events == ["made", "lost"]
    assert isinstance(handler.lost[0], ConnectionResetError)


def test_writing_to_a_reset_peer(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    server.close()
    handler = Recorder()
    conn = Connection(context, accepted, handler)
    conn.pause_reading()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    time.sleep(0.05)
    deadline = time.monotonic() + 5
    while not conn.closed:
        assert time.monotonic() < deadline
        conn.write(b"x" * 65536)
        context.dispatch_once(0.01)
    assert len(handler.lost) == 1
    assert isinstance(handler.lost[0], (ConnectionResetError, BrokenPipeError))


def test_handler_error_under_the_default_policy_closes_the_connection(
    context: IDispatchContext, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("protocol bug")

    handler = Broken()
    conn, peer = pair(context, handler)
    peer.sendall(b"boom")
    with caplog.at_level(logging.ERROR, logger="asycamore"):
        pump(context, lambda: conn.closed)
    assert "protocol bug" in caplog.text
    assert handler.lost == [None]
    assert peer.recv(10) == b""


# -- client connects ----------


def test_connect_writes_queued_data_once_connected(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    host, port = server.getsockname()
    handler = Recorder()
    timers = Timers()
    conn = connect_tcp(context, lambda: handler, host, port, timeout=5, timers=timers)
    assert conn.connecting and conn.events == Events.WRITE
    conn.write(b"early")
    pump(context, lambda: "made" in handler.events, timers=timers)
    assert not conn.connecting and len(timers) == 0  # the connect timer is cancelled
    accepted, _ = server.accept()
    accepted.settimeout(5)
    assert recv_exactly(accepted, 5) == b"early"
    accepted.sendall(b"reply")
    pump(context, lambda: handler.data == b"reply", timers=timers)
    conn.close()
    accepted.close()
    server.close()


def test_connect_refused(context: IDispatchContext) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    handler = Recorder()
    try:
        conn = connect_tcp(context, lambda: handler, "127.0.0.1", port)
    except ConnectionRefusedError as exc:
        assert f"cannot connect to 127.0.0.1:{port}" in str(exc)
        return  # reported at once: also allowed
    pump(context, lambda: conn.closed)
    assert handler.events == ["failed"]
    assert isinstance(handler.failed[0], ConnectionRefusedError)
    assert handler.failed[0].errno == errno.ECONNREFUSED
    assert f"cannot connect to 127.0.0.1:{port}" in str(handler.failed[0])
    assert conn not in context


def test_connect_timeout(context: IDispatchContext) -> None:
    # A listener whose accept queue is full drops SYNs: the connect hangs.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    time.sleep(0.1)
    handler = Recorder()
    timers = Timers()
    started = time.monotonic()
    conn = connect_tcp(context, lambda: handler, *address, timeout=0.3, timers=timers)
    pump(context, lambda: conn.closed, timers=timers)
    if handler.events == ["made"]:
        pytest.skip("this kernel completed the connect despite the full backlog")
    assert handler.events == ["failed"]
    assert isinstance(handler.failed[0], TimeoutError)
    assert 0.25 < time.monotonic() - started < 3
    for filler in fillers:
        filler.close()
    server.close()


def test_connect_timeout_needs_timers(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    with pytest.raises(ValueError, match="timers"):
        connect_tcp(context, Recorder, *server.getsockname(), timeout=1)
    assert len(context) == 0
    server.close()


# -- listeners ----------


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.conn is not None
        self.conn.write(data)


def test_listener_accepts_in_batches_and_serves(context: IDispatchContext) -> None:
    handlers: list[Echo] = []

    def factory() -> Echo:
        handlers.append(Echo())
        return handlers[-1]

    listener = listen_tcp(context, factory, "127.0.0.1", 0, accept_batch=8)
    clients = [socket.create_connection(listener.address, timeout=5) for _ in range(40)]
    pump(context, lambda: listener.connection_count == 40)
    assert listener.accepted == 40
    for i, client in enumerate(clients):
        client.sendall(b"%d" % i)
    for i, client in enumerate(clients):
        expected = b"%d" % i
        assert pump_recv(context, client, len(expected)) == expected
        assert handlers[i].data == expected
        client.close()
    pump(context, lambda: listener.connection_count == 0)
    listener.close()
    assert listener.closed and listener not in context


def test_listener_connection_limit(context: IDispatchContext) -> None:
    listener = listen_tcp(context, Echo, "127.0.0.1", 0, max_connections=2)
    clients = [socket.create_connection(listener.address, timeout=5) for _ in range(3)]
    pump(context, lambda: listener.connection_count == 2 and not listener.accepting)
    for _ in range(5):
        context.dispatch_once(0.01)
    assert listener.connection_count == 2
    clients[0].close()
    pump(context, lambda: listener.accepted == 3)
    clients[2].sendall(b"third")
    assert pump_recv(context, clients[2], 5) == b"third"
    for client in clients[1:]:
        client.close()
    listener.close()


class FlakyListeningSocket(socket.socket):
    """A listening socket whose accept() fails with the queued errors first."""

    errors: list[int]

    def accept(self) -> tuple[socket.socket, Any]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().accept()


def flaky_listener(
    context: IDispatchContext, errors: list[int], **options: Any
) -> tuple[Listener, tuple[str, int]]:
    sock = FlakyListeningSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.errors = errors
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return Listener(context, sock, Echo, **options), sock.getsockname()


def test_listener_survives_econnaborted(context: IDispatchContext) -> None:
    listener, address = flaky_listener(context, [errno.ECONNABORTED, errno.EPROTO])
    client = socket.create_connection(address, timeout=5)
    pump(context, lambda: listener.accepted == 1)
    assert listener.accepting
    client.close()
    listener.close()


def test_listener_backs_off_on_emfile(
    context: IDispatchContext, caplog: pytest.LogCaptureFixture
) -> None:
    timers = Timers()
    listener, address = flaky_listener(context, [errno.EMFILE] * 3, timers=timers, backoff=0.05)
    client = socket.create_connection(address, timeout=5)
    calls_before = 0
    with caplog.at_level(logging.INFO, logger="asycamore"):
        context.dispatch_once(1)
        assert not listener.accepting  # paused, not spinning
        for _ in range(10):
            calls_before += context.dispatch_once(0.001)
        assert calls_before == 0
        pump(context, lambda: listener.accepted == 1, timers=timers)
    context.dispatch_once(0.01)  # the backlog is drained: the episode is over
    assert caplog.text.count("pausing accepts") == 1  # once per episode
    assert "accepting connections again" in caplog.text
    assert listener.accepting
    client.close()
    listener.close()


def test_listener_closes_connections_the_context_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing:
        """A context that refuses connections past the first, like select past
        FD_SETSIZE."""

        def __init__(self) -> None:
            self.inner = asycamore.create_dispatcher()
            self.connections = 0

        def register(self, target: Any, events: Events = Events.READ) -> None:
            if isinstance(target, Connection):
                self.connections += 1
                if self.connections > 1:
                    raise ValueError("fd is at or above FD_SETSIZE")
            self.inner.register(target, events)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __contains__(self, target: object) -> bool:
            return target in self.inner

    context: Any = Refusing()
    listener = listen_tcp(context, Echo, "127.0.0.1", 0)
    first = socket.create_connection(listener.address, timeout=5)
    with caplog.at_level(logging.WARNING, logger="asycamore"):
        refused = [socket.create_connection(listener.address, timeout=5) for _ in range(3)]
        pump(context.inner, lambda: listener.refused == 3)
    for sock in refused:
        assert sock.recv(10) == b""
    assert "FD_SETSIZE" in caplog.text
    assert listener.connection_count == 1
    first.sendall(b"still here")
    assert pump_recv(context.inner, first, 10) == b"still here"
    first.close()
    listener.close()
    context.inner.close()


def test_reuse_port(context: IDispatchContext) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")
    first = listen_tcp(context, Echo, "127.0.0.1", 0, reuse_port=True)
    second = listen_tcp(context, Echo, "127.0.0.1", first.port, reuse_port=True)
    assert second.port == first.port
    assert first.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    with pytest.raises(OSError):
        listen_tcp(context, Echo, "127.0.0.1", first.port)
    first.close()
    second.close()


def test_unix_domain_sockets(context: IDispatchContext, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    listener = listen_unix(context, Echo, path)
    assert listener.port == 0
    handler = Recorder()
    conn = connect_unix(context, lambda: handler, path)
    conn.write(b"over a unix socket")
    pump(context, lambda: handler.data == b"over a unix socket")
    conn.close()
    listener.close()
    assert not os.path.exists(path)


# -- timers ----------


def test_timers_order_cancel_and_timeout() -> None:
    now = [100.0]
    timers = Timers(clock=lambda: now[0])
    calls: list[str] = []
    timers.call_later(2, calls.append, "b")
    handle = timers.call_later(1, calls.append, "cancelled")
    timers.call_at(101, calls.append, "a")
    timers.call_later(2, calls.append, "c")  # same time: in scheduling order
    handle.cancel()
    handle.cancel()
    assert len(timers) == 3
    assert timers.timeout() == 1
    assert timers.run_due() == 0
    now[0] = 102.5
    assert timers.timeout() == 0
    assert timers.run_due() == 3
    assert calls == ["a", "b", "c"]
    assert timers.timeout() is None and len(timers) == 0


def test_timers_advance_runs_what_is_due_and_says_how_long_to_wait() -> None:
    now = [10.0]
    timers = Timers(clock=lambda: now[0])
    assert timers.advance() is None  # nothing scheduled
    calls: list[str] = []
    timers.call_at(10.0, calls.append, "due")
    timers.call_at(12.5, calls.append, "later")
    assert timers.advance() == 2.5 and calls == ["due"]
    now[0] = 13.0
    assert timers.advance() is None and calls == ["due", "later"]
    timers.call_at(20.0, calls.append, "cancelled").cancel()
    assert timers.advance() is None  # only a cancelled call left


def test_ready_queue_pending_is_live() -> None:
    queue = ReadyQueue()
    assert not queue.pending
    ran: list[int] = []
    queue.append(ran.append, 1)
    assert queue.pending and len(queue.pending) == 1
    queue.append(lambda: queue.append(ran.append, 3))  # queued while running: next time
    queue.run()
    assert ran == [1] and len(queue.pending) == 1
    queue.run()
    assert ran == [1, 3] and not queue.pending


def test_timers_do_not_run_calls_scheduled_while_running() -> None:
    now = [0.0]
    timers = Timers(clock=lambda: now[0])
    runs: list[float] = []

    def again() -> None:
        runs.append(now[0])
        timers.call_later(0, again)

    timers.call_later(0, again)
    assert timers.run_due() == 1
    assert timers.run_due() == 1
    assert runs == [0.0, 0.0]


def test_timers_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    timers = Timers()
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("timer bug")

    timers.call_later(0, broken)
    timers.call_later(0, calls.append, 1)
    with caplog.at_level(logging.ERROR, logger="asycamore"):
        assert timers.run_due() == 2
    assert calls == [1] and "timer bug" in caplog.text


def test_timers_compact_when_most_are_cancelled() -> None:
    timers = Timers()
    handles = [timers.call_later(1000, print) for _ in range(1000)]
    for handle in handles[:900]:
        handle.cancel()
    assert len(timers) == 100
    assert len(timers._heap) < 600


def test_timers_drive_iterate() -> None:
    timers = Timers()
    fired: list[float] = []
    started = time.monotonic()

    def stop() -> None:
        fired.append(time.monotonic() - started)

    def before(dispatcher: IDispatchContext, dispatchvars: Any) -> None:
        timers.before_dispatch(dispatcher, dispatchvars)
        if fired:
            raise StopIteration
        assert dispatchvars["timeout"] is not None and dispatchvars["timeout"] > 0

    timers.call_later(0.1, stop)
    with asycamore.create_dispatcher() as dispatcher:
        asycamore.iterate(dispatcher, timeout=None, before_dispatch=before)
    assert 0.09 < fired[0] < 1


def test_close_while_connecting_reports_a_failure(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    handler = Recorder()
    conn = connect_tcp(context, lambda: handler, *server.getsockname())
    conn.close()
    assert conn.closed and conn not in context
    assert handler.events == ["failed"]
    assert isinstance(handler.failed[0], ConnectionAbortedError)
    server.close()


def test_write_eof_while_connecting_is_sent_after_the_data(context: IDispatchContext) -> None:
    server = create_listening_socket("127.0.0.1", 0)
    handler = Recorder()
    conn = connect_tcp(context, lambda: handler, *server.getsockname())
    conn.write(b"all of it")
    conn.write_eof()
    pump(context, lambda: "made" in handler.events)
    accepted, _ = server.accept()
    accepted.settimeout(5)
    received = b""
    while chunk := accepted.recv(100):
        received += chunk
    assert received == b"all of it"
    accepted.close()
    pump(context, lambda: conn.closed)  # EOF both ways: closed by itself
    server.close()


def test_activity_tracking(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, peer = pair(context, handler, idle_timeout=60)
    first = conn.last_activity
    time.sleep(0.02)
    peer.sendall(b"x")
    pump(context, lambda: handler.data == b"x")
    assert conn.last_activity > first
    second = conn.last_activity
    time.sleep(0.02)
    conn.write(b"y")
    assert conn.last_activity > second
    conn.abort()


class Relaying(Recorder):
    """A proxy side: what it reads goes elsewhere, not to its own connection."""

    reads_produce_writes = False


@pytest.mark.parametrize("relaying", [False, True], ids=["echo-like", "relaying"])
def test_a_full_write_buffer_stops_reading_only_for_handlers_whose_reads_feed_it(
    context: IDispatchContext, relaying: bool
) -> None:
    """With ``reads_produce_writes = False`` a connection over its high-water mark
    pauses its handler but keeps reading (a proxy's two sides would otherwise deadlock
    against a busy peer); by default it stops reading until the buffer drains."""
    handler = Relaying() if relaying else Recorder()
    conn, theirs = pair(context, handler, high_water=1024, low_water=256)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = b"x" * (4 << 20)
    conn.write(big)  # far more than the socket takes: the peer does not read
    assert conn.write_buffer_size > 1024
    assert handler.events[-1] == "pause"
    assert conn.reading is relaying
    assert bool(conn.events & Events.READ) is relaying
    theirs.sendall(b"request")
    for _ in range(20):
        context.dispatch_once(0.01)
    # Echo-like: not delivered, reading is off until the peer reads what is buffered.
    assert bytes(handler.data) == (b"request" if relaying else b"")
    received = pump_recv(context, theirs, len(big))
    assert received == big
    assert handler.events[-1] == "resume"
    assert conn.reading
    pump(context, lambda: bytes(handler.data) == b"request")
    conn.abort()
    theirs.close()


def test_writelines_of_a_str_says_to_encode_and_sends_nothing(context: IDispatchContext) -> None:
    handler = Recorder()
    conn, theirs = pair(context, handler)
    with pytest.raises(TypeError, match=r"writelines\(\) takes bytes, not str: encode"):
        conn.writelines([b"ok", "bad"])  # type: ignore[list-item]
    conn.writelines([b"o", bytearray(b"k"), memoryview(b"!")])
    assert recv_exactly(theirs, 3) == b"ok!"
    conn.abort()
    theirs.close()
