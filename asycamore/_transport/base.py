"""What every socket transport shares: defaults, water marks, flow-control calls.

A transport is a dispatch target that moves data between a socket and a *handler*
(the protocol object).  The stream :class:`~asycamore.tcpsocket.Connection` is one;
a datagram endpoint is another.  They share the bookkeeping here -- the socket and its
descriptor, the handler, the interest registered in the dispatcher, the write-buffer
water marks and the ``pause_writing``/``resume_writing`` calls -- so flow control
means the same thing on every transport and is written once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..arguments import check_water_marks
from ..dispatcher import Events, IDispatchContext

if TYPE_CHECKING:
    from .options import TransportOptions

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LINGER",
    "DEFAULT_RECV_BUFFER_SIZE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "EVENTS",
    "NO_SOCKET",
    "OFF_USER",
    "OPEN",
    "READ",
    "WRITE",
    "Transport",
    "TransportCounters",
    "default_recv_buffer",
    "log",
    "log_connect_failure",
    "set_nodelay",
    "water_marks",
]

log = logging.getLogger("asycamore")
"""The logger every transport writes to."""

DEFAULT_RECV_BUFFER_SIZE: Final = 256 * 1024
"""Size of the receive buffer that connections share (per thread, or per service)."""

DEFAULT_HIGH_WATER: Final = 64 * 1024
"""Default high-water mark of a connection's write buffer, in bytes."""

DEFAULT_LINGER: Final = 5.0
"""Seconds a closing connection waits for the peer's EOF, discarding its data (the
``lingering_timeout`` of nginx): closing with unread input would send a reset."""

DEFAULT_HANDSHAKE_TIMEOUT: Final = 60.0
"""Seconds a TLS handshake may take before the connection is aborted."""

DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0
"""Seconds a closing TLS connection waits for the peer (its close_notify or EOF, and
for the buffered data to be sent) before it is aborted."""

DEFAULT_BACKLOG: Final = 4096
"""Default ``listen()`` backlog (the kernel caps it at ``net.core.somaxconn``)."""

# Interest bits as plain ints on the hot paths, and the Events the dispatcher is given.
READ: Final = int(Events.READ)
WRITE: Final = int(Events.WRITE)
EVENTS: Final = (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)

# Transport._state: only moves forward.  A datagram endpoint never connects.
CONNECTING: Final = 0  # a client connect is in progress
OPEN: Final = 1
CLOSING: Final = 2  # close() was called: flushing what is buffered
CLOSED: Final = 3  # the socket is closed, the handler told

# Transport._read_off: a set of reasons not to read (reading is on when none is set);
# subclasses add their own bits above this one.
OFF_USER: Final = 1  # pause_reading()


NO_SOCKET: Final = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
"""A closed socket: the socket of a transport that has none yet (a client connect
still resolving its host name).  Everything a transport does with it fails with
``EBADF`` or does nothing (``close()``), so no code path needs a ``None`` check."""
NO_SOCKET.close()


_local = threading.local()


def default_recv_buffer() -> memoryview:
    """This thread's shared receive buffer (:data:`DEFAULT_RECV_BUFFER_SIZE` bytes).

    Transports created without an explicit ``recv_buffer`` read into it.  A handler's
    data is copied out of it before it is delivered (unless the handler asked for
    memoryviews), so sharing one buffer among every transport of a loop is safe and
    keeps per-connection memory small.
    """
    view: memoryview | None = getattr(_local, "recv_buffer", None)
    if view is None:
        view = memoryview(bytearray(DEFAULT_RECV_BUFFER_SIZE))
        _local.recv_buffer = view
    return view


def water_marks(high: int | None, low: int | None) -> tuple[int, int]:
    """``(high, low)`` with the defaults filled in; ValueError unless 0 <= low <= high."""
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else max(4 * low, DEFAULT_HIGH_WATER)
    if low is None:
        low = high // 4
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low_water ({low}) <= high_water ({high})")
    return high, low


