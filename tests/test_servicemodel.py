"""asycamore.servicemodel: protocols, timers, wake-ups, idle timeouts, stop and signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asycamore
from asycamore.servicemodel import Connection, LineProtocol, Protocol, Service
from asycamore.tcpsocket import TransportOptions
from asycamore.testing import MockClock

# ``service`` is the asycamore pytest plugin's: a Service on each backend in turn, that
# fails the test on whatever the test leaves open.


class Echo(Protocol):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Recorder(Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.data = bytearray()

    def connection_made(self, transport: Connection) -> None:
        super().connection_made(transport)
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))

    def connection_failed(self, exc: BaseException) -> None:
        self.events.append(("failed", exc))


def run_until(service: Service, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        service.run_once(0.01)


class Background:
    """Runs ``serve_forever`` in a thread; joins it (bounded) on exit."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.serve_forever()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.service.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "serve_forever did not return"
        assert self.error is None


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


# -- serving ---------------------------------------------------------------------------------


def test_serve_forever_in_a_thread_and_stop_from_another(service: Service) -> None:
    listener = service.listen_tcp(Echo, "127.0.0.1", 0)
    with Background(service):
        clients = [socket.create_connection(listener.address, timeout=5) for _ in range(20)]
        for i, client in enumerate(clients):
            client.sendall(b"message %d" % i)
        for i, client in enumerate(clients):
            expected = b"message %d" % i
            assert recv_exactly(client, len(expected)) == expected
    for client in clients:
        assert client.recv(10) == b""  # the stop closed them
        client.close()
    assert service.connection_count == 0 and not service.listeners


def test_client_connections(service: Service) -> None:
    listener = service.listen_tcp(Echo, "127.0.0.1", 0)
    client = Recorder()
    conn = service.connect_tcp(lambda: client, "127.0.0.1", listener.port, timeout=5)
    conn.write(b"ping")
    run_until(service, lambda: client.data == b"ping")
    assert service.connection_count == 2
    conn.close()
    run_until(service, lambda: service.connection_count == 0)
    assert client.events == ["made", ("lost", None)]
    listener.close()


def test_failed_connect_is_reported(service: Service) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = Recorder()
    try:
        service.connect_tcp(lambda: client, "127.0.0.1", port, timeout=5)
    except ConnectionRefusedError as exc:
        assert f"cannot connect to 127.0.0.1:{port}" in str(exc)
        return
    run_until(service, lambda: bool(client.events))
    assert client.events[0][0] == "failed"
    assert isinstance(client.events[0][1], ConnectionRefusedError)
    assert f"cannot connect to 127.0.0.1:{port}" in str(client.events[0][1])
    assert service.connection_count == 0


