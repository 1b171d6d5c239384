"""What every socket transport shares: defaults, water marks, flow-control calls.

A transport is a dispatch target that moves data between a socket and a *handler*
(the protocol object).  The stream :class:`~asycamore.tcpsocket.Connection` is one;
a datagram endpoint is another.  They share the bookkeeping here -- the socket and its
descriptor, the handler, the interest registered in the context, the write-buffer
water marks and the ``pause_writing``/``resume_writing`` calls -- so flow control
means the same thing on every transport and is written once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from ..dispatcher import Events, IDispatchContext

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LINGER",
    "DEFAULT_RECV_BUFFER_SIZE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "EVENTS",
    "NO_SOCKET",
    "READ",
    "WRITE",
    "Transport",
    "log",
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

# Interest bits as plain ints on the hot paths, and the Events the context is given.
READ: Final = 1
WRITE: Final = 2
EVENTS: Final = (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)


NO_SOCKET: Final = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
"""A closed socket: the socket of a transport that has none yet (a client connect
still resolving its host name).  Everything a transport does with it fails with
``EBADF`` or does nothing (``close()``), so no code path needs a ``None`` check."""
NO_SOCKET.close()


def water_marks(high: int | None, low: int | None) -> tuple[int, int]:
    """``(high, low)`` with the defaults filled in; ValueError unless 0 <= low <= high."""
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else max(4 * low, DEFAULT_HIGH_WATER)
    if low is None:
        low = high // 4
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low_water ({low}) <= high_water ({high})")
    return high, low


_DEFAULT_MARKS: Final = water_marks(None, None)


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket (a no-op for other families)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the peer may already have reset it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Transport:
    """The state every socket transport keeps (see the module docstring).

    Subclasses own their hot paths; this base holds what they must agree on.  The
    interest registered in the context is kept in ``_events`` (READ/WRITE bits) so that
    a subclass calls :meth:`~asycamore.IDispatchContext.modify` only when it changes.
    ``_buffered`` is the number of bytes waiting to be sent, which the water marks
    apply to.
    """

    __slots__ = (
        "_buffered",
        "_context",
        "_events",
        "_fileno",
        "_handler",
        "_high",
        "_low",
        "_on_close",
        "_sock",
        "_track_activity",
        "last_activity",
    )

    def __init__(
        self,
        context: IDispatchContext,
        sock: socket.socket | None,
        handler: Any,
        high_water: int | None,
        low_water: int | None,
        track_activity: bool,
        on_close: Callable[[Any], object] | None,
    ) -> None:
        self._context = context
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
        if high_water is None and low_water is None:
            self._high, self._low = _DEFAULT_MARKS  # water_marks(None, None), for every connection
        else:
            self._high, self._low = water_marks(high_water, low_water)
        self._on_close = on_close
        self._track_activity = track_activity
        self.last_activity = time.monotonic()
        """The :func:`time.monotonic` time of the last read or write (with
        ``track_activity``; else the time the transport was created)."""

    # -- the dispatch target ---------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once closed)."""
        return self._fileno

    # -- common properties -----------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (do not read from or write to it directly)."""
        return self._sock

    @property
    def context(self) -> IDispatchContext:
        """The dispatch context the transport is registered in."""
        return self._context

    @property
    def events(self) -> Events:
        """The interest currently registered in the context."""
        return EVENTS[self._events]

    @property
    def write_buffer_size(self) -> int:
        """The number of bytes buffered and not yet sent."""
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

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the high- and low-water marks of the write buffer, in bytes.

        *high* defaults to :data:`DEFAULT_HIGH_WATER`, *low* to a quarter of *high*;
        ``0 <= low <= high`` must hold.
        """
        self._high, self._low = water_marks(high, low)
        self._limits_changed()

    def _limits_changed(self) -> None:
        """Apply new water marks to the current buffer (subclasses)."""

    # -- flow control towards the handler --------------------------------------------------

    def _pause_handler(self) -> None:
        pause = getattr(self._handler, "pause_writing", None)
        if pause is not None:
            pause()

    def _resume_handler(self) -> None:
        resume = getattr(self._handler, "resume_writing", None)
        if resume is not None:
            resume()

    def _closed_hook(self) -> None:
        """Tell the owner (``on_close``), once."""
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            on_close(self)