def log_connect_failure(exc: BaseException) -> None:
    """Log a failed client connect for a handler without ``connection_failed``.

    A connect that our side cancelled (a ``close()`` while connecting, a service that
    stops) is no failure worth a warning: only at debug level.
    """
    if isinstance(exc, ConnectionAbortedError):
        log.debug("connect cancelled: %s", exc)
    else:
        log.warning("connect failed: %s", exc)


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket (a no-op for other families)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the peer may already have reset it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TransportCounters:
    """What the transports of one owner have done: a service's, which its
    :class:`~asycamore.servicemodel.ServiceStatistics` reports.

    Transports count into the ``counters`` of the
    :class:`~asycamore.tcpsocket.TransportOptions` they are made with (a service's
    options carry its own; the default options none, and such transports count
    nothing).  Plain int attributes: a count on a hot path is one in-place add on an
    object the transport already holds.  Bytes are those the sockets moved: for TLS,
    the encrypted records, handshakes included.
    """

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "connections_accepted",
        "connections_closed",
        "connections_failed",
        "datagrams_received",
        "datagrams_sent",
        "tls_handshakes",
        "tls_handshakes_failed",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        """Connections accepted by a listener."""
        self.connections_closed = 0
        """Stream connections closed after they were accepted or connected."""
        self.connections_failed = 0
        """Client connects that did not connect (failed, timed out or cancelled)."""
        self.bytes_received = 0
        """Bytes read from stream and datagram sockets."""
        self.bytes_sent = 0
        """Bytes the stream and datagram sockets took to send."""
        self.datagrams_received = 0
        """Datagrams received."""
        self.datagrams_sent = 0
        """Datagrams the sockets took to send."""
        self.tls_handshakes = 0
        """TLS handshakes completed."""
        self.tls_handshakes_failed = 0
        """TLS handshakes that failed, timed out or were cut short by a close."""


