"""A connected stream socket (TCP or Unix) as a transport: :class:`Connection`.

How a connection works, and why
===============================

A connection is a dispatch target, so all it ever learns from the OS is "readable" and
"writable".  Everything else is its own state, kept in a few small integers so that
the two hot paths -- one ``recv_into`` per readable event, one ``send`` per write --
test as little as possible.

``_state`` is where the connection is in its life: CONNECTING (a client connect is in
progress; only writability is watched, because that is how a non-blocking connect
reports its end), OPEN, CLOSING (``close()`` was called with data still buffered: it
is being flushed, nothing more is read) and CLOSED (socket closed, handler told).  It
only moves forward, and ``connection_lost`` (or ``connection_failed``) is called
exactly once, on the move to CLOSED.

``_read_off`` is a set of reasons *not* to read: the user paused (``pause_reading``),
flow control (the write buffer is above the high-water mark, so reading more would
only buffer more: the peer is not keeping up), the peer's EOF, a closing flush, an
unfinished connect.  Reading is on exactly when the set is empty, so every reason is
added and removed independently and none can undo another.  The interest registered
in the dispatcher is derived from it and from the write buffer (``_update_interest``):
READ when ``_read_off`` is empty, WRITE when something is buffered.  Interest changes
reach the dispatcher -- a system call on epoll and kqueue -- only when they change.

``_shut_wr`` is the sending side's EOF: NONE, PENDING (``write_eof()`` was called
with data still buffered: the ``shutdown(SHUT_WR)`` waits for the buffer to drain)
and DONE.  The receiving side's EOF is the ``OFF_EOF`` reason in ``_read_off``.
Once both are in, the connection closes itself: nothing can move either way.

The write buffer, ``_chunks``, is a deque of chunks that is never re-copied: a
partial send advances ``_head_sent`` into the head chunk, and ``_buffered`` counts the
bytes not yet sent (what the water marks apply to).  Small writes are coalesced into
a tail ``bytearray`` -- fewer iovecs for ``sendmsg`` -- but the head is never extended,
because a ``send`` may hold a memoryview of it.

Reads go into a receive buffer shared by every connection of the loop (one per
thread, or one per :class:`~asycamore.servicemodel.Service`): an idle connection owns
no read buffer at all.  The handler gets a ``bytes`` copy of what arrived, or a
memoryview of the shared buffer if it asked for one (``receive_memoryview``), valid
only during the call.

The class is cut in three along those lines, each a base of the next:
:class:`~.writing.StreamWriter` (:mod:`.writing`) is the sending side -- the write
buffer, flow control, ``write_eof`` and the interest in the dispatcher;
:class:`~.connecting.ConnectingStream` (:mod:`.connecting`) is the CONNECTING state of a
client connect; :class:`Connection`, here, is the rest: starting, reading, EOFs and the
close.  :class:`Connection` alone has an ``__init__``, which sets the fields of all
three (one call per connection, as for one class).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol, runtime_checkable

from ..dispatcher import IDispatchContext
from ..timers import Timers
from .base import (
    CLOSED,
    CLOSING,
    CONNECTING,
    EVENTS,
    OPEN,
    READ,
    Transport,
    default_recv_buffer,
)
from .connecting import Cancellable, ConnectingStream
from .options import DEFAULT_OPTIONS, TransportOptions
from .writing import OFF_CLOSING, OFF_EOF, OFF_FLOW, SHUT_WR_DONE, SHUT_WR_NONE

__all__ = ["Cancellable", "Connection", "StreamHandler", "StreamTransport"]

# _read_mask: the reasons (the OFF_ bits of _read_off, see .writing) that do stop
# reading.  For a handler whose reads do not feed its own writes (a proxy's side), a
# full write buffer only pauses the handler.
_ALL_REASONS: Final = -1
_NOT_FLOW: Final = ~OFF_FLOW

_MIN_READ: Final = 64 * 1024  # no read is capped below this (see _first_read_size)
_LINGER_READS: Final = 16  # reads that close() makes at once to discard queued input
# Where a closing connection's discarded input goes.  Shared by every thread: what lands
# in it is never read.
_DISCARD: Final = memoryview(bytearray(64 * 1024))


class StreamHandler(Protocol):
    """The callbacks a :class:`Connection` makes; any object with them will do.

    :class:`asycamore.servicemodel.Protocol` is a ready-made base class.
    ``data_received`` is looked up when the connection is made and again after
    ``connection_made`` returns, so a handler may replace it there (an instance attribute
    shadowing the method), by the connection's own ``write``, say.  Optional extras,
    looked up once when the connection is made:

    ``receive_memoryview`` (attribute, default false)
        When true, :meth:`data_received` gets a :class:`memoryview` of the shared receive
        buffer instead of :class:`bytes`: no copy, but the view is valid only during the
        call (copy what you keep; writing it back with :meth:`Connection.write` is safe).
    ``pause_writing()`` / ``resume_writing()``
        Called when the write buffer goes above the high-water mark and back to the
        low-water mark (the connection also stops reading meanwhile, by itself, unless
        ``reads_produce_writes`` is false).
    ``reads_produce_writes`` (attribute, default true)
        Whether what the handler reads makes it write on this same connection (an echo,
        a request-response server).  Then a write buffer above the high-water mark also
        stops reading, which bounds memory with no code, and each read is capped so that
        an echo crosses the mark by at most a byte.  A handler whose reads go elsewhere
        -- a proxy's side, which writes what it reads to the *other* connection -- sets
        it false: reading would otherwise stop on both ends of a busy peer at once
        (each waiting for the other to read: a deadlock), so the connection only calls
        ``pause_writing()``, and the handler pauses whatever feeds it (the other side's
        ``pause_reading()``).
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


