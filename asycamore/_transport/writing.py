"""The sending half of a stream connection: :class:`StreamWriter`.

A base class of :class:`~.stream.Connection`, which it is no use without: the module
note of :mod:`.stream` describes the state machine that the two share (``_state``,
the ``_read_off`` reasons, ``_shut_wr``) and the chunk buffer, and
:class:`~.stream.Connection` sets every field declared here in its ``__init__`` (this
class has none: one call fewer per connection).  What is here is the write buffer,
the flow control it drives, the half-close (``write_eof``) and the interest in the
dispatcher, which is derived from the reasons not to read and from the buffer.
"""

from __future__ import annotations

import collections
import itertools
import socket
from collections.abc import Iterable
from typing import Final

from ..arguments import join_chunks, not_text
from .base import CLOSED, CLOSING, CONNECTING, EVENTS, OPEN, READ, WRITE, Transport, log

__all__ = [
    "OFF_CLOSING",
    "OFF_CONNECTING",
    "OFF_EOF",
    "OFF_FLOW",
    "SHUT_WR_DONE",
    "SHUT_WR_NONE",
    "SHUT_WR_PENDING",
    "StreamWriter",
]

# _read_off: why reading is off (reading is on only when no bit is set; base.OFF_USER
# is pause_reading()).
OFF_FLOW: Final = 2  # the write buffer is above the high-water mark
OFF_EOF: Final = 4  # the peer sent EOF
OFF_CLOSING: Final = 8  # close() is flushing
OFF_CONNECTING: Final = 16  # not connected yet

# _shut_wr: write_eof() progress.
SHUT_WR_NONE: Final = 0
SHUT_WR_PENDING: Final = 1  # shutdown(SHUT_WR) once the buffer is flushed
SHUT_WR_DONE: Final = 2

_IOV_MAX: Final = 64  # chunks per sendmsg() call
_COALESCE_BELOW: Final = 4096  # small writes are copied into a shared tail chunk...
_COALESCE_LIMIT: Final = 64 * 1024  # ...until it is this big


def _as_bytes_view(data: object) -> memoryview:
    """*data* as a byte view; a :class:`str` is refused with a message that says to
    encode it (memoryview's own says only "a bytes-like object is required")."""
    try:
        return memoryview(data).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise not_text(data, "write()") from None