class Transport:
    """The state every socket transport keeps (see the module docstring).

    Subclasses own their hot paths; this base holds what they must agree on: the
    lifecycle (``_state`` only moves forward, and the handler hears
    ``connection_lost`` exactly once, from :meth:`_finish`, after which the owner's
    ``on_close`` is called), the interest registered in the dispatcher (``_events``,
    READ/WRITE bits, so that a subclass calls
    :meth:`~asycamore.IDispatchContext.modify` only when it changes) and the water
    marks, which apply to ``_buffered``, the number of bytes waiting to be sent.
    """

    __slots__ = (
        "_buffered",
        "_clock",
        "_context",
        "_counters",
        "_events",
        "_fileno",
        "_handler",
        "_high",
        "_low",
        "_on_close",
        "_read_off",
        "_sock",
        "_state",
        "_track_activity",
        "last_activity",
    )

    def __init__(
        self,
        dispatcher: IDispatchContext,
        sock: socket.socket | None,
        handler: Any,
        options: TransportOptions,
        on_close: Callable[[Any], object] | None,
    ) -> None:
        self._context = dispatcher
        if sock is None:
            self._sock = NO_SOCKET
            self._fileno = -1
        else:
            self._sock = sock
            sock.setblocking(False)
            self._fileno = sock.fileno()
        self._handler = handler
        self._events = 0
        self._buffered = 0
        self._state = OPEN
        self._read_off = 0
        self._high, self._low = options.marks
        self._on_close = on_close
        self._counters = options.counters
        self._track_activity = options.idle_timeout is not None
        self._clock: Callable[[], float] = time.monotonic
        self.last_activity = time.monotonic()
        """The time of the last read or write (with an idle timeout; else the time the
        transport was created), on :func:`time.monotonic` or the clock given to
        :meth:`set_clock`."""

    # -- the dispatch target ---------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once closed)."""
        return self._fileno

    def handle_read_event(self) -> None:
        """The socket is readable (subclasses)."""
        raise NotImplementedError

    def handle_write_event(self) -> None:
        """The socket is writable (subclasses)."""
        raise NotImplementedError

    # -- common properties -----------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (do not read from or write to it directly)."""
        return self._sock

    @property
    def dispatcher(self) -> IDispatchContext:
        """The dispatch context the transport is registered in."""
        return self._context

    @property
    def events(self) -> Events:
        """The interest currently registered in the dispatcher."""
        return EVENTS[self._events]

    @property
    def handler(self) -> Any:
        """The handler (``None`` once the transport is closed)."""
        return self._handler

    @property
    def closed(self) -> bool:
        """Whether the transport is closed (the socket is closed, the handler told)."""
        return self._state == CLOSED

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called or the transport is lost."""
        return self._state >= CLOSING

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Keep :attr:`last_activity` on *clock* from now on, starting at its now.

        A :class:`~asycamore.servicemodel.Service` whose timers follow a clock of
        their own (``Service(clock=...)``) calls this as it starts checking the
        transport's idle timeout, so activity and deadlines are read from one clock.
        """
        self._clock = clock
        self.last_activity = clock()

    @property
    def write_buffer_size(self) -> int:
        """The number of bytes buffered and not yet sent."""
        return self._buffered

    def get_write_buffer_size(self) -> int:
        """The number of bytes buffered and not yet sent (asyncio's name)."""
        return self._buffered

    @property
    def write_buffer_limits(self) -> tuple[int, int]:
        """``(high_water, low_water)``."""
        return self._high, self._low

    def getpeername(self) -> Any:
        """The peer's address, or ``None`` if it is not available (any more)."""
        try:
            return self._sock.getpeername()
        except OSError:
            return None

    def getsockname(self) -> Any:
        """The local address, or ``None`` if it is not available (any more)."""
        try:
            return self._sock.getsockname()
        except OSError:
            return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's transport information by name: ``peername``, ``sockname``,
        ``socket``; *default* for anything else or what is not available."""
        if name == "peername":
            value = self.getpeername()
        elif name == "sockname":
            value = self.getsockname()
        elif name == "socket":
            value = None if self._fileno < 0 else self._sock
        else:
            value = None
        return default if value is None else value

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the high- and low-water marks of the write buffer, in bytes.

        *high* defaults to :data:`DEFAULT_HIGH_WATER`, *low* to a quarter of *high*;
        ``0 <= low <= high`` must hold (:class:`ValueError`).
        """
        check_water_marks(high, low)
        self._high, self._low = water_marks(high, low)
        self._limits_changed()

    def _limits_changed(self) -> None:
        """Apply new water marks to the current buffer (subclasses)."""

    def pause_reading(self) -> None:
        """Stop reading from the socket until :meth:`resume_reading`."""
        if not self._read_off & OFF_USER:
            self._read_off |= OFF_USER
            self._update_interest()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading` (reading may stay off for other reasons: flow
        control, an EOF)."""
        if self._read_off & OFF_USER:
            self._read_off &= ~OFF_USER
            self._update_interest()

    def _update_interest(self) -> None:
        """Register the interest the state calls for, if it changed (subclasses)."""
        raise NotImplementedError

    # -- flow control towards the handler --------------------------------------------------

    def _pause_handler(self) -> None:
        pause = getattr(self._handler, "pause_writing", None)
        if pause is not None:
            pause()

    def _resume_handler(self) -> None:
        resume = getattr(self._handler, "resume_writing", None)
        if resume is not None:
            resume()

    # -- the end -----------------------------------------------------------------------------

    def _release(self) -> Any:
        """Unregister, close the socket, drop the buffers; return the handler to tell
        (``None`` if there is none any more).  Subclasses."""
        raise NotImplementedError

    def _finish(self, exc: BaseException | None) -> None:
        """Close now: ``connection_lost(exc)`` to the handler, then ``on_close``."""
        if self._state == CLOSED:
            return
        handler = self._release()
        try:
            if handler is not None:
                handler.connection_lost(exc)
        finally:
            self._closed_hook()

    def _unregister(self) -> None:
        """Leave the dispatcher, which may have dropped us already (a handler error)."""
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on this path
            self._context.unregister(self)
        except (KeyError, ValueError):
            pass
        self._events = 0

    def _closed_hook(self) -> None:
        """Tell the owner (``on_close``), once."""
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            on_close(self)
