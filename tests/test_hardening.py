"""Defects a hostile test pass found, each pinned by the scenario that showed it.

Processes, signals and sockets are real; every loop is bounded in count and time and
every server is killed if it does not exit when told.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import asycamore
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Protocol, Service
from asycamore.tcpsocket import DEFAULT_HIGH_WATER, Connection, TransportOptions
from asycamore.timers import Timers
from asycamore.wakeup import SignalCatcher, Waker

# -- asycamore echo in a subprocess ------------------------------------------------------


def _start_echo(
    *args: str, backend: str | None = None, nofile: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``asycamore echo``; return it and its first stdout line ("" if it exited)."""
    cmd = [sys.executable, "-m", "asycamore", "echo", "--port", "0", *args]
    if backend is not None:
        cmd += ["--backend", backend]

    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit,  # noqa: PLW1509 - only setrlimit, before exec
        cwd="/",
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 10
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
            break
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            break
        line += chunk
    return proc, line.decode()


def _port(line: str) -> int:
    assert line.startswith("listening on "), line
    return int(line.rsplit(":", 1)[1])


def _wait(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the echo server did not exit within {timeout} s")


@contextlib.contextmanager
def _echo(*args: str, backend: str | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, line = _start_echo(*args, backend=backend)
    try:
        yield proc, _port(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- a graceful stop sends no reset ------------------------------------------------------------


def _burst_then_stop(
    proc: subprocess.Popen[bytes], port: int, clients: int, size: int
) -> dict[str, Any]:
    """*clients* each send *size* bytes and read the echo; SIGTERM mid-burst."""
    sel = selectors.DefaultSelector()
    burst = memoryview(b"x" * size)
    state: dict[socket.socket, dict[str, int]] = {}
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        state[sock] = {"sent": 0, "received": 0}
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    errors: list[OSError] = []
    eofs = 0
    total = 0
    signalled = False
    deadline = time.monotonic() + 30
    try:
        while state and time.monotonic() < deadline:
            for key, mask in sel.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                info = state[sock]
                try:
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(1 << 16)
                        if not data:
                            eofs += 1
                            sel.unregister(sock)
                            sock.close()
                            del state[sock]
                            continue
                        info["received"] += len(data)
                        total += len(data)
                    if mask & selectors.EVENT_WRITE:
                        info["sent"] += sock.send(burst[info["sent"] : info["sent"] + 65536])
                        if info["sent"] == size:
                            sel.modify(sock, selectors.EVENT_READ)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    errors.append(exc)
                    sel.unregister(sock)
                    sock.close()
                    del state[sock]
            if not signalled and total >= clients * size // 8:
                proc.send_signal(signal.SIGTERM)
                signalled = True
    finally:
        for sock in state:
            sock.close()
        sel.close()
    return {"errors": errors, "eofs": eofs, "left": len(state), "signalled": signalled}


def test_stop_mid_burst_resets_no_peer(asycamore_backend: str) -> None:
    """SIGTERM while 40 clients are each sending 1 MB: every one ends with EOF.

    Closing a socket with unread input makes the kernel send a reset, which the peer
    sees as ECONNRESET (and which can destroy echoed data it has not read yet); the
    stop used to do exactly that.
    """
    with _echo(backend=asycamore_backend) as (proc, port):
        outcome = _burst_then_stop(proc, port, clients=40, size=1 << 20)
        assert _wait(proc) == 0
    assert outcome["signalled"]
    assert outcome["errors"] == []
    assert outcome["left"] == 0
    assert outcome["eofs"] == 40


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_exiting_does_not_kill(signum: int) -> None:
    """The status stays 0 when the second signal comes while the process exits."""
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02):
        with _echo() as (proc, _):
            proc.send_signal(signum)
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            assert _wait(proc) == 0, f"second signal {delay * 1000:g} ms later"


def test_sighup_stops_echo_gracefully() -> None:
    with _echo() as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            proc.send_signal(signal.SIGHUP)
            assert sock.recv(10) == b""  # a plain EOF
        assert _wait(proc) == 0


def test_out_of_descriptors_at_start_is_one_line() -> None:
    """``prlimit --nofile=N asycamore echo`` exits 2 with one line, never a traceback."""
    seen_refusal = False
    for nofile in range(5, 10):
        proc, line = _start_echo(nofile=nofile)
        if line:
            proc.send_signal(signal.SIGTERM)
        status = _wait(proc)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if line:
            assert status == 0
            continue
        assert status == 2, err
        assert "Traceback" not in err
        assert len(err.splitlines()) == 1, err
        assert "Too many open files" in err
        seen_refusal = True
    assert seen_refusal


def test_restore_is_atomic_with_respect_to_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal during the restore cannot leave the wake-up fd on the closing socket.

    The previous SIGINT handler (the default one raises KeyboardInterrupt) gets a signal
    the moment it is put back; it must only run once the wake-up fd is restored too.
    """
    real_signal = signal.signal

    def signal_then_raise(signum: int, handler: Any) -> Any:
        old = real_signal(signum, handler)
        if signum == signal.SIGINT and handler is signal.default_int_handler:
            signal.raise_signal(signal.SIGINT)
        return old

    waker = Waker()
    catcher = SignalCatcher(waker)
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        real_signal(signal.SIGINT, signal.default_int_handler)
        monkeypatch.setattr(signal, "signal", signal_then_raise)
        with pytest.raises(KeyboardInterrupt), catcher.installed():
            assert signal.set_wakeup_fd(waker.write_fileno()) == waker.write_fileno()
        monkeypatch.undo()
        assert signal.set_wakeup_fd(-1) == -1, "the wake-up fd was left on the waker"
        assert signal.getsignal(signal.SIGTERM) is previous_term
    finally:
        waker.close()


# -- timers refuse NaN ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, "1", None, True])
def test_timers_refuse_nan_and_non_numbers(bad: Any) -> None:
    timers = Timers()
    with pytest.raises(ValueError, match=r"number|NaN"):
        timers.call_later(bad, print)
    with pytest.raises(ValueError, match=r"number|NaN"):
        timers.call_at(bad, print)
    assert len(timers) == 0


def test_a_rejected_nan_strands_no_timer() -> None:
    """Due timers still run, and the next timeout is a number."""
    timers = Timers()
    ran: list[int] = []
    timers.call_later(0, ran.append, 1)
    with pytest.raises(ValueError):
        timers.call_later(math.nan, ran.append, 2)
    timers.call_later(0, ran.append, 3)
    timers.call_later(math.inf, ran.append, 4)  # infinite: accepted, never due
    assert timers.run_due() == 2
    assert ran == [1, 3]
    assert timers.timeout() == math.inf


def test_service_call_later_nan_is_refused_and_the_service_runs_on() -> None:
    with Service() as service:
        ran: list[str] = []
        with pytest.raises(ValueError):
            service.call_later(math.nan, ran.append, "nan")
        service.call_later(0, ran.append, "due")
        service.run_once(0.1)
        assert ran == ["due"]


# -- closing a service from inside it ---------------------------------------------------------


def test_close_from_a_callback_ends_serve_forever() -> None:
    service = Service()
    service.call_later(0.01, service.close)
    service.serve_forever(handle_signals=False)  # returns, instead of ValueError
    assert not service.running
    with pytest.raises(RuntimeError, match="closed"):
        service.run_once()
    service.close()


def test_close_from_a_handler_ends_serve_forever() -> None:
    class Closer(Protocol):
        def data_received(self, data: bytes) -> None:
            service.close()

    service = Service()
    listener = service.listen_tcp(Closer, "127.0.0.1", 0)
    with socket.create_connection(listener.address, timeout=5) as sock:
        sock.sendall(b"close")
        service.call_later(5, pytest.fail, "serve_forever did not return")
        service.serve_forever(handle_signals=False)
        assert sock.recv(10) in (b"", b"close")


# -- memory per stalled peer ----------------------------------------------------------------------


class _TrackingEcho(EchoProtocol):
    """An echo that records each read's size and the write buffer after each echo."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.buffered: list[int] = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.reads.append(len(data))
        self.buffered.append(self.transport.write_buffer_size)


def test_a_stalled_peer_costs_no_more_than_the_mark(asycamore_backend: str) -> None:
    """An echo whose peer sends without reading buffers at most max(mark, 64 KiB) + 1.

    The read that crossed the mark used to be a whole 256 KiB receive buffer.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    # Small kernel buffers: what the process keeps is what we measure.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setblocking(False)
    echo = _TrackingEcho()
    with asycamore.create_dispatcher(asycamore_backend) as context:
        conn = Connection(context, server, echo)
        payload = b"y" * (1 << 16)
        deadline = time.monotonic() + 10
        # Let the kernel queue a lot before the first read: that read is the big one.
        for _ in range(8):
            with contextlib.suppress(BlockingIOError):
                client.send(payload)
        while conn.reading and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                client.send(payload)
            context.dispatch_once(0.01)
        assert not conn.reading, "flow control never stopped reading"
        for _ in range(20):  # the peer keeps sending: nothing more is read
            with contextlib.suppress(BlockingIOError):
                client.send(payload)
            context.dispatch_once(0.01)
        conn.abort()
    client.close()
    bound = max(DEFAULT_HIGH_WATER, 1 << 16) + 1
    assert max(echo.buffered) > DEFAULT_HIGH_WATER  # the mark was reached
    assert max(echo.buffered) <= bound
    assert max(echo.reads) <= bound


def test_the_read_cap_follows_the_water_marks() -> None:
    """A raised mark raises the cap, so bulk transfers keep their big reads."""
    a, b = socket.socketpair()
    b.setblocking(False)
    echo = _TrackingEcho()
    with asycamore.create_dispatcher() as context:
        Connection(context, a, echo, TransportOptions(high_water=1 << 20))
        queued = 0
        with contextlib.suppress(BlockingIOError):
            while queued < 200_000:
                queued += b.send(b"z" * 65536)
        assert queued > 2 * DEFAULT_HIGH_WATER
        context.dispatch_once(1)
        assert echo.reads[0] > DEFAULT_HIGH_WATER + 1
    b.close()


# -- a lingering close ---------------------------------------------------------------------


def test_close_while_the_peer_sends_waits_for_its_eof() -> None:
    """close() with input queued sends EOF, discards, and closes once the peer does."""
    lost: list[BaseException | None] = []

    class Closer(Protocol):
        def data_received(self, data: bytes) -> None:
            self.transport.close()

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    with Service() as service:
        listener = service.listen_tcp(Closer, "127.0.0.1", 0)
        sock = socket.create_connection(listener.address, timeout=5)
        sock.sendall(b"a" * 100_000)  # more than one read: input is queued at close
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            service.run_once(0.01)
            if sock.fileno() < 0:
                continue  # closed below: the server is to notice
            sock.setblocking(False)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            finally:
                sock.setblocking(True)
            if data == b"":
                sock.sendall(b"b" * 100_000)  # still sending after the EOF: discarded
                sock.close()
        assert lost == [None]


def test_close_does_not_wait_for_an_idle_peer() -> None:
    with Service() as service:
        listener = service.listen_tcp(Protocol, "127.0.0.1", 0)
        with socket.create_connection(listener.address, timeout=5) as sock:
            while not service.connection_count:
                service.run_once(0.01)
            service.connections[0].close()
            assert service.connection_count == 0
            assert sock.recv(1) == b""


def test_abort_cuts_a_linger_short() -> None:
    with Service() as service:
        listener = service.listen_tcp(Protocol, "127.0.0.1", 0)
        with socket.create_connection(listener.address, timeout=5) as sock:
            while not service.connection_count:
                service.run_once(0.01)
            sock.sendall(b"q" * 200_000)
            time.sleep(0.05)
            conn = service.connections[0]
            conn.pause_reading()
            conn.close()
            assert service.connection_count == 1  # lingering: input was queued
            conn.abort()
            assert service.connection_count == 0
            with contextlib.suppress(ConnectionResetError):
                sock.recv(1)


def test_a_reset_while_lingering_is_reported() -> None:
    lost: list[BaseException | None] = []

    class Keep(Protocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    with Service() as service:
        listener = service.listen_tcp(Keep, "127.0.0.1", 0)
        sock = socket.create_connection(listener.address, timeout=5)
        while not service.connection_count:
            service.run_once(0.01)
        conn = service.connections[0]
        conn.pause_reading()
        sock.sendall(b"r" * 200_000)
        time.sleep(0.05)
        conn.close()
        assert not lost
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()  # a reset
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            service.run_once(0.01)
        assert len(lost) == 1
        assert lost[0] is None or (
            isinstance(lost[0], OSError) and lost[0].errno == errno.ECONNRESET
        )


# -- fork with a busy parent -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_child_closing_an_inherited_service_leaves_the_parent_serving(
    asycamore_backend: str,
) -> None:
    """The child leaves ``with Service()`` through sys.exit; the parent serves on.

    epoll used to lose the parent's targets, its wake-up socket included, from the
    parent's own set: the parent then served nothing and ignored stop().
    """
    with Service(asycamore_backend) as service:
        listener = service.listen_tcp(EchoProtocol, "127.0.0.1", 0)
        pid = os.fork()
        if pid == 0:  # the child: close everything inherited, as `with` would on exit
            code = 1
            try:
                service.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with socket.create_connection(listener.address, timeout=5) as sock:
            sock.sendall(b"still here")
            got = b""
            deadline = time.monotonic() + 5
            while got != b"still here" and time.monotonic() < deadline:
                service.run_once(0.05)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    got += sock.recv(100)
                sock.setblocking(True)
            assert got == b"still here"
        stopper = threading.Timer(0.1, service.stop)
        stopper.start()
        service.call_later(5, pytest.fail, "stop() from another thread was not heard")
        service.serve_forever(handle_signals=False)
        stopper.join()


# -- found by a hostile review ---------------------------------------------------------------


def test_a_client_connected_by_name_lingers_too() -> None:
    """close() of a connection to "localhost" waits for the peer's EOF, as by number."""
    server = socket.create_server(("127.0.0.1", 0))
    lost: list[BaseException | None] = []

    class Client(Protocol):
        def data_received(self, data: bytes) -> None:
            self.transport.close()

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    with Service() as service, server:
        service.connect_tcp(Client, "localhost", server.getsockname()[1])
        peer, _ = server.accept()
        with peer:
            peer.settimeout(5)
            peer.sendall(b"x" * 100_000)  # the client closes on the first read
            assert _until_eof(service, peer)
            peer.sendall(b"y" * 100_000)  # still talking after the client's EOF...
            time.sleep(0.05)
            peer.sendall(b"z" * 100_000)  # ...and no reset came back
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            service.run_once(0.01)
        assert lost == [None]


def _until_eof(service: Service, sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            service.run_once(0.01)
            try:
                if sock.recv(1 << 16) == b"":
                    return True
            except BlockingIOError:
                pass
        return False
    finally:
        sock.setblocking(True)


def test_close_keeps_the_view_with_input_queued_behind() -> None:
    """Discarding queued input on close() must not overwrite the handler's memoryview."""
    seen: list[tuple[bytes, bytes]] = []

    class Viewer(Protocol):
        receive_memoryview = True

        def data_received(self, data: bytes) -> None:
            before = bytes(data[:16])
            self.transport.close()
            seen.append((before, bytes(data[:16])))

    a, b = socket.socketpair()
    with Service() as service:
        conn = Connection(
            service.dispatcher,
            a,
            Viewer(),
            recv_buffer=memoryview(bytearray(16)),
            timers=service.timers,
        )
        b.sendall(b"QUIT-first-chunkPIPELINED-NEXT!!")  # two reads' worth
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            service.run_once(0.01)
        conn.abort()
    b.close()
    assert seen == [(b"QUIT-first-chunk", b"QUIT-first-chunk")]


def test_stop_closes_a_connection_still_connecting_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed: list[BaseException] = []

    class Client(Protocol):
        def connection_failed(self, exc: BaseException) -> None:
            failed.append(exc)
            super().connection_failed(exc)  # the default logging

    # A listener whose backlog is full: a connect to it stays in progress.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    with Service(stop_timeout=30) as service, full:
        with contextlib.suppress(OSError):
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(full.getsockname())
        service.connect_tcp(Client, "127.0.0.1", full.getsockname()[1])
        service.call_later(0.1, service.stop)
        service.call_later(5, pytest.fail, "the stop waited for the connect")
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="asycamore"):
            service.serve_forever(handle_signals=False)
        assert time.monotonic() - started < 3
    for filler in fillers:
        filler.close()
    assert len(failed) <= 1
    if failed:  # (the kernel may have refused or accepted it meanwhile)
        assert isinstance(failed[0], OSError)
        if isinstance(failed[0], ConnectionAbortedError):
            # Cancelled by our own stop: no failure worth a warning.
            cancelled = [r for r in caplog.records if "connect cancelled" in r.getMessage()]
            assert cancelled and all(r.levelno == logging.DEBUG for r in cancelled)
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("port", [65536, 65589, 1 << 20, -1])
def test_ports_beyond_65535_are_refused_everywhere(port: int) -> None:
    """getaddrinfo takes a port modulo 65536: 65589 would have been port 53.

    A port out of range is a wrong value, refused at the call (ValueError naming it)."""
    from asycamore import tcpsocket, udpsocket

    with asycamore.create_dispatcher() as context:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(ValueError, match="port"):
                tcpsocket.connect_tcp(context, Protocol, host, port, timers=Timers())
            with pytest.raises(ValueError, match="port"):
                tcpsocket.listen_tcp(context, Protocol, host, port)
            with pytest.raises(ValueError, match="port"):
                udpsocket.bind_udp(context, Protocol, host, port)  # type: ignore[arg-type]
        assert len(context) == 0


def test_close_from_a_callback_unhooks_the_signal_wakeup_at_once() -> None:
    """The wake-up fd must not point at the closed waker while serve_forever ends."""
    seen: list[int] = []

    def close_and_look() -> None:
        service.close()
        seen.append(signal.set_wakeup_fd(-1))

    service = Service()
    service.call_later(0.01, close_and_look)
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    service.serve_forever()
    assert seen == [-1]
    assert signal.set_wakeup_fd(-1) == -1


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_a_v4_mapped_host_is_served(udp: bool) -> None:
    """``--host ::ffff:127.0.0.1`` is an IPv6 literal for 127.0.0.1: served, not EINVAL."""
    args = ["--host", "::ffff:127.0.0.1", *(["--udp"] if udp else [])]
    with _echo(*args) as (proc, port):
        if udp:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(b"mapped", ("127.0.0.1", port))
                assert sock.recvfrom(100)[0] == b"mapped"
        else:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"mapped")
                assert sock.recv(100) == b"mapped"
        proc.send_signal(signal.SIGTERM)
        assert _wait(proc) == 0