class StreamWriter(Transport):
    """The write side of :class:`~.stream.Connection` (see the module docstring).

    Its subclasses provide the hooks: the end of a client connect
    (:meth:`_finish_connect`, :meth:`_fail_connect`) and the close once the buffer is
    flushed (:meth:`_start_linger`).
    """

    __slots__ = ("_chunks", "_head_sent", "_read_mask", "_shut_wr")

    _chunks: collections.deque[bytes | bytearray | memoryview] | None
    _head_sent: int
    _read_mask: int
    _read_off: int
    _shut_wr: int

    # -- the dispatch target ---------------------------------------------------------------

    def handle_write_event(self) -> None:
        """Send what is buffered (or finish a connect)."""
        if self._state == CONNECTING:
            self._finish_connect()
            return
        chunks = self._chunks
        if not chunks:
            self._update_interest()
            return
        try:
            if len(chunks) == 1:
                off = self._head_sent
                n = self._sock.send(memoryview(chunks[0])[off:] if off else chunks[0])
            else:
                n = self._sock.sendmsg(self._iov(chunks))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        counters = self._counters
        if counters is not None:
            counters.bytes_sent += n
        if self._track_activity:
            self.last_activity = self._clock()
        self._advance(chunks, n)
        if not chunks:
            self._drained()
        elif self._read_off & OFF_FLOW and self._buffered <= self._low:
            self._flow_resume()

    # -- public API -------------------------------------------------------------------------------

    @property
    def eof_written(self) -> bool:
        """Whether :meth:`write_eof` was called."""
        return self._shut_wr != SHUT_WR_NONE

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data*, buffering whatever the socket does not take at once.

        Never blocks.  *data* is not referenced after the call unless it is
        :class:`bytes` (what is buffered of any other object is copied), so a
        memoryview of a reused buffer may be written.  Writes after :meth:`close` or
        :meth:`abort`, or once the connection is lost, are silently dropped; a write
        after :meth:`write_eof` raises :class:`RuntimeError`.
        """
        if self._chunks or self._state != OPEN or self._shut_wr:
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
            data = _as_bytes_view(data)
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
        counters = self._counters
        if counters is not None:  # a service's: one add (see TransportCounters)
            counters.bytes_sent += n
        # The flag first: without an idle timeout (the common case) it is False, and
        # testing it first spares an int truth test per write (~70 instructions).
        if self._track_activity and n:
            self.last_activity = self._clock()
        if n == size:
            return
        # The socket took part (or none): keep the rest, a view if *data* is immutable.
        if kind is bytes:
            rest: bytes | bytearray | memoryview = memoryview(data)[n:] if n else data
        else:
            rest = bytes(memoryview(data).cast("B")[n:])
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = collections.deque()
        chunks.append(rest)
        self._buffered = size - n
        self._check_flow()
        self._update_interest()

    def _write_later(self, data: bytes | bytearray | memoryview) -> None:
        """`write` when data is already buffered, or the connection is not open."""
        if type(data) is not bytes:
            data = _as_bytes_view(data)  # refused at the call, whatever the state
        state = self._state
        if state != OPEN or self._shut_wr:
            if state <= OPEN and self._shut_wr:
                raise RuntimeError("write() after write_eof()")
            if state != CONNECTING:
                return
        size = len(data)
        if not size:
            return
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = collections.deque()
        self._append(chunks, data, size)
        self._buffered += size
        if self._buffered > self._high and not self._read_off & OFF_FLOW and state == OPEN:
            self._check_flow()
            self._update_interest()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write several chunks, as one :meth:`write` of their concatenation."""
        self.write(join_chunks(chunks))

    def write_eof(self) -> None:
        """Half-close: shut down the sending side once the buffer is flushed.

        The connection keeps reading.  It closes itself once both sides have sent EOF.
        """
        if self._state > OPEN or self._shut_wr:
            return
        if self._chunks or self._state == CONNECTING:
            self._shut_wr = SHUT_WR_PENDING
            return
        self._shutdown_write()

    def can_write_eof(self) -> bool:
        """Always true: stream sockets support half-close."""
        return True

    # -- internals --------------------------------------------------------------------------------

    def _update_interest(self) -> None:
        state = self._state
        if state not in (OPEN, CLOSING):
            return
        events = (0 if self._read_off & self._read_mask else READ) | (WRITE if self._chunks else 0)
        if events != self._events:
            self._events = events
            self._context.modify(self, EVENTS[events])

    def _check_flow(self) -> None:
        """Apply the water marks to the current buffer size (may call the handler)."""
        if self._read_off & OFF_FLOW:
            if self._buffered <= self._low:
                self._flow_resume()
        elif self._buffered > self._high:
            self._read_off |= OFF_FLOW
            self._pause_handler()

    def _flow_resume(self) -> None:
        self._read_off &= ~OFF_FLOW
        self._update_interest()
        if self._state == OPEN:
            self._resume_handler()

    @staticmethod
    def _append(
        chunks: collections.deque[bytes | bytearray | memoryview],
        data: bytes | memoryview,
        size: int,
    ) -> None:
        if size < _COALESCE_BELOW:
            # Small writes share a tail chunk: fewer iovecs and less per-chunk memory.
            # The head (len 1) is never extended: a send may hold a view on it.
            if len(chunks) > 1:
                tail = chunks[-1]
                if type(tail) is bytearray and len(tail) + size <= _COALESCE_LIMIT:
                    tail += data
                    return
            chunks.append(bytearray(data))
        elif type(data) is bytes:
            chunks.append(data)
        else:
            chunks.append(bytes(data))

    def _iov(
        self, chunks: collections.deque[bytes | bytearray | memoryview]
    ) -> list[bytes | bytearray | memoryview]:
        iov = list(itertools.islice(chunks, _IOV_MAX))
        if self._head_sent:
            iov[0] = memoryview(iov[0])[self._head_sent :]
        return iov

    def _advance(self, chunks: collections.deque[bytes | bytearray | memoryview], n: int) -> None:
        self._buffered -= n
        n += self._head_sent
        while chunks:
            head_len = len(chunks[0])
            if n < head_len:
                break
            chunks.popleft()
            n -= head_len
        self._head_sent = n

    def _drained(self) -> None:
        """The write buffer just became empty."""
        if self._shut_wr == SHUT_WR_PENDING:
            self._shutdown_write()
            if self._state == CLOSED:
                return
        if self._state == CLOSING:
            self._start_linger()
            return
        if self._read_off & OFF_FLOW:
            self._flow_resume()
        self._update_interest()

    def _shutdown_write(self) -> None:
        self._shut_wr = SHUT_WR_DONE
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lose(exc)
            return
        if self._read_off & OFF_EOF:
            self._finish(None)

    def _lose(self, exc: BaseException) -> None:
        """The socket failed (reset, broken pipe, connect error...)."""
        if self._state == CONNECTING:
            self._fail_connect(exc)
            return
        log.debug("%r lost: %s", self, exc)
        self._finish(exc)

    # -- hooks (subclasses) ----------------------------------------------------------------

    def _finish_connect(self) -> None:
        """A client connect's socket is writable: the connect has ended."""
        raise NotImplementedError

    def _fail_connect(self, exc: BaseException) -> None:
        """A client connect failed with *exc*: tell the handler, close."""
        raise NotImplementedError

    def _start_linger(self) -> None:
        """A closing connection's buffer is flushed: send EOF, then wait for the peer's."""
        raise NotImplementedError
