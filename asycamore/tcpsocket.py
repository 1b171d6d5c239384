"""Dispatch targets for stream sockets: listeners, connections and client connects.

This is the transport layer of asycamore.  Its targets work with any dispatch context
(:class:`~asycamore.IDispatchContext`) and keep their interest in it up to date
themselves, calling :meth:`~asycamore.IDispatchContext.modify` only when it changes:

- :class:`Listener` accepts connections in batches on a listening socket (TCP over IPv4
  or IPv6, or a Unix domain socket), with an optional connection limit and a short
  back-off instead of a busy loop when the process runs out of descriptors.
- :class:`Connection` moves bytes between a connected socket and a *handler* (any object
  with the :class:`StreamHandler` callbacks): non-blocking reads into a shared buffer,
  a write buffer with high/low water marks that pauses reading while the peer does not
  keep up, half-close, graceful :meth:`~Connection.close` and :meth:`~Connection.abort`.
- :func:`connect_tcp` / :func:`connect_unix` start a non-blocking connect with an
  optional timeout; the handler hears :meth:`~StreamHandler.connection_made` or
  ``connection_failed(exc)``.
- :class:`Timers` is a small timer heap for loops built directly on
  :func:`~asycamore.iterate` (the listener's back-off and the connect timeout use it);
  :class:`asycamore.servicemodel.Service` runs one for you.

Everything here is single-threaded: call a target's methods only from the thread that
runs its dispatch context.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import itertools
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Final, Protocol

from .dispatcher import Events, IDispatchContext

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_RECV_BUFFER_SIZE",
    "Connection",
    "Listener",
    "StreamHandler",
    "TimerHandle",
    "Timers",
    "connect_tcp",
    "connect_unix",
    "create_listening_socket",
    "create_unix_listening_socket",
    "default_recv_buffer",
    "listen_tcp",
    "listen_unix",
]

_log = logging.getLogger("asycamore")

DEFAULT_RECV_BUFFER_SIZE: Final = 256 * 1024
"""Size of the receive buffer that connections share (per thread, or per service)."""

DEFAULT_HIGH_WATER: Final = 64 * 1024
"""Default high-water mark of a connection's write buffer, in bytes."""

DEFAULT_BACKLOG: Final = 4096
"""Default ``listen()`` backlog (the kernel caps it at ``net.core.somaxconn``)."""

_monotonic = time.monotonic

# Interest bits as plain ints (hot paths) and as Events (for the context).
_READ: Final = 1
_WRITE: Final = 2
_EVENTS: Final = (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)

# Connection states.
_CONNECTING: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2
_CLOSED: Final = 3

# Why reading is off (a bit set: reading is on only when none is set).
_RB_USER: Final = 1  # pause_reading()
_RB_FLOW: Final = 2  # the write buffer is above the high-water mark
_RB_EOF: Final = 4  # the peer sent EOF
_RB_CLOSING: Final = 8  # close() is flushing
_RB_CONNECTING: Final = 16  # not connected yet

# write_eof() progress.
_EOF_NONE: Final = 0
_EOF_PENDING: Final = 1  # shutdown(SHUT_WR) once the buffer is flushed
_EOF_SENT: Final = 2

_IOV_MAX: Final = 64  # chunks per sendmsg() call
_COALESCE_BELOW: Final = 4096  # small writes are copied into a shared tail chunk...
_COALESCE_LIMIT: Final = 64 * 1024  # ...until it is this big

# accept() errors that concern only the one connection being accepted (see accept(2)).
_ACCEPT_RETRY: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETDOWN",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)
# accept() errors that mean the process or system is out of a resource: back off.
_ACCEPT_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# -- timers -----------------------------------------------------------------------------


class TimerHandle:
    """A scheduled call, returned by :meth:`Timers.call_at` and :meth:`Timers.call_later`."""

    __slots__ = ("_args", "_callback", "_timers", "cancelled", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        timers: Timers | None,
    ) -> None:
        self.when = when
        """The clock time the call is due at."""
        self.cancelled = False
        """Whether :meth:`cancel` was called."""
        self._callback: Callable[..., object] | None = callback
        self._args = args
        self._timers = timers

    def cancel(self) -> None:
        """Cancel the call if it has not run yet; harmless afterwards or twice."""
        if self.cancelled:
            return
        self.cancelled = True
        self._callback = None
        self._args = ()
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers._cancelled_one()

    def _run(self) -> None:
        callback = self._callback
        if callback is not None:
            args = self._args
            self._callback = None
            self._args = ()
            callback(*args)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<TimerHandle when={self.when:.3f}{state} {self._callback!r}>"