@runtime_checkable
class StreamTransport(Protocol):
    """What a stream protocol's transport offers, plain or TLS.

    :class:`Connection` and :class:`~asycamore.tcpsocket.TLSConnection` both satisfy
    it, so a protocol is written once for both (asyncio's ``Transport`` names).  Type a
    protocol's transport as this, not as either class.
    """

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* (bytes-like; a :class:`str` is a :class:`TypeError`); never
        blocks: what cannot be sent at once is buffered."""
        ...

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write several chunks, as one :meth:`write` of their concatenation."""
        ...

    def write_eof(self) -> None:
        """Half-close once the buffer is flushed (where :meth:`can_write_eof`)."""
        ...

    def can_write_eof(self) -> bool:
        """Whether :meth:`write_eof` is supported (plain streams: yes; TLS: no)."""
        ...

    def close(self) -> None:
        """Close gracefully: flush, then close; ``connection_lost(None)`` follows."""
        ...

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, discarding buffered data; ``connection_lost(exc)`` follows."""
        ...

    def pause_reading(self) -> None:
        """Stop delivering data until :meth:`resume_reading`."""
        ...

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        ...

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent."""
        ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks at which the protocol is paused and resumed."""
        ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``socket`` (and the TLS names on TLS)."""
        ...

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        ...


def _read_mask(handler: object) -> int:
    """Which reasons stop reading, for *handler* (see ``reads_produce_writes``)."""
    return _ALL_REASONS if getattr(handler, "reads_produce_writes", True) else _NOT_FLOW


def _no_data(data: bytes) -> None:
    pass