def test_unix_socket_service(service: Service, tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    listener = service.listen_unix(Echo, path)
    client = Recorder()
    service.connect_unix(lambda: client, path)
    assert client.transport is None
    run_until(service, lambda: client.transport is not None)
    assert client.transport is not None
    client.transport.write(b"unix")
    run_until(service, lambda: client.data == b"unix")
    client.transport.close()
    listener.close()
    run_until(service, lambda: service.connection_count == 0)


def test_protocol_error_aborts_only_that_connection(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    lost: list[BaseException | None] = []

    class Fragile(Echo):
        def data_received(self, data: bytes) -> None:
            if data == b"boom":
                raise ValueError("protocol bug")
            super().data_received(data)

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    listener = service.listen_tcp(Fragile, "127.0.0.1", 0)
    with Background(service):
        good = socket.create_connection(listener.address, timeout=5)
        bad = socket.create_connection(listener.address, timeout=5)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            bad.sendall(b"boom")
            assert bad.recv(10) == b""
        good.sendall(b"fine")
        assert recv_exactly(good, 4) == b"fine"
        for client in (good, bad):  # or the stop waits its timeout for their EOF
            client.close()
    assert "protocol bug" in caplog.text
    assert isinstance(lost[0], ValueError)


def test_line_protocol() -> None:
    lines: list[bytes] = []

    class Lines(LineProtocol):
        max_line_length = 10

        def line_received(self, line: bytes) -> None:
            lines.append(line)
            if line == b"echo":
                self.send_line(b"echoed")

    with Service() as service:
        listener = service.listen_tcp(Lines, "127.0.0.1", 0)
        with Background(service):
            client = socket.create_connection(listener.address, timeout=5)
            for piece in [b"one\ntw", b"o\n", b"", b"three\nech", b"o\n"]:
                client.sendall(piece)
                time.sleep(0.01)
            assert recv_exactly(client, 7) == b"echoed\n"
            client.sendall(b"x" * 20)  # too long: closed
            assert client.recv(10) == b""
            client.close()  # or the stop waits its timeout for this peer's EOF
    assert lines == [b"one", b"two", b"three", b"echo"]


# -- scheduling -------------------------------------------------------------------------------


def test_timers_and_call_soon_order(service: Service, mock_clock: MockClock) -> None:
    calls: list[str] = []
    service.call_later(5, calls.append, "later")
    cancelled = service.call_later(1, calls.append, "cancelled")
    service.call_at(2, calls.append, "at")
    service.call_soon(calls.append, "soon 1")
    service.call_soon(calls.append, "soon 2").cancel()
    service.call_soon(calls.append, "soon 3")
    cancelled.cancel()
    service.run_once(0)
    assert calls == ["soon 1", "soon 3"]
    mock_clock.advance(2)
    service.run_once(0)
    assert calls == ["soon 1", "soon 3", "at"]
    mock_clock.advance(3)
    service.run_once(0)
    assert calls == ["soon 1", "soon 3", "at", "later"]


def test_before_dispatch_timeout(service: Service) -> None:
    dispatchvars: dict[str, Any] = {}
    service.before_dispatch(service.dispatcher, dispatchvars)
    assert dispatchvars["timeout"] is None  # nothing scheduled: block
    handle = service.call_later(10, print)
    service.before_dispatch(service.dispatcher, dispatchvars)
    timeout: float | None = dispatchvars.get("timeout")
    assert timeout is not None and 9 < timeout <= 10
    handle.cancel()

    def queue_more() -> None:
        service.call_soon(print)

    service.call_soon(queue_more)
    service.before_dispatch(service.dispatcher, dispatchvars)
    assert dispatchvars["timeout"] == 0  # work queued while running: do not block
    service.run_once()


def test_call_soon_threadsafe_wakes_a_blocked_service(service: Service) -> None:
    woken: list[float] = []
    with Background(service):
        time.sleep(0.2)  # blocked in dispatch: nothing scheduled
        sent = time.monotonic()
        service.call_soon_threadsafe(lambda: woken.append(time.monotonic() - sent))
        deadline = time.monotonic() + 5
        while not woken and time.monotonic() < deadline:
            time.sleep(0.005)
    assert woken and woken[0] < 0.5


def read_now(service: Service, sock: socket.socket, size: int = 1) -> bytes:
    """What *sock* receives while the service runs (b"" for EOF)."""
    sock.setblocking(False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        service.run_once(0.01)
        with contextlib.suppress(BlockingIOError):
            return sock.recv(size)
    pytest.fail("nothing received in time")


def test_idle_timeout_closes_quiet_connections_only(
    service: Service, mock_clock: MockClock
) -> None:
    listener = service.listen_tcp(Echo, "127.0.0.1", 0, idle_timeout=30)
    with (
        socket.create_connection(listener.address, timeout=5) as quiet,
        socket.create_connection(listener.address, timeout=5) as chatty,
    ):
        run_until(service, lambda: service.connection_count == 2)
        for _ in range(10):  # 60 s of the clock: the quiet one is idle from 30 s on
            mock_clock.advance(6)
            chatty.sendall(b".")
            assert read_now(service, chatty) == b"."
        assert read_now(service, quiet) == b""  # closed for being idle, at 30 s
        assert service.connection_count == 1
        chatty.sendall(b"!")
        assert read_now(service, chatty) == b"!"  # the active one is still open
        mock_clock.advance(29.9)
        service.run_once(0)
        assert service.connection_count == 1
        mock_clock.advance(0.1)
        assert read_now(service, chatty) == b""  # ...until it is quiet too
    run_until(service, lambda: service.connection_count == 0)
    listener.close()


def test_idle_connection_that_cannot_flush_is_aborted(
    service: Service, mock_clock: MockClock
) -> None:
    class Flood(Protocol):
        def connection_made(self, transport: Connection) -> None:
            super().connection_made(transport)
            transport.write(b"z" * (8 << 20))

    listener = service.listen_tcp(Flood, "127.0.0.1", 0, idle_timeout=20)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(listener.address)
        run_until(service, lambda: service.connection_count == 1)
        (stream,) = service.transports.streams
        run_until(service, lambda: stream.write_buffer_size < 8 << 20)  # the socket is full
        mock_clock.advance(20)  # idle: closed, but nothing flushes...
        service.run_once(0)
        assert stream.is_closing() and service.connection_count == 1
        mock_clock.advance(19.9)
        service.run_once(0)
        assert service.connection_count == 1
        mock_clock.advance(0.1)  # ...so one idle timeout later it is aborted
        run_until(service, lambda: service.connection_count == 0)
    listener.close()


# -- stopping ----------------------------------------------------------------------------------


def test_stop_flushes_then_closes(service: Service) -> None:
    class Greeter(Protocol):
        def connection_made(self, transport: Connection) -> None:
            super().connection_made(transport)
            transport.write(b"g" * (1 << 20))

    listener = service.listen_tcp(Greeter, "127.0.0.1", 0)
    sock = socket.create_connection(listener.address, timeout=5)
    run_until(service, lambda: service.connection_count == 1)
    service.stop()
    assert service.stopping and not service.listeners
    received = 0
    eof = False
    sock.setblocking(False)
    deadline = time.monotonic() + 5
    while service.connection_count:
        assert time.monotonic() < deadline
        service.run_once(0.01)
        if eof:
            continue
        with contextlib.suppress(BlockingIOError):
            chunk = sock.recv(1 << 20)
            received += len(chunk)
            if not chunk:
                # The server sent everything, then EOF, and waits for ours (a close
                # with unread input would reset): close like any peer that is done.
                eof = True
                sock.close()
    if not eof:
        sock.setblocking(True)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        sock.close()
    assert received == 1 << 20


def test_stop_aborts_what_does_not_finish_in_time(service: Service) -> None:
    lost: list[BaseException | None] = []

    class Stubborn(Protocol):
        def service_stopping(self) -> None:
            pass  # keeps going

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    listener = service.listen_tcp(Stubborn, "127.0.0.1", 0)
    sock = socket.create_connection(listener.address, timeout=5)
    run_until(service, lambda: service.connection_count == 1)
    thread = threading.Thread(target=service.serve_forever)
    started = time.monotonic()
    thread.start()
    service.stop(timeout=0.3)
    thread.join(5)
    assert not thread.is_alive()
    assert 0.25 < time.monotonic() - started < 3
    assert len(lost) == 1 and isinstance(lost[0], TimeoutError)
    assert sock.recv(10) == b""
    sock.close()


def test_close_aborts_everything_and_keeps_a_given_dispatcher() -> None:
    dispatcher = asycamore.create_dispatcher()
    service = Service(dispatcher=dispatcher)
    listener = service.listen_tcp(Echo, "127.0.0.1", 0)
    sock = socket.create_connection(listener.address, timeout=5)
    run_until(service, lambda: service.connection_count == 1)
    service.close()
    service.close()
    assert len(dispatcher) == 0
    assert sock.recv(10) == b""
    with pytest.raises(RuntimeError):
        service.listen_tcp(Echo)
    dispatcher.close()
    sock.close()


# -- signals -----------------------------------------------------------------------------------


@pytest.fixture
def safe_signals() -> Iterator[list[int]]:
    """Handlers that record SIGINT/SIGTERM, so that a failure cannot kill pytest."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    old = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _kill_later(delay: float, *signums: int) -> threading.Thread:
    def send() -> None:
        for signum in signums:
            time.sleep(delay)
            os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _watchdog(service: Service, after: float) -> threading.Timer:
    timer = threading.Timer(after, lambda: service.stop(timeout=0))
    timer.daemon = True
    timer.start()
    return timer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_wakes_a_blocked_service_and_stops_it(safe_signals: list[int], signum: int) -> None:
    recorder = signal.getsignal(signal.SIGTERM)
    with Service() as service:
        listener = service.listen_tcp(Echo, "127.0.0.1", 0)
        sock = socket.create_connection(listener.address, timeout=5)
        _kill_later(0.3, signum)
        watchdog = _watchdog(service, 5)
        started = time.monotonic()
        service.serve_forever()  # blocks in dispatch: nothing is scheduled
        elapsed = time.monotonic() - started
        watchdog.cancel()
        assert elapsed < 2, "the signal did not wake the dispatch"
        assert sock.recv(10) == b""
        sock.close()
    assert safe_signals == []  # the service handled it, not the previous handler
    assert signal.getsignal(signal.SIGTERM) is recorder  # restored
    assert signal.set_wakeup_fd(-1) == -1  # restored (pytest sets none)


def test_second_signal_aborts(safe_signals: list[int]) -> None:
    class Stubborn(Protocol):
        def service_stopping(self) -> None:
            pass

    with Service(stop_timeout=30) as service:
        listener = service.listen_tcp(Stubborn, "127.0.0.1", 0)
        sock = socket.create_connection(listener.address, timeout=5)
        _kill_later(0.2, signal.SIGTERM, signal.SIGINT)
        watchdog = _watchdog(service, 5)
        started = time.monotonic()
        service.serve_forever()
        watchdog.cancel()
        assert time.monotonic() - started < 3
        assert sock.recv(10) == b""
        sock.close()
    assert safe_signals == []


def test_no_signal_handling_outside_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Service() as service, Background(service):
        time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is before


# -- the transport options ------------------------------------------------------------------


def test_service_options_are_one_value_and_a_method_overrides_them() -> None:
    with Service(high_water=100_000, idle_timeout=30) as service:
        assert service.options == TransportOptions(high_water=100_000, idle_timeout=30)
        assert service.options.marks == (100_000, 25_000)
        listener = service.listen_tcp(Echo, "127.0.0.1", 0, low_water=10_000)
        with socket.create_connection(listener.address, timeout=5):
            run_until(service, lambda: service.connection_count == 1)
            (conn,) = service.connections
            assert conn.write_buffer_limits == (100_000, 10_000)  # type: ignore[attr-defined]
        assert service.options.low_water is None  # the service's own are unchanged


def test_idle_timeout_aborts_a_connect_that_does_not_finish(
    service: Service, mock_clock: MockClock
) -> None:
    # A listener whose accept queue is full drops SYNs: the connect hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    try:
        with contextlib.suppress(OSError):
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(full.getsockname())
        time.sleep(0.1)
        client = Recorder()
        service.connect_tcp(lambda: client, *full.getsockname(), idle_timeout=30)
        for _ in range(5):
            service.run_once(0.01)
        if client.events == ["made"]:
            pytest.skip("this kernel completed the connect despite the full backlog")
        assert client.events == []
        mock_clock.advance(29.9)
        service.run_once(0)
        assert client.events == []
        mock_clock.advance(0.1)
        run_until(service, lambda: bool(client.events))
        ((what, exc),) = client.events
        assert what == "failed" and isinstance(exc, TimeoutError)
        assert service.connection_count == 0
    finally:
        for filler in fillers:
            filler.close()
        full.close()
