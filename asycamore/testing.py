"""The conformance kit: every rule of the dispatch contract, as a pytest test class.

A backend author runs the whole kit against their backend with one import and a
three-line subclass in their own pytest suite::

    from asycamore.testing import BackendConformance

    from mypackage import MyDispatcher


    class TestMyDispatcher(BackendConformance):
        backend_class = MyDispatcher

pytest collects the ``test_*`` methods of the subclass (the base class itself is not
collected: its name does not start with ``Test``).  When the backend needs constructor
arguments, override the :meth:`BackendConformance.backend_factory` fixture instead of
setting ``backend_class``.

The kit uses real sockets only (socketpairs and TCP over the loopback interface), the
standard library and pytest; the optional randomized test also needs hypothesis and is
skipped without it.  It expects level-triggered readiness, as every rule is written for.
Tests that wait are bounded: a dispatch that should have returned but still blocks is
interrupted by a watchdog after a few seconds (on the main thread of a POSIX system).

This module imports pytest: import it only from tests, never from library code.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ClassVar

import pytest

from .dispatcher import ErrorHandler, Events, IDispatchContext, IDispatchTarget

__all__ = [
    "BackendConformance",
    "DispatchHung",
    "RecordingTarget",
    "Sockets",
    "deadline",
]

_READ = Events.READ
_WRITE = Events.WRITE
_NONE = Events.NONE
_READ_WRITE = Events.READ | Events.WRITE

# Bounds for every loop the kit runs, so a broken backend fails rather than hangs.
_MAX_SENDS = 4096
_MAX_RECVS = 4096
_CHUNK = 65536
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # in case a test hands in a blocking socket


class DispatchHung(BaseException):
    """Raised by :func:`deadline` when a call under test blocks past its deadline.

    A :class:`BaseException`, so that a backend's ``except Exception`` cannot swallow it.
    """


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the dispatch") -> Iterator[None]:
    """Interrupt the body with :class:`DispatchHung` if it runs longer than *seconds*.

    A watchdog thread sends ``SIGUSR2`` to the main thread, whose handler raises; system
    calls such as ``select`` or ``epoll_wait`` are interrupted by it.  Only possible on
    the main thread of a POSIX system; elsewhere the body runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_kill"
    ):
        yield
        return
    done = threading.Event()
    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not done.is_set():
            raise DispatchHung(f"{what} was still blocked after {seconds} s")

    def watch() -> None:
        if not done.wait(seconds):
            signal.pthread_kill(main_ident, signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, on_signal)
    watcher = threading.Thread(target=watch, name="asycamore-testing-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR2, previous)


class RecordingTarget:
    """A dispatch target over one socket that records every handler call.

    Each call appends ``(name, "read")`` or ``(name, "write")`` to :attr:`log`, which
    several targets may share to record the order of calls across targets.  Then the
    ``on_read`` / ``on_write`` hook runs if one was given; without an ``on_read`` hook the
    read handler drains the socket (so level-triggered readiness ends) and notes EOF.
    Errors raised by ``recv`` propagate out of the handler, as in a real program.
    """

    def __init__(
        self,
        sock: socket.socket,
        log: list[tuple[str, str]] | None = None,
        name: str = "target",
        on_read: Callable[[RecordingTarget], None] | None = None,
        on_write: Callable[[RecordingTarget], None] | None = None,
    ) -> None:
        self.sock = sock
        """The socket whose descriptor is watched."""
        self.log: list[tuple[str, str]] = [] if log is None else log
        """The shared call log: ``(name, "read" | "write")`` per handler call."""
        self.name = name
        """The name used in :attr:`log`."""
        self.on_read = on_read
        """Called with the target after a read event is logged (replaces draining)."""
        self.on_write = on_write
        """Called with the target after a write event is logged."""
        self.eof = False
        """True once a drain saw end-of-file."""
        self.close_calls = 0
        """How many times :meth:`close` was called."""

    def __repr__(self) -> str:
        return f"<RecordingTarget {self.name}>"

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once the socket is closed)."""
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        """Log the call, then run ``on_read`` or drain the socket."""
        self.log.append((self.name, "read"))
        if self.on_read is not None:
            self.on_read(self)
        else:
            self.drain()

    def handle_write_event(self) -> None:
        """Log the call, then run ``on_write`` if given."""
        self.log.append((self.name, "write"))
        if self.on_write is not None:
            self.on_write(self)

    def drain(self) -> bytes:
        """Read everything the socket holds now (never blocks); set :attr:`eof` on EOF."""
        data = bytearray()
        for _ in range(_MAX_RECVS):
            try:
                chunk = self.sock.recv(_CHUNK, _DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
        return bytes(data)

    def calls(self, kind: str | None = None) -> int:
        """How many handler calls of this target are in the log (of *kind*, if given)."""
        return sum(1 for name, k in self.log if name == self.name and kind in (None, k))

    def close(self) -> None:
        """Count the call and close the socket (the default error policy calls this)."""
        self.close_calls += 1
        self.sock.close()


class Sockets:
    """Makes non-blocking loopback sockets and closes all of them at teardown."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._fds: list[int] = []

    def adopt(self, sock: socket.socket) -> socket.socket:
        """Close *sock* at teardown; return it."""
        self._sockets.append(sock)
        return sock

    def adopt_fd(self, fd: int) -> int:
        """Close the raw descriptor *fd* at teardown (if it is still open); return it."""
        self._fds.append(fd)
        return fd

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking ``socket.socketpair()``."""
        a, b = socket.socketpair()
        for sock in (a, b):
            sock.setblocking(False)
            self.adopt(sock)
        return a, b

    def tcp_pair(self, buffer_size: int | None = None) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking TCP pair over ``127.0.0.1``: ``(client, server)``.

        With *buffer_size*, both sides get small send and receive buffers, so a sender
        can fill the connection quickly.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.adopt(client)
        try:
            if buffer_size is not None:
                for sock in (listener, client):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client.connect(listener.getsockname())
            server, _ = listener.accept()
        finally:
            listener.close()
        self.adopt(server)
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, server

    def close_all(self) -> None:
        """Close every socket and descriptor handed out or adopted."""
        for sock in self._sockets:
            sock.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sockets.clear()
        self._fds.clear()


def _fill_send_buffer(sock: socket.socket) -> int:
    """Send until the kernel refuses more; return the number of bytes sent."""
    sent = 0
    chunk = b"x" * _CHUNK
    for _ in range(_MAX_SENDS):
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            break
    else:  # pragma: no cover - a send buffer of more than 256 MiB
        raise AssertionError("could not fill the send buffer")
    # The precondition of the tests that use this: the socket is now not writable.
    assert select.select([], [sock], [], 0)[1] == [], "the socket is still writable"
    return sent


def _later(delay: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer


class _Errors:
    """An ``error_in_handler`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[IDispatchTarget, Exception]] = []

    def __call__(self, target: IDispatchTarget, exc: Exception) -> None:
        self.calls.append((target, exc))


class _Unhashable(RecordingTarget):
    """A target that compares equal to every other one and cannot be hashed."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return True


class _FixedFd:
    """A target whose fileno() returns a fixed number (never registered successfully)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def handle_read_event(self) -> None:
        raise AssertionError("never called")

    def handle_write_event(self) -> None:
        raise AssertionError("never called")


class _NoClose:
    """A target without a ``close`` method, whose read handler raises."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        self.reads += 1
        raise RuntimeError("no close here")

    def handle_write_event(self) -> None:
        pass


class BackendConformance:
    """Subclass this in a test module to run every rule of the contract on a backend.

    Set :attr:`backend_class` to the backend class, or override the
    :meth:`backend_factory` fixture.  The tests are named after the rules of the
    contract (``test_rule1_...`` to ``test_rule7_...``), plus the life-cycle and
    protocol checks.  Rule 8 (the ``select`` backend's descriptor limit) is specific to
    one backend and is not part of the kit.
    """

    backend_class: ClassVar[type[Any] | None] = None
    """The backend class under test; it is constructed without arguments."""

    closed_fd_detection: ClassVar[bool | None] = None
    """Whether the backend detects a descriptor closed while registered (rule 6).

    By default (``None``) the kit reads the backend class's own ``reports_closed_fds``
    attribute (see :attr:`asycamore.backends.base.DispatcherBase.reports_closed_fds`);
    set this only to override it, for a class that does not say.  ``True`` (poll,
    select): the kit requires that the target is unregistered and its error path gets
    ``OSError(EBADF)``.  ``False`` or ``None``: only that the other targets keep being
    served and the context does not spin; if the backend does unregister the target, its
    error path must still have received ``EBADF``.
    """

    def _expects_eviction(self, ctx: IDispatchContext) -> bool:
        """Whether rule 6 requires *ctx* to unregister a closed descriptor's target."""
        if self.closed_fd_detection is not None:
            return self.closed_fd_detection
        return getattr(type(ctx), "reports_closed_fds", None) is True

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def backend_factory(self) -> Callable[[], IDispatchContext]:
        """A callable returning a new dispatch context; by default ``backend_class()``.

        Skips the test when the class says it is not available here.
        """
        cls = self.backend_class
        if cls is None:
            pytest.fail(
                f"{type(self).__name__}: set backend_class or override the backend_factory fixture"
            )
        if not cls.is_available():
            pytest.skip(f"backend {cls.__qualname__} is not available on this platform")
        return cls

    @pytest.fixture
    def ctx(self, backend_factory: Callable[[], IDispatchContext]) -> Iterator[IDispatchContext]:
        """A new dispatch context, closed after the test."""
        context = backend_factory()
        try:
            yield context
        finally:
            context.close()

    @pytest.fixture
    def sockets(self) -> Iterator[Sockets]:
        """A :class:`Sockets` factory whose sockets are closed after the test."""
        factory = Sockets()
        try:
            yield factory
        finally:
            factory.close_all()

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _ready_target(
        sockets: Sockets, log: list[tuple[str, str]] | None = None, name: str = "target"
    ) -> tuple[RecordingTarget, socket.socket]:
        """A target with one byte waiting to be read, and its peer."""
        sock, peer = sockets.pair()
        peer.send(b"x")
        return RecordingTarget(sock, log, name), peer

    # -- rule 1: registration errors and Events.NONE --------------------------------------

    def test_rule1_register_twice_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Registering the same target twice raises KeyError and changes nothing."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ)
        with pytest.raises(KeyError):
            ctx.register(target, _READ)
        with pytest.raises(KeyError):
            ctx.register(target, _WRITE)
        assert target in ctx
        assert len(ctx) == 1

    def test_rule1_same_fd_other_target_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A second target on an already registered descriptor raises KeyError."""
        sock, peer = sockets.pair()
        first = RecordingTarget(sock, name="first")
        second = RecordingTarget(sock, first.log, name="second")
        ctx.register(first, _READ)
        with pytest.raises(KeyError):
            ctx.register(second, _WRITE)
        assert first in ctx
        assert second not in ctx
        assert len(ctx) == 1
        # The first registration is intact: it is still served, the other never.
        peer.send(b"x")
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert first.log == [("first", "read")]

    def test_rule1_modify_or_unregister_unknown_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """modify/unregister of a target that is not registered raise KeyError."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        with pytest.raises(KeyError):
            ctx.modify(target, _READ)
        with pytest.raises(KeyError):
            ctx.unregister(target)
        ctx.register(target, _READ)
        ctx.unregister(target)
        with pytest.raises(KeyError):
            ctx.unregister(target)
        with pytest.raises(KeyError):
            ctx.modify(target, _WRITE)
        assert len(ctx) == 0

    @pytest.mark.parametrize("events", [4, 8, -1, 0x10, 7, 0x7FFFFFFF])
    def test_rule1_bad_events_raise_valueerror(
        self, ctx: IDispatchContext, sockets: Sockets, events: int
    ) -> None:
        """Events outside _READ|_WRITE raise ValueError at register and nothing is kept."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        with pytest.raises(ValueError):
            ctx.register(target, events)  # type: ignore[arg-type]
        assert target not in ctx
        assert len(ctx) == 0
        ctx.register(target, _READ)  # a failed register left nothing behind
        assert target in ctx

    @pytest.mark.parametrize("events", [_READ, _WRITE, _READ_WRITE, _NONE])
    def test_rule1_negative_fd_raises_valueerror(
        self, ctx: IDispatchContext, sockets: Sockets, events: Events
    ) -> None:
        """A target whose fileno() is negative (a closed socket) raises ValueError,
        whatever the interest, and nothing is kept."""
        sock, _ = sockets.pair()
        sock.close()
        target = RecordingTarget(sock)
        assert target.fileno() == -1
        with pytest.raises(ValueError):
            ctx.register(target, events)
        assert target not in ctx
        assert len(ctx) == 0
        other = _FixedFd(-7)
        with pytest.raises(ValueError):
            ctx.register(other, events)
        assert other not in ctx
        assert len(ctx) == 0

    def test_rule1_events_none_receives_nothing(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A target registered with Events.NONE gets no calls, not even for a hang-up."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _NONE)
        assert target in ctx
        assert len(ctx) == 1
        peer.send(b"data")
        peer.close()  # pending data, then a hang-up
        start = time.monotonic()
        for _ in range(3):
            assert ctx.dispatch_once(0.02) == 0
        # Not even a wake-up: a hang-up reaching the OS would end each wait at once.
        assert time.monotonic() - start >= 0.05
        assert target.log == []
        # Still registered: interest can be given back, and then it is served.
        ctx.modify(target, _READ)
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert target.eof

    def test_rule1_modify_to_none_silences(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """modify(target, _NONE) silences a ready target, including its hang-up."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock, on_read=lambda t: None)  # never drains
        ctx.register(target, _READ_WRITE)
        peer.send(b"x")
        peer.close()
        assert ctx.dispatch_once(0) == 2
        ctx.modify(target, _NONE)
        start = time.monotonic()
        for _ in range(3):
            assert ctx.dispatch_once(0.02) == 0
        assert time.monotonic() - start >= 0.05
        assert target.log == [("target", "read"), ("target", "write")]
        ctx.unregister(target)
        assert len(ctx) == 0

    def test_rule1_targets_need_not_be_hashable(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Targets are told apart by identity: unhashable, all-equal targets work."""
        log: list[tuple[str, str]] = []
        sock_a, peer_a = sockets.pair()
        sock_b, peer_b = sockets.pair()
        a = _Unhashable(sock_a, log, "a")
        b = _Unhashable(sock_b, log, "b")
        ctx.register(a, _READ)
        ctx.register(b, _READ)
        assert len(ctx) == 2
        peer_b.send(b"x")
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert log == [("b", "read")]
        ctx.unregister(a)
        assert b in ctx
        assert len(ctx) == 1
        peer_a.send(b"x")
        assert ctx.dispatch_once(0.02) == 0

    # -- rule 2: unregister after close ---------------------------------------------------

    @pytest.mark.parametrize("events", [_READ, _WRITE, _READ_WRITE, _NONE])
    def test_rule2_unregister_after_close(
        self, ctx: IDispatchContext, sockets: Sockets, events: Events
    ) -> None:
        """unregister works when the target's descriptor was already closed."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, events)
        sock.close()
        ctx.unregister(target)
        assert target not in ctx
        assert len(ctx) == 0
        # The context is healthy afterwards, even when the number is reused at once.
        new_sock, new_peer = sockets.pair()
        newcomer = RecordingTarget(new_sock, name="new")
        ctx.register(newcomer, _READ)
        new_peer.send(b"x")
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert newcomer.log == [("new", "read")]

    def test_rule2_unregister_after_close_and_fd_reuse(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """unregister after close, when another socket already took the fd number."""
        sock, _ = sockets.pair()
        old = RecordingTarget(sock, name="old")
        ctx.register(old, _READ_WRITE)
        fd = sock.fileno()
        sock.close()
        new_sock, new_peer = sockets.pair()
        if new_sock.fileno() != fd:
            os.dup2(new_sock.fileno(), fd)
            new_sock.close()
            new_sock = sockets.adopt(socket.socket(fileno=fd))
            new_sock.setblocking(False)
        ctx.unregister(old)
        assert len(ctx) == 0
        newcomer = RecordingTarget(new_sock, name="new")
        ctx.register(newcomer, _READ)
        new_peer.send(b"x")
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert newcomer.log == [("new", "read")]
        assert old.log == []

    # -- rule 3: timeouts and the return value --------------------------------------------

    def test_rule3_timeout_none_blocks_until_ready(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """dispatch_once(None) waits for readiness that arrives later, then serves it."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ)
        timer = _later(0.2, lambda: peer.send(b"x"))
        start = time.monotonic()
        try:
            with deadline(10, "dispatch_once(None)"):
                calls = ctx.dispatch_once(None)
        finally:
            timer.join()
        assert time.monotonic() - start >= 0.15
        assert calls == 1
        assert target.log == [("target", "read")]

    @pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5])
    def test_rule3_non_positive_timeout_does_not_block(
        self, ctx: IDispatchContext, sockets: Sockets, timeout: float
    ) -> None:
        """dispatch_once(timeout <= 0) returns at once when nothing is ready."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ)
        with deadline(3, f"dispatch_once({timeout!r}) on an idle context"):
            for _ in range(20):
                assert ctx.dispatch_once(timeout) == 0
        assert target.log == []

    def test_rule3_non_positive_timeout_serves_ready_targets(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A non-blocking dispatch still serves what is ready."""
        target, _ = self._ready_target(sockets)
        ctx.register(target, _READ)
        assert ctx.dispatch_once(0) == 1
        assert target.log == [("target", "read")]

    def test_rule3_timeout_waits(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """An idle dispatch_once(timeout) waits about that long (a lower bound only)."""
        sock, _ = sockets.pair()
        ctx.register(RecordingTarget(sock), _READ)
        start = time.monotonic()
        with deadline(10):
            assert ctx.dispatch_once(0.1) == 0
        assert time.monotonic() - start >= 0.09

    def test_rule3_timeout_waits_on_empty_context(self, ctx: IDispatchContext) -> None:
        """A context with no targets still waits out its timeout."""
        start = time.monotonic()
        with deadline(10):
            assert ctx.dispatch_once(0.05) == 0
        assert time.monotonic() - start >= 0.045

    def test_rule3_tiny_timeout_is_rounded_up(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A 0.4 ms timeout waits at least 0.4 ms: it is not rounded down to a busy poll."""
        sock, _ = sockets.pair()
        ctx.register(RecordingTarget(sock), _READ)
        rounds = 200
        start = time.monotonic()
        with deadline(20):
            for _ in range(rounds):
                assert ctx.dispatch_once(0.0004) == 0
        # Rounded down to 0, 200 rounds would take a few hundred microseconds in all.
        assert time.monotonic() - start >= 0.9 * rounds * 0.0004

    @pytest.mark.parametrize("timeout", [1e7, 1e10, float("inf")])
    def test_rule3_long_timeouts_are_accepted(
        self, ctx: IDispatchContext, sockets: Sockets, timeout: float
    ) -> None:
        """Timeouts beyond what the OS call takes (poll's int of milliseconds is about
        24.8 days), and an infinite one, are accepted: with a target ready, the dispatch
        serves it at once."""
        target, _ = self._ready_target(sockets)
        ctx.register(target, _READ)
        with deadline(10, f"dispatch_once({timeout}) with a target ready"):
            assert ctx.dispatch_once(timeout) == 1
        assert target.log == [("target", "read")]

    def test_rule3_returns_number_of_handler_calls(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """The return value is the number of handler calls made."""
        log: list[tuple[str, str]] = []
        reader, _ = self._ready_target(sockets, log, "reader")
        both, _ = self._ready_target(sockets, log, "both")
        writer_sock, _ = sockets.pair()
        writer = RecordingTarget(writer_sock, log, "writer")
        idle_sock, _ = sockets.pair()
        idle = RecordingTarget(idle_sock, log, "idle")
        ctx.register(reader, _READ)
        ctx.register(both, _READ_WRITE)
        ctx.register(writer, _WRITE)
        ctx.register(idle, _READ)
        assert ctx.dispatch_once(0) == 4
        assert sorted(log) == [
            ("both", "read"),
            ("both", "write"),
            ("reader", "read"),
            ("writer", "write"),
        ]
        log.clear()
        # Drained now: only the write interests remain ready.
        assert ctx.dispatch_once(0) == 2
        assert sorted(log) == [("both", "write"), ("writer", "write")]

    # -- rule 4: order and staleness within one dispatch ----------------------------------

    def test_rule4_read_before_write(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A target ready for both gets handle_read_event before handle_write_event."""
        log: list[tuple[str, str]] = []
        targets = [self._ready_target(sockets, log, f"t{i}")[0] for i in range(4)]
        for target in targets:
            ctx.register(target, _READ_WRITE)
        assert ctx.dispatch_once(0) == 8
        for target in targets:
            mine = [kind for name, kind in log if name == target.name]
            assert mine == ["read", "write"]

    @pytest.mark.parametrize(
        "change", ["unregister", "modify-none", "modify-write", "unregister-register"]
    )
    def test_rule4_other_target_changed_by_handler(
        self, ctx: IDispatchContext, sockets: Sockets, change: str
    ) -> None:
        """A handler that unregisters (or takes _READ from) another ready target drops
        that target's pending read in the same dispatch."""
        log: list[tuple[str, str]] = []
        first: list[RecordingTarget] = []

        def on_read(me: RecordingTarget) -> None:
            me.drain()
            if first:
                return
            first.append(me)
            other = b if me is a else a
            if change == "unregister":
                ctx.unregister(other)
            elif change == "modify-none":
                ctx.modify(other, _NONE)
            elif change == "modify-write":
                ctx.modify(other, _WRITE)
            else:  # a new registration of the same target is a new registration
                ctx.unregister(other)
                ctx.register(other, _READ)

        a, _ = self._ready_target(sockets, log, "a")
        b, _ = self._ready_target(sockets, log, "b")
        a.on_read = b.on_read = on_read
        ctx.register(a, _READ)
        ctx.register(b, _READ)
        assert ctx.dispatch_once(0) == 1
        assert log == [(first[0].name, "read")]

    def test_rule4_stale_event_never_reaches_new_target_on_same_fd(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A handler unregisters ready target B, closes B's socket and registers a new
        target C on a socket with B's old descriptor number: C gets nothing of B's in
        that dispatch, and is served normally in the next one."""
        log: list[tuple[str, str]] = []
        swapped: list[RecordingTarget] = []

        def on_read(me: RecordingTarget) -> None:
            me.drain()
            if swapped:
                return
            other = b if me is a else a
            fd = other.fileno()
            ctx.unregister(other)
            other.sock.close()
            new_sock, new_peer = sockets.pair()
            if new_sock.fileno() != fd:
                os.dup2(new_sock.fileno(), fd)
                new_sock.close()
                new_sock = sockets.adopt(socket.socket(fileno=fd))
                new_sock.setblocking(False)
            new_peer.send(b"c")  # C is readable and writable at once
            c = RecordingTarget(new_sock, log, "c")
            ctx.register(c, _READ_WRITE)
            swapped.extend([me, c])

        a, _ = self._ready_target(sockets, log, "a")
        b, _ = self._ready_target(sockets, log, "b")
        a.on_read = b.on_read = on_read
        ctx.register(a, _READ)
        ctx.register(b, _READ)
        assert ctx.dispatch_once(0) == 1
        first, c = swapped
        assert log == [(first.name, "read")]
        assert c in ctx
        log.clear()
        assert ctx.dispatch_once(0) == 2
        assert log == [("c", "read"), ("c", "write")]

    @pytest.mark.parametrize(
        ("new_interest", "expected"),
        [
            (_WRITE, ["read", "write"]),
            (_READ_WRITE, ["read", "write"]),
            (_READ, ["read"]),
            (_NONE, ["read"]),
            (None, ["read"]),  # None: the handler unregisters its own target
        ],
    )
    def test_rule4_handler_changes_own_interest(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        new_interest: Events | None,
        expected: list[str],
    ) -> None:
        """The write handler runs only if the target still wants _WRITE after its read
        handler ran."""

        def on_read(me: RecordingTarget) -> None:
            me.drain()
            if new_interest is None:
                ctx.unregister(me)
            else:
                ctx.modify(me, new_interest)

        target, _ = self._ready_target(sockets)
        target.on_read = on_read
        ctx.register(target, _READ_WRITE)
        assert ctx.dispatch_once(0) == len(expected)
        assert [kind for _, kind in target.log] == expected

    # -- rule 5: hang-ups and errors are readiness ----------------------------------------

    def test_rule5_peer_closed_is_readable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A _READ target whose peer closed gets handle_read_event (and recv sees EOF), and
        no write call: only the registered interest is reported."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ)
        peer.close()
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert target.eof

    def test_rule5_peer_closed_is_writable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A _WRITE-only target with a full send buffer gets handle_write_event when its
        peer closes, and no read call; its next send reveals the error."""
        sock, peer = sockets.pair()
        _fill_send_buffer(sock)
        errors: list[OSError] = []

        def on_write(me: RecordingTarget) -> None:
            try:
                me.sock.send(b"more")
            except OSError as exc:
                errors.append(exc)

        target = RecordingTarget(sock, on_write=on_write)
        ctx.register(target, _WRITE)
        assert ctx.dispatch_once(0.02) == 0  # not writable yet
        peer.close()
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "write")]
        assert len(errors) == 1
        assert isinstance(errors[0], (BrokenPipeError, ConnectionResetError))

    def test_rule5_peer_closed_both_interests(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A _READ|_WRITE target whose peer closed gets both calls, read first."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ_WRITE)
        peer.close()
        assert ctx.dispatch_once(0) == 2
        assert target.log == [("target", "read"), ("target", "write")]

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close *sock* with SO_LINGER 0, so that the peer gets a TCP reset."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        sock.close()

    def test_rule5_reset_is_readable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A TCP reset (SO_LINGER 0 on the peer) is reported to a _READ target, whose recv
        then fails or sees EOF."""
        client, server = sockets.tcp_pair()
        outcome: list[object] = []

        def on_read(me: RecordingTarget) -> None:
            try:
                outcome.append(me.sock.recv(100))
            except OSError as exc:
                outcome.append(exc)

        target = RecordingTarget(client, on_read=on_read)
        ctx.register(target, _READ)
        assert ctx.dispatch_once(0.02) == 0
        self._reset(server)
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert outcome == [b""] or isinstance(outcome[0], ConnectionResetError), outcome

    def test_rule5_reset_is_writable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A TCP reset is reported to a _WRITE-only target whose send buffer is full."""
        client, server = sockets.tcp_pair(buffer_size=4096)
        _fill_send_buffer(client)
        errors: list[OSError] = []

        def on_write(me: RecordingTarget) -> None:
            try:
                me.sock.send(b"more")
            except OSError as exc:
                errors.append(exc)

        target = RecordingTarget(client, on_write=on_write)
        ctx.register(target, _WRITE)
        assert ctx.dispatch_once(0.02) == 0
        self._reset(server)
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "write")]
        assert len(errors) == 1
        assert isinstance(errors[0], (BrokenPipeError, ConnectionResetError))

    # -- rule 6: a descriptor closed while registered -------------------------------------

    def _closed_while_registered(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        error_in_handler: ErrorHandler | None,
        *,
        keep_file_open: bool,
    ) -> RecordingTarget:
        """Close A's descriptor without unregistering it; check that B keeps being served
        and that idle dispatches still wait.  Returns A."""
        sock_a, peer_a = sockets.pair()
        sock_b, peer_b = sockets.pair()
        a = RecordingTarget(sock_a, name="a")
        b = RecordingTarget(sock_b, name="b")
        ctx.register(a, _READ)
        ctx.register(b, _READ)
        if keep_file_open:
            # Another descriptor keeps the socket alive, and it is readable.
            sockets.adopt_fd(os.dup(sock_a.fileno()))
            peer_a.send(b"x")
        sock_a.close()
        with deadline(30, "dispatching with a closed descriptor registered"):
            for _ in range(20):
                peer_b.send(b"y")
                ctx.dispatch_once(2.0, error_in_handler)
                if b.calls("read") >= 10:
                    break
            assert b.calls("read") >= 10, "the other target was not served"
            start = time.monotonic()
            for _ in range(4):
                ctx.dispatch_once(0.05, error_in_handler)
        assert time.monotonic() - start >= 0.15, "idle dispatches returned at once (a spin)"
        if self._expects_eviction(ctx):
            assert a not in ctx, "the closed descriptor's target was not unregistered"
        return a

    @staticmethod
    def _is_ebadf(exc: BaseException | None) -> bool:
        return isinstance(exc, OSError) and exc.errno == errno.EBADF

    def test_rule6_closed_fd_does_not_break_context(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A descriptor closed while registered: the others are served, no busy spin;
        if the target is unregistered, its error path got OSError(EBADF) once."""
        errors = _Errors()
        a = self._closed_while_registered(ctx, sockets, errors, keep_file_open=False)
        reports = [exc for target, exc in errors.calls if target is a]
        if a not in ctx:
            assert len(reports) == 1
            assert self._is_ebadf(reports[0]), reports
        assert all(target is a for target, _ in errors.calls), errors.calls

    def test_rule6_closed_fd_default_policy(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The same with the default error policy: an unregistered target was logged
        with its EBADF and closed."""
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            a = self._closed_while_registered(ctx, sockets, None, keep_file_open=False)
        if a not in ctx:
            assert a.close_calls == 1
            logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
            assert any(self._is_ebadf(exc) for exc in logged), caplog.text

    def test_rule6_closed_fd_with_live_duplicate(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A descriptor closed while registered whose socket stays open (and readable)
        through another descriptor must not make the context spin either (default
        policy).  epoll, for one, keeps such a socket in its set after the close."""
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            a = self._closed_while_registered(ctx, sockets, None, keep_file_open=True)
        if a not in ctx:
            assert a.close_calls == 1

    # -- rule 7: errors in handlers -------------------------------------------------------

    @staticmethod
    def _failing(exc: BaseException) -> Callable[[RecordingTarget], None]:
        def on_event(me: RecordingTarget) -> None:
            me.drain()
            raise exc

        return on_event

    def test_rule7_error_in_handler_gets_target_and_exception(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """error_in_handler(target, exc) gets the very exception; the other ready targets
        are still served; the failed call counts in the return value."""
        log: list[tuple[str, str]] = []
        boom = ValueError("boom")
        bad, _ = self._ready_target(sockets, log, "bad")
        bad.on_read = self._failing(boom)
        goods = [self._ready_target(sockets, log, f"good{i}")[0] for i in range(3)]
        ctx.register(bad, _READ)
        for good in goods:
            ctx.register(good, _READ)
        errors = _Errors()
        assert ctx.dispatch_once(0, errors) == 4
        assert len(errors.calls) == 1
        target, exc = errors.calls[0]
        assert target is bad
        assert exc is boom
        assert sorted(log) == sorted([(t.name, "read") for t in [bad, *goods]])
        assert bad in ctx  # the caller's error handler decides what to do with it
        assert bad.close_calls == 0

    def test_rule7_write_handler_error(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """An error raised by handle_write_event goes the same way."""
        sock, _ = sockets.pair()
        boom = OSError(errno.EPIPE, "boom")
        target = RecordingTarget(sock, on_write=self._failing(boom))
        ctx.register(target, _WRITE)
        errors = _Errors()
        assert ctx.dispatch_once(0, errors) == 1
        assert errors.calls == [(target, boom)]

    def test_rule7_error_in_handler_raising_propagates(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """An exception raised by error_in_handler propagates out of dispatch_once."""

        class Escalated(Exception):
            pass

        def escalate(target: IDispatchTarget, exc: Exception) -> None:
            raise Escalated from exc

        target, _ = self._ready_target(sockets)
        target.on_read = self._failing(ValueError("boom"))
        ctx.register(target, _READ)
        with pytest.raises(Escalated) as info:
            ctx.dispatch_once(0, escalate)
        assert isinstance(info.value.__cause__, ValueError)

    def test_rule7_default_policy_logs_unregisters_closes(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy: log the traceback on logger "asycamore", unregister the target,
        call its close(); the other ready targets are still served."""
        log: list[tuple[str, str]] = []
        boom = ValueError("boom-7-default")
        bad, _ = self._ready_target(sockets, log, "bad")
        bad.on_read = self._failing(boom)
        goods = [self._ready_target(sockets, log, f"good{i}")[0] for i in range(3)]
        ctx.register(bad, _READ_WRITE)
        for good in goods:
            ctx.register(good, _READ)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            calls = ctx.dispatch_once(0)
        # bad's write handler does not run: the policy unregistered it after its read.
        assert calls == 4
        assert sorted(log) == sorted([(t.name, "read") for t in [bad, *goods]])
        assert bad not in ctx
        assert bad.close_calls == 1
        assert len(ctx) == 3
        records = [r for r in caplog.records if r.name == "asycamore" and r.exc_info]
        assert len(records) == 1
        exc_info = records[0].exc_info
        assert exc_info is not None
        assert exc_info[1] is boom
        assert "Traceback" in caplog.text
        assert "boom-7-default" in caplog.text

    def test_rule7_default_policy_target_already_unregistered(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy when the failing handler had unregistered its own target."""

        def on_read(me: RecordingTarget) -> None:
            ctx.unregister(me)
            raise RuntimeError("after unregister")

        target, _ = self._ready_target(sockets)
        target.on_read = on_read
        ctx.register(target, _READ)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            assert ctx.dispatch_once(0) == 1
        assert target not in ctx
        assert target.close_calls == 1
        assert "after unregister" in caplog.text

    def test_rule7_default_policy_target_without_close(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy on a target that has no close(): logged and unregistered."""
        sock, peer = sockets.pair()
        peer.send(b"x")
        target = _NoClose(sock)
        ctx.register(target, _READ)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            assert ctx.dispatch_once(0) == 1
        assert target.reads == 1
        assert target not in ctx
        assert "no close here" in caplog.text

    @pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
    @pytest.mark.parametrize("with_error_handler", [False, True])
    def test_rule7_base_exceptions_propagate_at_once(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        caplog: pytest.LogCaptureFixture,
        exc_type: type[BaseException],
        with_error_handler: bool,
    ) -> None:
        """KeyboardInterrupt/SystemExit from a handler propagate at once: no other handler
        runs, no error handler or policy is applied, and the context stays usable."""
        log: list[tuple[str, str]] = []
        targets = [self._ready_target(sockets, log, f"t{i}")[0] for i in range(3)]
        for target in targets:
            target.on_read = self._failing(exc_type())
            ctx.register(target, _READ_WRITE)
        errors = _Errors()
        with caplog.at_level(logging.ERROR, logger="asycamore"), pytest.raises(exc_type):
            ctx.dispatch_once(0, errors if with_error_handler else None)
        assert len(log) == 1
        assert errors.calls == []
        assert not [r for r in caplog.records if r.name == "asycamore"]
        assert all(target in ctx and target.close_calls == 0 for target in targets)
        for target in targets:
            target.on_read = None
        assert ctx.dispatch_once(0) >= 3

    # -- signals --------------------------------------------------------------------------

    @pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
    def test_signal_during_dispatch_is_not_an_error(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """SIGALRM with a handler that returns, arriving during a blocking dispatch (EINTR
        in the system call), neither raises nor loses the readiness that follows."""
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signal handlers can only be set on the main thread")
        hits: list[int] = []
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, _READ)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.03, 0.03)
            with deadline(10):
                assert ctx.dispatch_once(0.2) == 0
            assert hits, "no signal arrived during the dispatch"
            hits.clear()
            timer = _later(0.25, lambda: peer.send(b"x"))
            try:
                with deadline(10, "dispatch_once(None) interrupted by signals"):
                    calls = ctx.dispatch_once(None)
            finally:
                timer.join()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert hits, "no signal arrived during the dispatch"
        assert calls == 1
        assert target.log == [("target", "read")]

    # -- life cycle and the protocol ------------------------------------------------------

    def test_close_is_idempotent(self, backend_factory: Callable[[], IDispatchContext]) -> None:
        """close() may be called any number of times."""
        context = backend_factory()
        context.close()
        context.close()
        context.close()

    def test_close_with_registered_targets(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """close() with targets still registered (some closed already) succeeds."""
        context = backend_factory()
        sock_a, _ = sockets.pair()
        sock_b, _ = sockets.pair()
        context.register(RecordingTarget(sock_a), _READ)
        context.register(RecordingTarget(sock_b), _READ_WRITE)
        sock_a.close()
        context.close()
        context.close()

    def test_close_from_a_handler_ends_the_round(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """A handler that closes the context: no other handler runs in that dispatch
        (the closed context has forgotten its targets), and dispatch_once returns."""
        context = backend_factory()
        log: list[tuple[str, str]] = []
        targets = [self._ready_target(sockets, log, f"t{i}")[0] for i in range(3)]
        for target in targets:
            target.on_read = lambda me: context.close()
            context.register(target, _READ_WRITE)
        assert context.dispatch_once(0) == 1
        assert len(log) == 1
        assert len(context) == 0

    def test_context_manager(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """``with`` returns the context itself and closes it on the way out, also when
        the body raises (which then propagates)."""
        context = backend_factory()
        closes: list[bool] = []
        real_close = context.close

        def spy() -> None:
            closes.append(True)
            real_close()

        try:
            context.close = spy  # type: ignore[method-assign]
        except AttributeError:  # __slots__: swap in a subclass that records the call
            cls = type(context)
            probe = type(cls.__name__, (cls,), {"__slots__": (), "close": lambda self: spy()})
            context.__class__ = probe
        with context as entered:
            assert entered is context
            sock, _ = sockets.pair()
            entered.register(RecordingTarget(sock), _READ)
        assert closes, "__exit__ did not close the context"
        context.close()  # still idempotent after __exit__

        other = backend_factory()
        with pytest.raises(ZeroDivisionError), other:
            raise ZeroDivisionError
        other.close()

    def test_contains_and_len(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """``in`` and len() follow register/unregister; unknown objects are not in."""
        targets = [RecordingTarget(sockets.pair()[0], name=f"t{i}") for i in range(3)]
        assert len(ctx) == 0
        assert object() not in ctx
        assert targets[0] not in ctx
        for count, target in enumerate(targets, 1):
            ctx.register(target, _NONE if count == 3 else _READ)
            assert len(ctx) == count
            assert target in ctx
        ctx.modify(targets[0], _WRITE)
        assert len(ctx) == 3
        ctx.unregister(targets[1])
        assert targets[1] not in ctx
        assert targets[0] in ctx
        assert len(ctx) == 2
        assert "not a target" not in ctx

    def test_implements_protocol(self, ctx: IDispatchContext) -> None:
        """The context is an IDispatchContext, with a non-empty string name."""
        assert isinstance(ctx, IDispatchContext)
        assert isinstance(ctx.name, str)
        assert ctx.name

    def test_class_priority_and_is_available(self, ctx: IDispatchContext) -> None:
        """The backend class has an int priority and a classmethod is_available()."""
        cls = type(ctx)
        assert type(cls.priority) is int  # type: ignore[attr-defined]
        static = inspect.getattr_static(cls, "is_available")
        assert isinstance(static, classmethod), "is_available must be a classmethod"
        assert cls.is_available() is True  # type: ignore[attr-defined]
        assert isinstance(getattr(cls, "name", None), str)
        assert ctx.name == cls.name

    # -- randomized -----------------------------------------------------------------------

    def test_random_operations_match_model(
        self, backend_factory: Callable[[], IDispatchContext]
    ) -> None:
        """Random register/modify/unregister/peer-write/peer-close/drain/dispatch sequences
        on socketpairs agree with a model of which handlers must run (needs hypothesis)."""
        pytest.importorskip("hypothesis")
        _run_model_machine(backend_factory)


def _run_model_machine(backend_factory: Callable[[], IDispatchContext]) -> None:
    """Drive a context through random operations and compare with a simple model.

    Four socketpairs; the model knows, per slot, the registered interest (or None), whether
    data is pending and whether the peer has closed.  A non-blocking dispatch must call
    ``read`` exactly for the slots with _READ interest and data or EOF, ``write`` exactly
    for the slots with _WRITE interest (an idle socketpair is always writable), read before
    write, and return the number of calls.  The read handler drains the socket.
    """
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )

    slots = st.integers(min_value=0, max_value=3)
    interests = st.sampled_from([_NONE, _READ, _WRITE, _READ_WRITE])

    class DispatchModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sockets = Sockets()
            self.ctx = backend_factory()
            self.log: list[tuple[str, str]] = []
            self.pairs = [self.sockets.pair() for _ in range(4)]
            self.targets = [
                RecordingTarget(sock, self.log, str(i)) for i, (sock, _) in enumerate(self.pairs)
            ]
            self.interest: list[Events | None] = [None] * 4
            self.pending = [False] * 4
            self.eof = [False] * 4

        @rule(slot=slots, events=interests)
        def register(self, slot: int, events: Events) -> None:
            if self.interest[slot] is not None:
                with pytest.raises(KeyError):
                    self.ctx.register(self.targets[slot], events)
            else:
                self.ctx.register(self.targets[slot], events)
                self.interest[slot] = events

        @rule(slot=slots, events=interests)
        def register_other_target_same_fd(self, slot: int, events: Events) -> None:
            twin = RecordingTarget(self.pairs[slot][0], self.log, f"twin{slot}")
            if self.interest[slot] is not None:
                with pytest.raises(KeyError):
                    self.ctx.register(twin, events)
                assert twin not in self.ctx

        @rule(slot=slots, events=interests)
        def modify(self, slot: int, events: Events) -> None:
            if self.interest[slot] is None:
                with pytest.raises(KeyError):
                    self.ctx.modify(self.targets[slot], events)
            else:
                self.ctx.modify(self.targets[slot], events)
                self.interest[slot] = events

        @rule(slot=slots)
        def unregister(self, slot: int) -> None:
            if self.interest[slot] is None:
                with pytest.raises(KeyError):
                    self.ctx.unregister(self.targets[slot])
            else:
                self.ctx.unregister(self.targets[slot])
                self.interest[slot] = None

        @rule(slot=slots)
        def peer_write(self, slot: int) -> None:
            if not self.eof[slot]:
                self.pairs[slot][1].send(b"x")
                self.pending[slot] = True

        @precondition(lambda self: sum(self.eof) < 2)
        @rule(slot=slots)
        def peer_close(self, slot: int) -> None:
            self.pairs[slot][1].close()
            self.eof[slot] = True

        @rule(slot=slots)
        def drain(self, slot: int) -> None:
            self.targets[slot].drain()
            self.pending[slot] = False

        @rule()
        def dispatch(self) -> None:
            expected: list[tuple[str, str]] = []
            for slot, events in enumerate(self.interest):
                if events is None:
                    continue
                if events & _READ and (self.pending[slot] or self.eof[slot]):
                    expected.append((str(slot), "read"))
                if events & _WRITE:
                    expected.append((str(slot), "write"))
            self.log.clear()
            calls = self.ctx.dispatch_once(0)
            assert sorted(self.log) == sorted(expected)
            assert calls == len(expected)
            for slot in range(4):
                kinds = [kind for name, kind in self.log if name == str(slot)]
                assert kinds in ([], ["read"], ["write"], ["read", "write"])
                if kinds and kinds[0] == "read":
                    self.pending[slot] = False

        @invariant()
        def membership(self) -> None:
            assert len(self.ctx) == sum(events is not None for events in self.interest)
            for slot, target in enumerate(self.targets):
                assert (target in self.ctx) == (self.interest[slot] is not None)

        def teardown(self) -> None:
            self.ctx.close()
            self.sockets.close_all()

    run_state_machine_as_test(
        DispatchModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