class Connection(ConnectingStream):
    """A connected stream socket as a dispatch target: the transport of one handler.

    *sock* must be connected (or connecting, see :func:`connect_tcp`); it is made
    non-blocking.  ``None`` makes a connection without a socket yet, for a client
    connect that must resolve a name first (see :meth:`start_resolving`).  With
    ``start=True`` (the default) the connection registers itself in *dispatcher* for
    reading and calls ``handler.connection_made(self)``.

    Reading: each readable event makes one ``recv_into`` the shared receive buffer
    (*recv_buffer*, default :func:`default_recv_buffer`) and hands the bytes to
    ``handler.data_received``.  Writing: :meth:`write` sends at once when nothing is
    buffered and buffers only what the socket did not take; the buffer is a queue of
    chunks drained with ``send``/``sendmsg``, never re-copied.  When more than the
    high-water mark of *options* (a :class:`~asycamore.tcpsocket.TransportOptions`)
    is buffered the connection stops reading (and calls the handler's
    ``pause_writing()``, if any) until the buffer is down to the low-water mark, so
    memory stays bounded when the peer does not read.

    A reset or any other socket error closes the connection and reports the error to
    ``handler.connection_lost(exc)``, which is called exactly once.  *on_close*, if
    given, is called with the connection after that (owners use it for bookkeeping).
    With an ``idle_timeout`` in *options*, :attr:`last_activity` is updated on every
    successful read and write.  *timers* and the ``linger`` of *options* bound how long
    :meth:`close` waits for the peer's EOF (:data:`DEFAULT_LINGER` seconds).

    Memory: a read takes at most the high-water mark (but at least 64 KiB) when
    nothing is buffered, and what is left of that budget plus one byte otherwise.  So a
    handler that writes back no more than it reads (an echo, a proxy) never buffers
    more than ``max(high_water, 64 KiB) + 1`` bytes for a peer that does not read.
    """

    # The sending side's fields are StreamWriter's, the connect's ConnectingStream's.
    __slots__ = (
        "_deliver",
        "_linger",
        "_note_reads",
        "_read_size",
        "_recv_buffer",
        "_spoke",
        "_timers",
        "_wants_views",
    )

    _handler: StreamHandler | None

    def __init__(
        self,
        dispatcher: IDispatchContext,
        sock: socket.socket | None,
        handler: StreamHandler,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        recv_buffer: memoryview | None = None,
        on_close: Callable[[Connection], object] | None = None,
        timers: Timers | None = None,
        start: bool = True,
    ) -> None:
        # Not super(): it would look __init__ up through the two bases that have none,
        # on every connection.
        Transport.__init__(self, dispatcher, sock, handler, options, on_close)
        self._timers = timers
        self._linger = options.linger
        self._wants_views = bool(getattr(handler, "receive_memoryview", False))
        self._deliver: Callable[[Any], object] = handler.data_received
        self._recv_buffer = default_recv_buffer() if recv_buffer is None else recv_buffer
        self._read_size = self._first_read_size()
        self._chunks = None
        self._head_sent = 0
        self._spoke = False
        self._note_reads = True
        self._connect_to = None
        self._read_mask = _read_mask(handler)
        self._shut_wr = SHUT_WR_NONE
        # The connect timeout, a pending connect's work or the linger: cancelled on
        # release.
        self._timer = None
        if start:
            self.start()

    # -- starting -------------------------------------------------------------------------

    def attach(self) -> None:
        """Register for reading in the dispatcher, without telling the handler yet.

        For a connection made with ``start=False`` whose owner has bookkeeping to do
        between the two steps (a listener counts it first).  If the dispatcher refuses the
        descriptor (the ``select`` backend refuses those at or above ``FD_SETSIZE``),
        the socket is closed, the handler is never told, and the dispatcher's error
        propagates.
        """
        try:
            self._context.register(self, EVENTS[READ])  # _register(READ), inlined
        except BaseException:
            self._release()
            raise
        self._events = READ

    def start(self) -> None:
        """:meth:`attach` if not yet done, then call ``handler.connection_made(self)``."""
        if self._state == OPEN and not self._events:
            self.attach()
        self._made()

    def _made(self) -> None:
        handler = self._handler
        if handler is not None:
            handler.connection_made(self)
            # data_received is looked up again: connection_made may have replaced it
            # (EchoProtocol binds it to this connection's write, one call per message
            # fewer), or handed the connection to another handler (set_handler).  Only
            # while open: a close() there has stopped delivery (or is discarding).
            handler = self._handler
            if handler is not None and self._state == OPEN:
                self._deliver = handler.data_received

    def set_handler(self, handler: StreamHandler) -> None:
        """Hand the connection to another handler, from the next callback on.

        For a protocol switch on an open (or connecting) connection: a TLS layer taking
        over the byte stream (:func:`~asycamore.tcpsocket.start_tls`, and the way
        ``ssl=`` connections are built), or a protocol upgrade.  The new handler's
        ``receive_memoryview`` is looked up again; it is *not* told
        ``connection_made`` (it has the connection already).  Raises
        :class:`RuntimeError` once the connection is closed.
        """
        if self._state == CLOSED:
            raise RuntimeError("set_handler() on a closed connection")
        self._handler = handler
        self._wants_views = bool(getattr(handler, "receive_memoryview", False))
        self._deliver = handler.data_received
        self._read_mask = _read_mask(handler)
        if self._state == OPEN:
            self._update_interest()

    # -- the dispatch target ---------------------------------------------------------------------

    def handle_read_event(self) -> None:
        """Read once into the shared buffer and deliver the data (or the EOF)."""
        recv_buffer = self._recv_buffer
        try:
            if self._buffered:
                n = self._sock.recv_into(recv_buffer, self._capped_read_size())
            else:
                n = self._sock.recv_into(recv_buffer, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if n:
            counters = self._counters
            if counters is not None:  # a service's: one add (see TransportCounters)
                counters.bytes_received += n
            if self._note_reads:
                # The bookkeeping of a read: that the peer spoke (close() lingers only
                # for a peer that did), needed once, and the activity time, needed on
                # every read only with track_activity.  Without it, after the first read
                # this is the one test a read pays.
                self._spoke = True
                if self._track_activity:
                    self.last_activity = self._clock()
                else:
                    self._note_reads = False
            if self._wants_views:
                self._deliver(recv_buffer[:n])
            else:
                self._deliver(bytes(recv_buffer[:n]))
        else:
            self._read_eof()

    # -- public API -------------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        """Whether the connection is currently reading from its socket."""
        return self._state == OPEN and not self._read_off & self._read_mask

    @property
    def eof_received(self) -> bool:
        """Whether the peer has closed its sending side."""
        return bool(self._read_off & OFF_EOF)

    def _first_read_size(self) -> int:
        """How much one read takes when nothing is buffered (0: the whole buffer).

        At most the high-water mark (but no less than 64 KiB, so that a tiny mark does
        not mean tiny reads): a handler that writes back what it reads then buffers
        no more than the mark when the peer does not read, instead of a whole receive
        buffer (256 KiB) per connection.
        """
        size = max(self._high, _MIN_READ)
        return 0 if size >= len(self._recv_buffer) else size

    def _capped_read_size(self) -> int:
        """How much one read takes while data is buffered (0: the whole buffer).

        What is left of the budget of `_first_read_size`, plus one byte: an echoing
        handler then crosses the mark by at most one byte, and reading stops.  Reading
        is on only while ``_buffered <= _high``, so at least one byte is left.  A
        handler whose reads do not feed its writes (``reads_produce_writes = False``)
        reads as much as with nothing buffered.
        """
        if not self._read_mask & OFF_FLOW:
            return self._read_size
        size = max(self._high, _MIN_READ) + 1 - self._buffered
        return 0 if size >= len(self._recv_buffer) else size

    def _limits_changed(self) -> None:
        self._read_size = self._first_read_size()
        if self._state == OPEN:
            self._check_flow()
            self._update_interest()

    def close(self) -> None:
        """Close gracefully: flush the write buffer, send EOF, then close.

        Nothing more is delivered to the handler.  Once the buffer is flushed, the
        connection shuts down its sending side (the peer reads EOF) and discards what
        the peer still sends until the peer's own EOF, then closes the socket: closing
        with unread input would make the kernel send a reset, and a reset can destroy
        data the peer has not read yet.  A peer that has sent anything is waited
        for, at most *linger* seconds (that needs *timers*; without them the queued
        input is discarded and the socket closed at once); one that never sent a byte
        gets its EOF and the close at once.  :meth:`abort` cuts the wait short.

        ``handler.connection_lost(None)`` is called once the socket is closed.
        Idempotent.
        """
        state = self._state
        if state >= CLOSING:
            return
        if state == CONNECTING:
            self._lose(ConnectionAbortedError(errno.ECONNABORTED, "closed while connecting"))
            return
        if self not in self._context:
            # The dispatcher dropped us (a handler error under the default policy).
            self._finish(None)
            return
        self._state = CLOSING
        self._read_off |= OFF_CLOSING
        if self._chunks:
            self._update_interest()  # flush first: _drained() lingers
        else:
            self._start_linger()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, discarding buffered data; ``connection_lost(exc)`` follows."""
        if self._state == CLOSED:
            return
        if self._state == CONNECTING:
            self._lose(
                exc or ConnectionAbortedError(errno.ECONNABORTED, "aborted while connecting")
            )
            return
        self._finish(exc)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "closed")[self._state]
        return f"<Connection fd={self._fileno} {state} buffered={self._buffered}>"

    # -- internals --------------------------------------------------------------------------------

    def _start_linger(self) -> None:
        """`close` has flushed everything: send EOF, then wait for the peer's."""
        if self._read_off & OFF_EOF:
            self._finish(None)  # the peer is done too: nothing can arrive any more
            return
        if self._shut_wr != SHUT_WR_DONE:
            self._shutdown_write()
            if self._state == CLOSED:
                return
        # Discard what has arrived; a reset or the peer's EOF may already be there.  Not
        # into the shared receive buffer: close() may be called from a data_received that
        # still holds a view of it (this connection's or another's).
        recv_into = self._sock.recv_into
        sending = False
        for _ in range(_LINGER_READS):
            try:
                if not recv_into(_DISCARD):
                    self._finish(None)
                    return
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lose(exc)
                return
            sending = True
        timers = self._timers
        if not (sending or self._spoke) or timers is None or not self._linger > 0:
            # A peer that never sent anything gets a plain FIN now: without unread
            # input there is no reset.  One that has spoken may still be speaking (the
            # queue can be empty just because we kept up), so it is waited for.
            self._finish(None)
            return
        # Read and discard until the peer's EOF (which `_read_eof` turns into the close)
        # or the linger time: none of the reasons to stop reading applies any more.
        self._deliver = _no_data
        self._wants_views = True  # no bytes copies of what is discarded
        self._recv_buffer = _DISCARD
        self._read_size = 0  # the whole of it
        self._read_off = 0
        self._timer = timers.call_later(self._linger, self._linger_over)
        self._update_interest()

    def _linger_over(self) -> None:
        self._timer = None
        self._finish(None)

    def _read_eof(self) -> None:
        if self._state == CLOSING:
            self._finish(None)  # lingering (see close): the peer has closed too
            return
        self._read_off |= OFF_EOF
        handler = self._handler
        keep_open = handler.eof_received() if handler is not None else None
        if self._state != OPEN:
            return
        if not keep_open:
            if not self._chunks:
                # What close() would come to, without its checks: nothing to flush,
                # and the peer has sent its EOF, so there is nothing to linger for.
                self._finish(None)
                return
            self.close()
        elif self._shut_wr == SHUT_WR_DONE:
            self._finish(None)
        else:
            self._update_interest()

    def _release(self) -> StreamHandler | None:
        """Unregister and close the socket; return the handler to notify, if any."""
        counters = self._counters
        if counters is not None:
            if self._state == CONNECTING:
                counters.connections_failed += 1
            else:
                counters.connections_closed += 1
        self._state = CLOSED
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on this hot path
            self._context.unregister(self)
        except (KeyError, ValueError):
            pass  # never registered, or dropped by the dispatcher's error policy
        self._events = 0
        self._sock.close()
        self._fileno = -1
        self._chunks = None
        self._buffered = 0
        self._head_sent = 0
        handler = self._handler
        # Break the connection <-> handler cycle so that the garbage collector has no
        # work to do for a closed connection.
        self._handler = None
        self._deliver = _no_data
        return handler