class Timers:
    """A timer heap with lazy cancellation, for loops built on :func:`~asycamore.iterate`.

    :meth:`call_later` / :meth:`call_at` schedule a call; :meth:`run_due` runs the calls
    that are due and :meth:`timeout` says how long the next dispatch may block.  The
    :meth:`before_dispatch` method does both and can be passed to
    :func:`~asycamore.iterate` as is::

        timers = Timers()
        iterate(dispatcher, timeout=None, before_dispatch=timers.before_dispatch)

    A cancelled call stays in the heap until it comes to the top or until cancelled
    calls make up most of the heap, when the heap is rebuilt: cancelling is O(1).
    An exception raised by a call is logged on logger ``"asycamore"`` and does not stop
    the other calls.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """The clock, :func:`time.monotonic` by default."""
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def time(self) -> float:
        """The current time on this heap's clock."""
        return self.clock()

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` once the clock reaches *when*."""
        handle = TimerHandle(when, callback, args, self)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` after *delay* seconds."""
        return self.call_at(self.clock() + delay, callback, *args)

    def __len__(self) -> int:
        """The number of scheduled calls that are not cancelled."""
        return len(self._heap) - self._cancelled

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 64 and self._cancelled * 2 > len(heap):
            self._heap = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The clock time of the earliest pending call, or ``None`` if there is none."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def timeout(self, now: float | None = None) -> float | None:
        """Seconds until the earliest pending call (0 if it is due), ``None`` if none."""
        deadline = self.next_deadline()
        if deadline is None:
            return None
        if now is None:
            now = self.clock()
        return max(deadline - now, 0.0)

    def run_due(self, now: float | None = None) -> int:
        """Run the calls due at *now* (default: the clock); return how many ran.

        Calls scheduled while they run are left for the next round, even if they are
        already due, so a call that re-schedules itself cannot starve the loop.
        """
        heap = self._heap
        if not heap:
            return 0
        if now is None:
            now = self.clock()
        if heap[0][0] > now:
            return 0
        due: list[TimerHandle] = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
                continue
            handle._timers = None
            due.append(handle)
        for handle in due:
            try:
                handle._run()
            except Exception:
                _log.exception("error in timer callback %r", handle)
        return len(due)

    def before_dispatch(
        self, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
    ) -> None:
        """An :func:`~asycamore.iterate` callback: run due calls, set the next timeout."""
        self.run_due()
        dispatchvars["timeout"] = self.timeout()


# -- rate-limited warnings -----------------------------------------------------------------


class _Throttle:
    """Log a recurring warning at most once per *interval* seconds, with a count."""

    __slots__ = ("_interval", "_next", "_suppressed")

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = _monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._suppressed = 0
        self._next = now + self._interval
        _log.warning(message, *args)


# -- connections -------------------------------------------------------------------------------


class StreamHandler(Protocol):
    """The callbacks a :class:`Connection` makes; any object with them will do.

    :class:`asycamore.servicemodel.Protocol` is a ready-made base class.  Optional
    extras, looked up once when the connection is made:

    ``receive_memoryview`` (attribute, default false)
        When true, :meth:`data_received` gets a :class:`memoryview` of the shared receive
        buffer instead of :class:`bytes`: no copy, but the view is valid only during the
        call (copy what you keep; writing it back with :meth:`Connection.write` is safe).
    ``pause_writing()`` / ``resume_writing()``
        Called when the write buffer goes above the high-water mark and back to the
        low-water mark (the connection also stops reading meanwhile, by itself).
    ``connection_failed(exc)``
        Called instead of :meth:`connection_made` when a client connect fails or times
        out; without it the failure is logged.
    """

    def connection_made(self, connection: Connection) -> None:
        """The connection is established; *connection* is its transport."""
        ...

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived (never empty)."""
        ...

    def eof_received(self) -> bool | None:
        """The peer closed its sending side.

        Return a true value to keep the connection open for writing (half-close);
        otherwise the connection closes itself gracefully, flushing what is buffered.
        """
        ...

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is closed: *exc* is ``None`` for a normal close, else why."""
        ...


_local = threading.local()


def default_recv_buffer() -> memoryview:
    """This thread's shared receive buffer (:data:`DEFAULT_RECV_BUFFER_SIZE` bytes).

    Connections created without an explicit ``recv_buffer`` read into it.  A handler's
    data is copied out of it before :meth:`StreamHandler.data_received` (unless the
    handler asked for memoryviews), so sharing one buffer among every connection of a
    loop is safe and keeps per-connection memory small.
    """
    view: memoryview | None = getattr(_local, "recv_buffer", None)
    if view is None:
        view = memoryview(bytearray(DEFAULT_RECV_BUFFER_SIZE))
        _local.recv_buffer = view
    return view


def _no_data(data: bytes) -> None:
    pass


class Connection:
    """A connected stream socket as a dispatch target: the transport of one handler.

    *sock* must be connected (or connecting, see :func:`connect_tcp`); it is made
    non-blocking.  With ``start=True`` (the default) the connection registers itself in
    *context* for reading and calls ``handler.connection_made(self)``.

    Reading: each readable event makes one ``recv_into`` the shared receive buffer
    (*recv_buffer*, default :func:`default_recv_buffer`) and hands the bytes to
    ``handler.data_received``.  Writing: :meth:`write` sends at once when nothing is
    buffered and buffers only what the socket did not take; the buffer is a queue of
    chunks drained with ``send``/``sendmsg``, never re-copied.  When more than
    *high_water* bytes are buffered the connection stops reading (and calls the
    handler's ``pause_writing()``, if any) until the buffer is down to *low_water*
    (default a quarter of *high_water*), so memory stays bounded when the peer does
    not read.

    A reset or any other socket error closes the connection and reports the error to
    ``handler.connection_lost(exc)``, which is called exactly once.  *on_close*, if
    given, is called with the connection after that (owners use it for bookkeeping).
    When *track_activity* is true, :attr:`last_activity` is updated on every successful
    read and write (for idle timeouts).
    """

    __slots__ = (
        "_context",
        "_eof",
        "_events",
        "_fileno",
        "_handler",
        "_high",
        "_low",
        "_on_close",
        "_on_data",
        "_rblock",
        "_rview",
        "_sock",
        "_state",
        "_timer",
        "_track",
        "_views",
        "_wbuf",
        "_woff",
        "_wsize",
        "last_activity",
    )

    def __init__(
        self,
        context: IDispatchContext,
        sock: socket.socket,
        handler: StreamHandler,
        *,
        recv_buffer: memoryview | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        track_activity: bool = False,
        on_close: Callable[[Connection], object] | None = None,
        start: bool = True,
    ) -> None:
        self._context = context
        self._sock = sock
        sock.setblocking(False)
        self._fileno = sock.fileno()
        self._handler: StreamHandler | None = handler
        self._views = bool(getattr(handler, "receive_memoryview", False))
        self._on_data: Callable[[Any], object] = handler.data_received
        self._rview = default_recv_buffer() if recv_buffer is None else recv_buffer
        self._wbuf: collections.deque[bytes | bytearray | memoryview] | None = None
        self._woff = 0
        self._wsize = 0
        self._events = 0
        self._state = _OPEN
        self._rblock = 0
        self._eof = _EOF_NONE
        self._timer: TimerHandle | None = None
        self._on_close = on_close
        self._track = track_activity
        self.last_activity = _monotonic()
        """The :func:`time.monotonic` time of the last read or write (with
        ``track_activity``; else the time the connection was created)."""
        self._high, self._low = _water_marks(high_water, low_water)
        if start:
            self._register(_READ)
            self._made()

    # -- set-up ----------------------------------------------------------------------------

    def _register(self, events: int) -> None:
        """Register in the context (raises what ``register`` raises, e.g. FD_SETSIZE)."""
        self._context.register(self, _EVENTS[events])
        self._events = events

    def _made(self) -> None:
        handler = self._handler
        if handler is not None:
            handler.connection_made(self)

    # -- the dispatch target ---------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once closed)."""
        return self._fileno

    def handle_read_event(self) -> None:
        """Read once into the shared buffer and deliver the data (or the EOF)."""
        rview = self._rview
        try:
            n = self._sock.recv_into(rview)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if n:
            if self._track:
                self.last_activity = _monotonic()
            if self._views:
                self._on_data(rview[:n])
            else:
                self._on_data(bytes(rview[:n]))
        else:
            self._read_eof()

    def handle_write_event(self) -> None:
        """Send what is buffered (or finish a connect)."""
        if self._state == _CONNECTING:
            self._finish_connect()
            return
        wbuf = self._wbuf
        if not wbuf:
            self._update_interest()
            return
        try:
            if len(wbuf) == 1:
                off = self._woff
                n = self._sock.send(memoryview(wbuf[0])[off:] if off else wbuf[0])
            else:
                n = self._sock.sendmsg(self._iov(wbuf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if self._track:
            self.last_activity = _monotonic()
        self._advance(wbuf, n)
        if not wbuf:
            self._drained()
        elif self._rblock & _RB_FLOW and self._wsize <= self._low:
            self._flow_resume()

    # -- public API -------------------------------------------------------------------------------

    @property
    def handler(self) -> StreamHandler | None:
        """The handler (``None`` once the connection is closed)."""
        return self._handler

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (do not read from or write to it directly)."""
        return self._sock

    @property
    def context(self) -> IDispatchContext:
        """The dispatch context the connection is registered in."""
        return self._context

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (the socket is closed, the handler told)."""
        return self._state == _CLOSED

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called or the connection is lost."""
        return self._state >= _CLOSING

    @property
    def connecting(self) -> bool:
        """Whether a client connect is still in progress."""
        return self._state == _CONNECTING

    @property
    def reading(self) -> bool:
        """Whether the connection is currently reading from its socket."""
        return self._state == _OPEN and not self._rblock

    @property
    def events(self) -> Events:
        """The interest currently registered in the context."""
        return _EVENTS[self._events]

    @property
    def write_buffer_size(self) -> int:
        """The number of bytes buffered and not yet sent."""
        return self._wsize

    @property
    def write_buffer_limits(self) -> tuple[int, int]:
        """``(high_water, low_water)``."""
        return self._high, self._low

    @property
    def eof_received(self) -> bool:
        """Whether the peer has closed its sending side."""
        return bool(self._rblock & _RB_EOF)

    @property
    def eof_written(self) -> bool:
        """Whether :meth:`write_eof` was called."""
        return self._eof != _EOF_NONE

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
        self._high, self._low = _water_marks(high, low)
        if self._state == _OPEN:
            self._check_flow()
            self._update_interest()

    def pause_reading(self) -> None:
        """Stop reading from the socket until :meth:`resume_reading`."""
        if not self._rblock & _RB_USER:
            self._rblock |= _RB_USER
            self._update_interest()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading` (reading may stay off for flow control or EOF)."""
        if self._rblock & _RB_USER:
            self._rblock &= ~_RB_USER
            self._update_interest()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data*, buffering whatever the socket does not take at once.

        Never blocks.  *data* is not referenced after the call unless it is
        :class:`bytes` (what is buffered of any other object is copied), so a
        memoryview of a reused buffer may be written.  Writes after :meth:`close` or
        :meth:`abort`, or once the connection is lost, are silently dropped; a write
        after :meth:`write_eof` raises :class:`RuntimeError`.
        """
        if self._wbuf or self._state != _OPEN or self._eof:
            self._write_later(data)
            return
        # Nothing is buffered: send at once.  This is the echo path, so it is kept to
        # the fewest operations: bytes and memoryviews (the receive buffer's slices)
        # are sized without a conversion.
        kind = type(data)
        if kind is bytes:
            size = len(data)
        elif kind is memoryview:
            size = data.nbytes  # type: ignore[union-attr]
        else:
            data = memoryview(data).cast("B")
            size = data.nbytes
        if not size:
            return
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._lose(exc)
            return
        if n and self._track:
            self.last_activity = _monotonic()
        if n == size:
            return
        # The socket took part (or none): keep the rest, a view if *data* is immutable.
        if kind is bytes:
            rest: bytes | bytearray | memoryview = memoryview(data)[n:] if n else data
        else:
            rest = bytes(memoryview(data).cast("B")[n:])
        wbuf = self._wbuf
        if wbuf is None:
            wbuf = self._wbuf = collections.deque()
        wbuf.append(rest)
        self._wsize = size - n
        self._check_flow()
        self._update_interest()

    def _write_later(self, data: bytes | bytearray | memoryview) -> None:
        """`write` when data is already buffered, or the connection is not open."""
        state = self._state
        if state != _OPEN or self._eof:
            if state <= _OPEN and self._eof:
                raise RuntimeError("write() after write_eof()")
            if state != _CONNECTING:
                return
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        size = len(data)
        if not size:
            return
        wbuf = self._wbuf
        if wbuf is None:
            wbuf = self._wbuf = collections.deque()
        self._append(wbuf, data, size)
        self._wsize += size
        if self._wsize > self._high and not self._rblock & _RB_FLOW and state == _OPEN:
            self._check_flow()
            self._update_interest()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write several chunks, as one :meth:`write` of their concatenation."""
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        """Half-close: shut down the sending side once the buffer is flushed.

        The connection keeps reading.  It closes itself once both sides have sent EOF.
        """
        if self._state > _OPEN or self._eof:
            return
        if self._wbuf or self._state == _CONNECTING:
            self._eof = _EOF_PENDING
            return
        self._shutdown_write()

    def can_write_eof(self) -> bool:
        """Always true: stream sockets support half-close."""
        return True

    def close(self) -> None:
        """Close gracefully: stop reading, flush the write buffer, then close.

        ``handler.connection_lost(None)`` is called once the socket is closed (at once
        if nothing is buffered).  Idempotent.
        """
        state = self._state
        if state >= _CLOSING:
            return
        if state == _CONNECTING:
            self._lose(ConnectionAbortedError(errno.ECONNABORTED, "closed while connecting"))
            return
        if not self._wbuf or self not in self._context:
            # Nothing to flush, or the context dropped us (a handler error under the
            # default policy): nothing more can be sent.
            self._finish(None)
            return
        self._state = _CLOSING
        self._rblock |= _RB_CLOSING
        self._update_interest()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, discarding buffered data; ``connection_lost(exc)`` follows."""
        if self._state == _CLOSED:
            return
        if self._state == _CONNECTING:
            self._lose(
                exc or ConnectionAbortedError(errno.ECONNABORTED, "aborted while connecting")
            )
            return
        self._finish(exc)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "closed")[self._state]
        return f"<Connection fd={self._fileno} {state} buffered={self._wsize}>"

    # -- internals --------------------------------------------------------------------------------

    def _update_interest(self) -> None:
        state = self._state
        if state not in (_OPEN, _CLOSING):
            return
        events = (0 if self._rblock else _READ) | (_WRITE if self._wbuf else 0)
        if events != self._events:
            self._events = events
            self._context.modify(self, _EVENTS[events])

    def _check_flow(self) -> None:
        """Apply the water marks to the current buffer size (may call the handler)."""
        if self._rblock & _RB_FLOW:
            if self._wsize <= self._low:
                self._flow_resume()
        elif self._wsize > self._high:
            self._rblock |= _RB_FLOW
            pause = getattr(self._handler, "pause_writing", None)
            if pause is not None:
                pause()

    def _flow_resume(self) -> None:
        self._rblock &= ~_RB_FLOW
        self._update_interest()
        resume = getattr(self._handler, "resume_writing", None)
        if resume is not None and self._state == _OPEN:
            resume()

    @staticmethod
    def _append(
        wbuf: collections.deque[bytes | bytearray | memoryview],
        data: bytes | memoryview,
        size: int,
    ) -> None:
        if size < _COALESCE_BELOW:
            # Small writes share a tail chunk: fewer iovecs and less per-chunk memory.
            # The head (len 1) is never extended: a send may hold a view on it.
            if len(wbuf) > 1:
                tail = wbuf[-1]
                if type(tail) is bytearray and len(tail) + size <= _COALESCE_LIMIT:
                    tail += data
                    return
            wbuf.append(bytearray(data))
        elif type(data) is bytes:
            wbuf.append(data)
        else:
            wbuf.append(bytes(data))

    def _iov(
        self, wbuf: collections.deque[bytes | bytearray | memoryview]
    ) -> list[bytes | bytearray | memoryview]:
        iov = list(itertools.islice(wbuf, _IOV_MAX))
        if self._woff:
            iov[0] = memoryview(iov[0])[self._woff :]
        return iov

    def _advance(self, wbuf: collections.deque[bytes | bytearray | memoryview], n: int) -> None:
        self._wsize -= n
        n += self._woff
        while wbuf:
            head_len = len(wbuf[0])
            if n < head_len:
                break
            wbuf.popleft()
            n -= head_len
        self._woff = n

    def _drained(self) -> None:
        """The write buffer just became empty."""
        if self._eof == _EOF_PENDING:
            self._shutdown_write()
            if self._state == _CLOSED:
                return
        if self._state == _CLOSING:
            self._finish(None)
            return
        if self._rblock & _RB_FLOW:
            self._flow_resume()
        self._update_interest()

    def _shutdown_write(self) -> None:
        self._eof = _EOF_SENT
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lose(exc)
            return
        if self._rblock & _RB_EOF:
            self._finish(None)

    def _read_eof(self) -> None:
        self._rblock |= _RB_EOF
        handler = self._handler
        keep_open = handler.eof_received() if handler is not None else None
        if self._state != _OPEN:
            return
        if not keep_open:
            self.close()
        elif self._eof == _EOF_SENT:
            self._finish(None)
        else:
            self._update_interest()

    def _lose(self, exc: BaseException) -> None:
        """The socket failed (reset, broken pipe, connect error...)."""
        if self._state == _CONNECTING:
            self._fail_connect(exc)
            return
        _log.debug("%r lost: %s", self, exc)
        self._finish(exc)

    def _release(self) -> StreamHandler | None:
        """Unregister and close the socket; return the handler to notify, if any."""
        self._state = _CLOSED
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on this hot path
            self._context.unregister(self)
        except (KeyError, ValueError):
            pass  # never registered, or dropped by the context's error policy
        self._events = 0
        self._sock.close()
        self._fileno = -1
        self._wbuf = None
        self._wsize = 0
        self._woff = 0
        handler = self._handler
        # Break the connection <-> handler cycle so that the garbage collector has no
        # work to do for a closed connection.
        self._handler = None
        self._on_data = _no_data
        return handler

    def _finish(self, exc: BaseException | None) -> None:
        if self._state == _CLOSED:
            return
        handler = self._release()
        try:
            if handler is not None:
                handler.connection_lost(exc)
        finally:
            self._closed_hook()

    def _closed_hook(self) -> None:
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            on_close(self)

    # -- client connects ---------------------------------------------------------------

    def _start_connect(self, timeout: float | None, timers: Timers | None) -> None:
        if timeout is not None and timers is None:
            raise ValueError("a connect timeout needs timers")
        self._state = _CONNECTING
        self._rblock |= _RB_CONNECTING
        self._register(_WRITE)
        if timeout is not None and timers is not None:
            self._timer = timers.call_later(timeout, self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self._state == _CONNECTING:
            self._fail_connect(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _finish_connect(self) -> None:
        try:
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            self._fail_connect(exc)
            return
        if err:
            self._fail_connect(OSError(err, os.strerror(err)))
            return
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        self._state = _OPEN
        self._rblock &= ~_RB_CONNECTING
        _set_nodelay(self._sock)
        self._made()
        if self._state != _OPEN:
            return
        if self._wbuf:
            # Written while connecting: the socket is writable now, send it at once.
            self._check_flow()
            self._update_interest()
            self.handle_write_event()
        elif self._eof == _EOF_PENDING:
            self._shutdown_write()
        self._update_interest()

    def _fail_connect(self, exc: BaseException) -> None:
        if self._state == _CLOSED:
            return
        handler = self._release()
        try:
            failed = getattr(handler, "connection_failed", None)
            if failed is not None:
                failed(exc)
            else:
                _log.warning("connect failed: %s", exc)
        finally:
            self._closed_hook()


def _water_marks(high: int | None, low: int | None) -> tuple[int, int]:
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else max(4 * low, DEFAULT_HIGH_WATER)
    if low is None:
        low = high // 4
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low_water ({low}) <= high_water ({high})")
    return high, low


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the peer may already have reset it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _connect(
    context: IDispatchContext,
    sock: socket.socket,
    address: Any,
    handler: StreamHandler,
    timeout: float | None,
    timers: Timers | None,
    options: dict[str, Any],
) -> Connection:
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(err, f"connect to {address!r} failed: {os.strerror(err)}")
        conn = Connection(context, sock, handler, start=False, **options)
        conn._start_connect(timeout, timers)
    except BaseException:
        sock.close()
        raise
    return conn


def connect_tcp(
    context: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    **options: Any,
) -> Connection:
    """Start a non-blocking TCP connect to *host*:*port*; return the connection.

    The connection is registered at once; when the connect completes the handler's
    ``connection_made`` is called, and if it fails or *timeout* seconds pass first (a
    timeout needs *timers*), its ``connection_failed(exc)`` is (with a
    :class:`TimeoutError` for the timeout).  :meth:`Connection.write` and
    :meth:`Connection.write_eof` may be called meanwhile: the data is sent once
    connected.  *options* are passed to :class:`Connection`.

    *host* is resolved with a blocking :func:`socket.getaddrinfo` (instant for a
    numeric address); resolution errors and errors the OS reports at once raise
    :class:`OSError` here.
    """
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    return _connect(context, sock, address, handler, timeout, timers, options)


def connect_unix(
    context: IDispatchContext,
    handler: StreamHandler,
    path: str,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    **options: Any,
) -> Connection:
    """Like :func:`connect_tcp`, to the Unix domain socket at *path*."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return _connect(context, sock, path, handler, timeout, timers, options)


# -- listeners ----------------------------------------------------------------------------------


class Listener:
    """A listening socket as a dispatch target: accepts connections for handlers.

    For each accepted socket, ``handler_factory()`` makes a handler and a
    :class:`Connection` is started with it (*connection_options* are passed to the
    connection: ``recv_buffer``, ``high_water``, ``low_water``, ``track_activity``).
    Up to *accept_batch* connections are accepted per readable event.

    - ``ECONNABORTED`` and the other errors that concern a single pending connection are
      skipped.
    - ``EMFILE``/``ENFILE`` (and ``ENOBUFS``/``ENOMEM``): the listener stops accepting
      for *backoff* seconds (the pending connections wait in the kernel's backlog)
      instead of spinning on a socket that stays readable, logs a warning on logger
      ``"asycamore"`` (once per episode, at most every 30 s), then tries again.  The
      resume needs *timers*; it also happens early when one of the listener's own
      connections closes.
    - A connection the context refuses (the ``select`` backend refuses descriptors at or
      above ``FD_SETSIZE``) is closed and logged; the listener goes on.
    - With *max_connections*, the listener stops accepting while that many of its
      connections are open.

    *on_connection* is called with each new connection before its handler's
    ``connection_made``, *on_connection_closed* after its ``connection_lost``.
    """

    def __init__(
        self,
        context: IDispatchContext,
        sock: socket.socket,
        handler_factory: Callable[[], StreamHandler],
        *,
        timers: Timers | None = None,
        max_connections: int | None = None,
        accept_batch: int = 64,
        backoff: float = 0.25,
        on_connection: Callable[[Connection], object] | None = None,
        on_connection_closed: Callable[[Connection], object] | None = None,
        **connection_options: Any,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if accept_batch < 1:
            raise ValueError("accept_batch must be at least 1")
        self._context = context
        self._sock = sock
        sock.setblocking(False)
        self._fileno = sock.fileno()
        self._factory = handler_factory
        self._timers = timers
        self.max_connections = max_connections
        """The connection limit (``None``: no limit)."""
        self.accept_batch = accept_batch
        """How many connections one readable event accepts at most."""
        self.backoff = backoff
        """Seconds to stop accepting after ``EMFILE``/``ENFILE``."""
        self.on_connection = on_connection
        """Called with each new connection, before its handler's ``connection_made``."""
        self.on_connection_closed = on_connection_closed
        """Called with each connection after its handler's ``connection_lost``."""
        self._options = connection_options
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._count = 0
        self._events = 0
        self._closed = False
        self._at_limit = False
        self._backing_off = False
        self._episode = False
        self._resume_timer: TimerHandle | None = None
        self._refused = _Throttle()
        self._exhaustion_log = _Throttle(30.0)
        self._unix_path: str | None = None
        self.accepted = 0
        """How many connections were accepted and started."""
        self.refused = 0
        """How many accepted connections the context refused (FD_SETSIZE)."""
        context.register(self, Events.READ)
        self._events = _READ

    # -- the dispatch target ---------------------------------------------------------------------

    def fileno(self) -> int:
        """The listening socket's descriptor (``-1`` once closed)."""
        return self._fileno

    def handle_read_event(self) -> None:
        """Accept up to :attr:`accept_batch` pending connections."""
        accept = self._sock.accept
        limit = self.max_connections
        for _ in range(self.accept_batch):
            if limit is not None and self._count >= limit:
                self._at_limit = True
                self._set_events(0)
                return
            try:
                sock, _address = accept()
            except (BlockingIOError, InterruptedError):
                if self._episode:
                    # The backlog is drained without running out: the episode is over.
                    self._episode = False
                    _log.info("accepting connections again on %s", self._where())
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self._exhausted(exc)
                    return
                raise
            self._start(sock)
            if self._closed:
                return

    def handle_write_event(self) -> None:
        """Never called: a listener only registers for reading."""

    # -- public API -------------------------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The listening socket."""
        return self._sock

    @property
    def address(self) -> Any:
        """The address the socket is bound to (``getsockname()``)."""
        return self._sock.getsockname()

    @property
    def port(self) -> int:
        """The bound TCP port (``0`` for a Unix domain socket)."""
        address = self.address
        return int(address[1]) if isinstance(address, tuple) else 0

    @property
    def connection_count(self) -> int:
        """How many of this listener's connections are open."""
        return self._count

    @property
    def accepting(self) -> bool:
        """Whether the listener currently watches for new connections."""
        return self._events == _READ

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections stay open."""
        if self._closed:
            return
        self._closed = True
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        with contextlib.suppress(KeyError, ValueError):
            self._context.unregister(self)
        self._events = 0
        self._sock.close()
        self._fileno = -1
        path = self._unix_path
        if path is not None:
            self._unix_path = None
            _remove_socket_file(path)

    def __repr__(self) -> str:
        return f"<Listener fd={self._fileno} connections={self._count}>"

    # -- internals --------------------------------------------------------------------------------

    def _where(self) -> str:
        try:
            return repr(self._sock.getsockname())
        except OSError:
            return f"fd {self._fileno}"

    def _set_events(self, events: int) -> None:
        if events != self._events and not self._closed:
            self._context.modify(self, _EVENTS[events])
            self._events = events

    def _start(self, sock: socket.socket) -> None:
        try:
            if self._tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()  # reset before we got to it
            return
        try:
            handler = self._factory()
            conn = Connection(
                self._context,
                sock,
                handler,
                on_close=self._connection_closed,
                start=False,
                **self._options,
            )
        except Exception:
            _log.exception("cannot create a handler for a connection on %s", self._where())
            sock.close()
            return
        try:
            conn._register(_READ)
        except (ValueError, KeyError) as exc:
            self.refused += 1
            self._refused.warning("closing a new connection: %s", exc)
            conn._release()
            return
        self._count += 1
        self.accepted += 1
        try:
            if self.on_connection is not None:
                self.on_connection(conn)
            conn._made()
        except Exception as exc:
            _log.exception("error in connection_made of %r", conn)
            conn.abort(exc)

    def _connection_closed(self, conn: Connection) -> None:
        self._count -= 1
        if self.on_connection_closed is not None:
            self.on_connection_closed(conn)
        if self._closed:
            return
        if self._at_limit and (self.max_connections is None or self._count < self.max_connections):
            self._at_limit = False
            self._resume()
        elif self._backing_off:
            # A descriptor was just freed: try again now rather than at the timer.
            self._backoff_over()

    def _exhausted(self, exc: OSError) -> None:
        if not self._episode:
            # Once per episode (until the backlog drains), and at most every few
            # seconds when the process keeps running into the limit.
            self._episode = True
            self._exhaustion_log.warning(
                "cannot accept on %s: %s; pausing accepts for %.2f s",
                self._where(),
                exc.strerror,
                self.backoff,
            )
        self._backing_off = True
        self._set_events(0)
        if self._timers is not None and self._resume_timer is None:
            self._resume_timer = self._timers.call_later(self.backoff, self._backoff_over)

    def _backoff_over(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._backing_off = False
        self._resume()

    def _resume(self) -> None:
        if not self._closed and not self._at_limit and not self._backing_off:
            self._set_events(_READ)


def _remove_socket_file(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def create_listening_socket(
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    family: int = socket.AF_UNSPEC,
    backlog: int = DEFAULT_BACKLOG,
    reuse_address: bool = True,
    reuse_port: bool = False,
) -> socket.socket:
    """A non-blocking TCP socket bound to *host*:*port* and listening.

    *host* is resolved with :func:`socket.getaddrinfo` (``None`` or ``""``: all
    interfaces) and the first address is used.  ``SO_REUSEADDR`` is set unless
    *reuse_address* is false; ``SO_REUSEPORT`` only with *reuse_port*.  Raises
    :class:`OSError` (:class:`socket.gaierror` for a bad address) on failure.
    """
    infos = socket.getaddrinfo(
        host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    af, type_, proto, _, address = infos[0]
    sock = socket.socket(af, type_, proto)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ValueError("SO_REUSEPORT is not supported on this platform")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def create_unix_listening_socket(path: str, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A non-blocking Unix domain stream socket bound to *path* and listening.

    A stale socket file at *path* is removed first (any other kind of file is left
    alone, and ``bind`` fails).
    """
    _remove_socket_file(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp(
    context: IDispatchContext,
    handler_factory: Callable[[], StreamHandler],
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_address: bool = True,
    reuse_port: bool = False,
    **listener_options: Any,
) -> Listener:
    """Listen on *host*:*port* (see :func:`create_listening_socket`); return the
    :class:`Listener`, already registered in *context*.  *listener_options* are passed
    to :class:`Listener`."""
    sock = create_listening_socket(
        host, port, backlog=backlog, reuse_address=reuse_address, reuse_port=reuse_port
    )
    try:
        return Listener(context, sock, handler_factory, **listener_options)
    except BaseException:
        sock.close()
        raise


def listen_unix(
    context: IDispatchContext,
    handler_factory: Callable[[], StreamHandler],
    path: str,
    *,
    backlog: int = DEFAULT_BACKLOG,
    **listener_options: Any,
) -> Listener:
    """Listen on the Unix domain socket *path*; the socket file is removed again when
    the listener is closed."""
    sock = create_unix_listening_socket(path, backlog=backlog)
    try:
        listener = Listener(context, sock, handler_factory, **listener_options)
    except BaseException:
        sock.close()
        _remove_socket_file(path)
        raise
    listener._unix_path = path
    return listener
