"""TLS over a stream connection: :class:`TLSConnection`, and the ``ssl=`` plumbing.

How TLS works here, and why
===========================

TLS is a layer, not a second transport.  A :class:`TLSConnection` runs an
:class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO` buffers (as asyncio's
``sslproto`` and Twisted's ``TLSMemoryBIOProtocol`` do) and sits *between* a plain
:class:`~.stream.Connection` and the user's protocol:

- towards the plain connection it is the handler (a small forwarding object,
  :attr:`TLSConnection.plain_handler`, installed with
  :meth:`Connection.set_handler() <.stream.Connection.set_handler>`): the encrypted
  bytes the connection reads go into the incoming BIO, and whatever OpenSSL puts into
  the outgoing BIO goes out through :meth:`Connection.write`;
- towards the user's protocol it is the transport, with :class:`~.stream.Connection`'s
  API (``write``, ``close``, ``abort``, ``pause_reading``, the water marks...).

So the socket, the write buffer, the water marks, ``pause_writing``/``resume_writing``
and the error reporting stay the plain connection's, written once: when a peer does not
read, the *encrypted* output backs up in the plain connection's buffer, which stops
reading and pauses the protocol exactly as for plain TCP.

``_state`` only moves forward: HANDSHAKE (the TCP connect or the handshake is under
way; the protocol has not been told ``connection_made``; what it writes meanwhile is
kept in ``_pending`` and encrypted once the handshake completes), OPEN, SHUTDOWN
(``close()`` was called, or the peer finished: our close_notify is out or queued and we
wait, at most the shutdown timeout, for the peer's close_notify or its EOF) and CLOSED
(the protocol has been told how it ended, exactly once).

Reading decrypts in a loop until :class:`ssl.SSLWantReadError` -- one TCP read may
carry several records, or the tail of one -- into a buffer shared by the thread's TLS
connections, and hands the protocol one ``data_received`` per buffer-full, not one per
record: fewer calls, and an echo then makes one ``SSLObject.write`` and one ``send``
per TCP read.  What the protocol writes from inside ``data_received`` is encrypted at
once but flushed to the socket after the call returns, for the same reason.  Data that
shares a TCP read with the peer's close_notify is delivered before the EOF.

EOFs.  The peer's close_notify is an EOF (``eof_received``); a TCP EOF without one (a
*ragged* EOF, which most HTTPS peers send) is an ordinary EOF too, silently, unless the
caller asked for ``strict_eof``, which makes it an error.  TLS has no half-close that
every peer understands, so :meth:`TLSConnection.write_eof` is not supported.
"""

from __future__ import annotations

import errno
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from ..arguments import join_chunks, not_text
from ..timers import TimerHandle, Timers
from .base import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    TransportCounters,
    log,
    log_connect_failure,
)
from .options import DEFAULT_OPTIONS, StreamKeywords, TransportOptions
from .stream import Connection, StreamHandler

if TYPE_CHECKING:
    from typing_extensions import Unpack

# For the modules whose ``ssl=`` parameter hides the module's name.
SSLContext = ssl.SSLContext

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "SSLContext",
    "TLSConnection",
    "check_tls_timers",
    "client_context",
    "server_context",
    "start_tls",
    "tls_handler_factory",
]


_DECRYPT_BUFFER_SIZE: Final = 256 * 1024

# _state: only moves forward.
_HANDSHAKE: Final = 0
_OPEN: Final = 1
_SHUTDOWN: Final = 2
_CLOSED: Final = 3

_local = threading.local()


def _decrypt_buffer() -> memoryview:
    """This thread's buffer that TLS connections decrypt into (see the module note)."""
    view: memoryview | None = getattr(_local, "decrypt_buffer", None)
    if view is None:
        view = memoryview(bytearray(_DECRYPT_BUFFER_SIZE))
        _local.decrypt_buffer = view
    return view


def client_context(ssl_option: ssl.SSLContext | bool) -> ssl.SSLContext:
    """The client :class:`ssl.SSLContext` for an ``ssl=`` argument.

    ``True`` gives :func:`ssl.create_default_context` (certificates verified against
    the system's CAs, host names checked) with renegotiation refused; a context is used
    as it is.
    """
    if ssl_option is True:
        sslcontext = ssl.create_default_context()
        sslcontext.options |= ssl.OP_NO_RENEGOTIATION
        return sslcontext
    if isinstance(ssl_option, ssl.SSLContext):
        if ssl_option.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ValueError(
                "ssl is a server-side context (PROTOCOL_TLS_SERVER); a client needs "
                "ssl.create_default_context() or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)"
            )
        return ssl_option
    raise TypeError(f"ssl must be an ssl.SSLContext or True, not {ssl_option!r}")


def check_tls_timers(timers: Timers | None, options: TransportOptions) -> None:
    """ValueError if *options* have TLS timeouts and there are no *timers* to run
    them."""
    if timers is None and options.tls_timeouts:
        # Without them a peer that never finishes its handshake would hold its
        # connection forever: refuse rather than leak.
        raise ValueError(
            "TLS timeouts need timers: pass timers=, or handshake_timeout=None and "
            "shutdown_timeout=None"
        )


def server_context(sslcontext: object) -> ssl.SSLContext:
    """*sslcontext*, checked to be one a TLS server can use."""
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(
            f"ssl must be an ssl.SSLContext with the server's certificate, not {sslcontext!r}"
        )
    if sslcontext.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError(
            "ssl is a client-side context (PROTOCOL_TLS_CLIENT, as "
            "ssl.create_default_context() makes); a server needs "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or "
            "ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), with load_cert_chain()"
        )
    return sslcontext


class _PlainSide:
    """The plain connection's handler: the TLS connection's callbacks, as attributes.

    Bound methods are stored, not looked up through a forwarding method, so the plain
    connection's ``data_received`` call lands in :class:`TLSConnection` directly.
    """

    __slots__ = (
        "connection_failed",
        "connection_lost",
        "connection_made",
        "data_received",
        "eof_received",
        "pause_writing",
        "reads_produce_writes",
        "resume_writing",
        "tls",
    )

    # The encrypted bytes are copied into the incoming BIO at once: no need for a
    # bytes copy of them first.
    receive_memoryview: Final = True

    def __init__(self, tls: _TLSInbound) -> None:
        self.tls = tls
        """The :class:`TLSConnection` this handler belongs to."""
        self.connection_made = tls._plain_connection_made
        self.data_received = tls._plain_data_received
        self.eof_received = tls._plain_eof_received
        self.connection_lost = tls._plain_connection_lost
        self.connection_failed = tls._plain_connection_failed
        self.pause_writing = tls._plain_pause_writing
        self.resume_writing = tls._plain_resume_writing
        # The encrypted reads feed the plain side's writes as the protocol's reads feed
        # its own (a handshake, a close_notify aside): the same flow control applies.
        self.reads_produce_writes = bool(getattr(tls._protocol, "reads_produce_writes", True))


# A TLS connection is one object, its code in three classes, each using only what the
# classes above it define:
#
# - _TLSSession: the state, and everything that goes *out*: encrypting, flushing, the
#   close_notify exchange, the end of the connection as the protocol is told of it;
# - _TLSInbound: construction, and everything that comes *in*: the plain connection's
#   callbacks, the handshake, decrypting and delivering, the EOFs;
# - TLSConnection: the transport the protocol sees, with every public name (the API
#   reference lists a class's own members, so none lives in a base).
#
# Bases rather than objects that call each other, so that the hot path (an echo:
# _plain_data_received, _read, the protocol, write, _flush) stays on one object's slots
# with no call forwarded from one part to another.


class _TLSSession:
    """The state of a :class:`TLSConnection`, and its way out to the plain connection.

    Only ever a base of :class:`TLSConnection`: ``self`` is the transport the protocol
    and the owner's ``on_close`` are handed.
    """

    __slots__ = (
        "_app_paused",
        "_conn",
        "_counters",
        "_deliver",
        "_delivering",
        "_eof",
        "_handshake_timeout",
        "_incoming",
        "_on_close",
        "_outgoing",
        "_paused",
        "_pending",
        "_pending_size",
        "_plain_paused",
        "_protocol",
        "_resume_handle",
        "_server_hostname",
        "_server_side",
        "_shutdown_timeout",
        "_side",
        "_sslcontext",
        "_sslobj",
        "_state",
        "_strict_eof",
        "_timer",
        "_timers",
        "_told",
        "_wants_views",
    )

    # The session: the plain connection it runs on, the SSLObject over its two BIOs.
    _conn: Connection
    _sslcontext: ssl.SSLContext
    _sslobj: ssl.SSLObject
    _incoming: ssl.MemoryBIO
    _outgoing: ssl.MemoryBIO
    _server_side: bool
    _server_hostname: str | None
    # The protocol, and how data reaches it (_deliver: its data_received, or _no_data).
    _protocol: StreamHandler | None
    _deliver: Callable[[Any], object]
    _wants_views: bool
    _told: bool  # the protocol has been told connection_made (STARTTLS: before us)
    # The plain connection's handler; on_close is the owner's bookkeeping.
    _side: _PlainSide | None
    _on_close: Callable[[TLSConnection], object] | None
    # The timeouts, and the one timer running (handshake or shutdown).
    _timers: Timers | None
    _handshake_timeout: float | None
    _shutdown_timeout: float | None
    _strict_eof: bool
    _counters: TransportCounters | None  # handshakes (the plain connection counts bytes)
    _timer: TimerHandle | None
    _resume_handle: TimerHandle | None  # resume_reading's deferred read
    # The state machine (module note), and what the protocol asked for.
    _state: int
    _pending: list[bytes]  # plaintext written before the session could take it
    _pending_size: int
    _paused: bool  # the protocol paused reading
    _plain_paused: bool  # the plain connection paused our writing
    _app_paused: bool  # ... and the protocol has been told pause_writing
    _delivering: bool  # inside the protocol's data_received: flush after it returns
    _eof: bool  # the peer has finished sending

    # -- encrypting ------------------------------------------------------------------------

    def _flush(self) -> None:
        outgoing = self._outgoing
        if outgoing.pending:
            self._conn.write(outgoing.read())

    def _keep(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if chunk:
            self._pending.append(chunk)
            self._pending_size += len(chunk)

    def _write_later(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, str):
            raise not_text(data, "write()")  # refused at the call, whatever the state
        state = self._state
        if state == _HANDSHAKE:
            self._keep(data)
        elif state == _OPEN:
            # Behind earlier writes that a renegotiation held up: keep the order.
            self._keep(data)
            self._write_pending()

    def _write_pending(self) -> None:
        pending = self._pending
        self._pending = []
        self._pending_size = 0
        write = self._sslobj.write
        for i, data in enumerate(pending):
            try:
                write(data)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                # A renegotiation is under way: retry on the next incoming data.
                rest = pending[i:]
                self._pending = rest
                self._pending_size = sum(map(len, rest))
                break
            except ssl.SSLError as exc:
                self._fatal(exc)
                return
        self._flush()

    def _fatal(self, exc: BaseException) -> None:
        """A TLS error on an open connection: send the alert (if any), abort."""
        self._flush()
        self._conn.abort(exc)

    # -- the close_notify exchange ---------------------------------------------------------

    def _close(self) -> None:
        """What :meth:`TLSConnection.close` does; also how the peer's close_notify ends
        the session when the protocol does not keep it open (``_tls_eof``)."""
        state = self._state
        if state == _HANDSHAKE:
            if self._conn.connecting:
                self._conn.close()  # the plain connect fails: _plain_connection_failed
            else:
                self._fail(
                    ConnectionAbortedError(errno.ECONNABORTED, "closed during the handshake"),
                    abort=True,
                )
            return
        if state != _OPEN:
            return
        self._state = _SHUTDOWN
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        # The peer's close_notify must be read even if the protocol paused reading.
        self._conn.resume_reading()
        self._arm(self._shutdown_timeout, self._shutdown_timed_out)
        self._shutdown_step()

    def _shutdown_step(self) -> None:
        sslobj = self._sslobj
        # Application data the peer sent after our close() is read and dropped (into
        # a fresh buffer: the protocol may still hold a view of the shared one), else
        # unwrap() would fail on it.
        # Bounded: each read consumes at least one record, of six bytes or more.
        for _ in range(self._incoming.pending // 6 + 2):
            try:
                if not sslobj.read(_DECRYPT_BUFFER_SIZE):
                    break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError:
                self._conn.abort()
                return
        conn = self._conn
        try:
            sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Our close_notify is queued; half-close the TCP connection behind it so
            # that peers which wait for an EOF rather than a close_notify finish too.
            self._flush()
            if not conn.eof_written and not conn.is_closing():
                conn.write_eof()
            return
        except ssl.SSLError:
            # A peer that garbles its goodbye: we were closing anyway.
            self._flush()
            conn.abort()
            return
        self._flush()
        conn.close()

    def _shutdown_timed_out(self) -> None:
        self._timer = None
        conn = self._conn
        if conn.closed:
            return
        unsent = conn.write_buffer_size
        log.debug("%r: TLS shutdown timed out (%d bytes unsent)", self, unsent)
        conn.abort(
            TimeoutError(errno.ETIMEDOUT, f"TLS shutdown timed out with {unsent} bytes unsent")
            if unsent
            else None
        )

    # -- the ends: telling the protocol, once -----------------------------------------------

    def _fail(self, exc: BaseException, abort: bool = False) -> None:
        """The handshake failed: close the plain connection, report *exc*."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._count_failed_handshake()
        self._cancel_timer()
        self._pending.clear()
        self._pending_size = 0
        conn = self._conn
        if abort:
            conn.abort()
        else:
            # Graceful, so the alert queued above reaches the peer; bounded, in case
            # the peer does not read it.
            conn.close()
            if not conn.closed:
                self._arm(self._shutdown_timeout, self._shutdown_timed_out)
        self._report_failure(exc)

    def _count_failed_handshake(self) -> None:
        if self._counters is not None:
            self._counters.tls_handshakes_failed += 1

    def _report_failure(self, exc: BaseException) -> None:
        protocol = self._protocol
        self._protocol = None
        self._deliver = _no_data
        if protocol is None:
            return
        if self._told:
            protocol.connection_lost(exc)
        elif self._server_side:
            hook = getattr(protocol, "handshake_failed", None)
            if hook is not None:
                hook(exc)
            else:
                log.debug("TLS handshake failed on %r: %s", self._conn, exc)
        else:
            failed = getattr(protocol, "connection_failed", None)
            if failed is not None:
                failed(exc)
            else:
                log_connect_failure(exc)

    def _lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        # Break the cycle with the plain side's bound methods, so that a closed TLS
        # connection is freed by reference counting, not left to the garbage collector.
        self._side = None
        state = self._state
        self._state = _CLOSED
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if state == _CLOSED:
            return
        if state == _HANDSHAKE:
            self._count_failed_handshake()
            self._report_failure(
                exc or ConnectionAbortedError(errno.ECONNABORTED, "closed during the handshake")
            )
            return
        protocol = self._protocol
        self._protocol = None
        self._deliver = _no_data
        if protocol is not None:
            protocol.connection_lost(exc)

    def _closed_hook(self) -> None:
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            on_close(self)  # type: ignore[arg-type]  # a TLSConnection: see the class note

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, delay: float | None, callback: Callable[[], object]) -> None:
        self._cancel_timer()
        timers = self._timers
        if delay is not None and timers is not None:
            self._timer = timers.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()


class _TLSInbound(_TLSSession):
    """What comes in: construction (see :class:`TLSConnection` for the arguments), the
    plain connection's callbacks (:class:`_PlainSide` holds them as bound methods), the
    handshake, decrypting and delivering to the protocol, and the EOFs."""

    __slots__ = ()

    def __init__(
        self,
        connection: Connection,
        protocol: StreamHandler,
        sslcontext: ssl.SSLContext,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        timers: Timers | None = None,
        on_close: Callable[[TLSConnection], object] | None = None,
        upgrade: bool = False,
        received: bytes = b"",
    ) -> None:
        check_tls_timers(timers, options)
        if connection.closed:
            raise RuntimeError("TLS over a closed connection")
        if not server_side and not server_hostname and sslcontext.check_hostname:
            raise ValueError("server_hostname is needed when the context checks host names")
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # Raises here (not later, in a callback) for a context that cannot do it.
        self._sslobj = sslcontext.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname or None,
        )
        self._sslcontext = sslcontext
        self._conn = connection
        self._protocol = protocol
        self._wants_views = bool(getattr(protocol, "receive_memoryview", False))
        self._deliver = protocol.data_received
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._timers = timers
        self._handshake_timeout = options.handshake_timeout
        self._shutdown_timeout = options.shutdown_timeout
        self._strict_eof = options.strict_eof
        self._counters = options.counters
        self._on_close = on_close
        self._told = upgrade
        self._state = _HANDSHAKE
        self._pending = []
        self._pending_size = 0
        self._paused = False
        self._plain_paused = False
        self._app_paused = False
        self._delivering = False
        self._eof = False
        self._timer = None
        self._resume_handle = None
        if received:
            self._incoming.write(received)
        self._side = _PlainSide(self)
        connection.set_handler(self._side)
        if not connection.connecting:
            self._start()

    # -- the plain connection's callbacks (the plain_handler forwards them) -------------------

    def _plain_connection_made(self, connection: Connection) -> None:
        """Plain side: the TCP connect completed; start the handshake."""
        if self._state == _HANDSHAKE:
            self._start()

    def _plain_connection_failed(self, exc: BaseException) -> None:
        """Plain side: the TCP connect failed or timed out."""
        self._cancel_timer()
        self._side = None  # the plain side's bound methods make a cycle with us
        try:
            if self._state != _CLOSED:
                self._state = _CLOSED
                self._report_failure(exc)
        finally:
            self._closed_hook()

    def _plain_data_received(self, data: bytes | memoryview) -> None:
        """Plain side: encrypted bytes arrived."""
        self._incoming.write(data)
        state = self._state
        if state == _OPEN:
            if not self._paused and not self._eof:
                self._read()
            if self._pending and self._state == _OPEN:
                self._write_pending()  # held up by a renegotiation
        elif state == _HANDSHAKE:
            self._handshake()
        elif state == _SHUTDOWN:
            self._shutdown_step()

    def _plain_eof_received(self) -> bool | None:  # noqa: PLR0911
        """Plain side: the peer closed its sending side of the TCP connection."""
        state = self._state
        if state == _HANDSHAKE:
            self._fail(ssl.SSLEOFError(errno.ECONNRESET, "EOF during the TLS handshake"))
            return None
        if state != _OPEN:
            return None  # SHUTDOWN: that is the end we were waiting for
        if self._eof:
            return True  # after the peer's close_notify, which the protocol kept open
        if self._incoming.pending and not self._paused and not self._delivering:
            self._read()  # never leave data behind the EOF
            if self._state != _OPEN:
                return None
            if self._eof:
                return True  # a close_notify was in there, and the protocol kept open
        if self._strict_eof:
            self._fatal(ssl.SSLEOFError(errno.ECONNRESET, "EOF without a TLS close_notify"))
            return None
        # A ragged EOF: the peer is gone (or half-closed) without a close_notify.
        self._eof = True
        protocol = self._protocol
        keep_open = protocol.eof_received() if protocol is not None else None
        if self._state != _OPEN:
            return None
        if keep_open:
            return True
        # The plain connection closes itself once its buffer is flushed; bound that.
        self._state = _SHUTDOWN
        self._arm(self._shutdown_timeout, self._shutdown_timed_out)
        return None

    def _plain_connection_lost(self, exc: BaseException | None) -> None:
        """Plain side: the socket is closed."""
        try:
            self._lost(exc)
        finally:
            self._closed_hook()

    def _plain_pause_writing(self) -> None:
        """Plain side: the encrypted output went above the high-water mark."""
        self._plain_paused = True
        if self._told and self._state == _OPEN and not self._app_paused:
            self._app_paused = True
            pause = getattr(self._protocol, "pause_writing", None)
            if pause is not None:
                pause()

    def _plain_resume_writing(self) -> None:
        """Plain side: the encrypted output drained to the low-water mark."""
        self._plain_paused = False
        if self._app_paused:
            self._app_paused = False
            resume = getattr(self._protocol, "resume_writing", None)
            if resume is not None and self._state == _OPEN:
                resume()

    # -- the handshake ---------------------------------------------------------------------

    def _start(self) -> None:
        self._arm(self._handshake_timeout, self._handshake_timed_out)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._flush()  # our next flight (a ClientHello, a ServerHello...), if any
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert that tells the peer why
            self._fail(exc)
            return
        self._flush()
        self._cancel_timer()
        self._state = _OPEN
        if self._counters is not None:
            self._counters.tls_handshakes += 1
        # Written before the handshake completed: encrypt it now, ahead of whatever
        # the protocol writes from connection_made.
        if self._pending:
            self._write_pending()
            if self._state != _OPEN:
                return
        protocol = self._protocol
        if protocol is None:
            return
        self._told = True
        if self._plain_paused:
            self._app_paused = True
            pause = getattr(protocol, "pause_writing", None)
            if pause is not None:
                pause()
        if self._paused:
            self._conn.pause_reading()  # asked for before the handshake completed
        protocol.connection_made(self)  # type: ignore[arg-type]
        if self._state == _OPEN:
            # As Connection does: connection_made may have replaced data_received
            # (EchoProtocol binds it to this transport's write), and what was looked up
            # before -- for a start_tls, the plain connection's write -- must not stay.
            self._deliver = protocol.data_received
        pending = self._incoming.pending or self._sslobj.pending()
        if pending and self._state == _OPEN and not self._paused:
            self._read()  # application data that came with the last handshake flight

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            self._fail(TimeoutError(errno.ETIMEDOUT, "TLS handshake timed out"), abort=True)

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> None:
        """Decrypt what the incoming BIO holds and deliver it (see the module note)."""
        buf = _decrypt_buffer()
        size = len(buf)
        # With a buffer, SSLObject.read fills it and returns a count (typeshed says bytes).
        read: Callable[[int, memoryview], int] = self._sslobj.read  # type: ignore[assignment]
        off = 0
        while True:
            try:
                n = read(size - off, buf[off:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                if off:
                    self._give(buf, off)
                    if self._state != _OPEN:
                        return
                self._fatal(exc)
                return
            if not n:
                # The peer's close_notify (CPython returns 0 for it, or raises
                # SSLZeroReturnError), perhaps after data in the same TCP read: with
                # memory BIOs a read has no other way of returning nothing.
                if off:
                    self._give(buf, off)
                    if self._state != _OPEN:
                        return
                self._flush()
                self._tls_eof()
                return
            off += n
            if off == size:
                self._give(buf, off)
                off = 0
                if self._state != _OPEN or self._paused:
                    return
        if off:
            self._give(buf, off)
        else:
            # Reading may have produced output of its own (a TLS 1.3 key update
            # reply, a renegotiation refusal).
            self._flush()

    def _give(self, buf: memoryview, n: int) -> None:
        self._delivering = True
        try:
            if self._wants_views:
                self._deliver(buf[:n])
            else:
                self._deliver(bytes(buf[:n]))
        finally:
            self._delivering = False
        self._flush()

    def _tls_eof(self) -> None:
        self._eof = True
        protocol = self._protocol
        keep_open = protocol.eof_received() if protocol is not None else None
        if self._state == _OPEN and not keep_open:
            self._close()

    def _resume_read(self) -> None:
        self._resume_handle = None
        if self._state == _OPEN and not self._paused and not self._eof:
            self._read()


class TLSConnection(_TLSInbound):
    """A TLS session over a plain :class:`~asycamore.tcpsocket.Connection`: the
    transport of one protocol, with :class:`~asycamore.tcpsocket.Connection`'s API.

    Usually made for you: by :func:`~asycamore.tcpsocket.listen_tcp` and
    :func:`~asycamore.tcpsocket.connect_tcp` with ``ssl=``, by
    :func:`~asycamore.tcpsocket.start_tls`, or the :class:`~asycamore.servicemodel.Service`
    methods of the same names.  Constructing one takes *connection* over (its handler
    becomes :attr:`plain_handler`) and starts the handshake once the connection is
    connected.

    *protocol* hears ``connection_made(tls_connection)`` when the handshake completes
    (not at the TCP connect), then the usual callbacks with the decrypted data.  If the
    handshake fails or times out, a client's protocol hears ``connection_failed(exc)``
    (logged as a warning without one), a server's ``handshake_failed(exc)`` if it has
    one (logged at debug level without one: hostile and confused peers are routine for a
    server); with *upgrade* (STARTTLS, where the protocol already has the connection) it
    hears ``connection_lost(exc)``.  A certificate that does not verify is an
    :class:`ssl.SSLCertVerificationError`, a handshake timeout a :class:`TimeoutError`.

    *timers* run the ``handshake_timeout`` of *options* (a
    :class:`~asycamore.tcpsocket.TransportOptions`; from the TCP connect to the end of
    the handshake, default :data:`DEFAULT_HANDSHAKE_TIMEOUT`) and its
    ``shutdown_timeout`` (default :data:`DEFAULT_SHUTDOWN_TIMEOUT`); both may be
    ``None`` (no limit), and timers are required unless both are.  With ``strict_eof``,
    a peer that closes the TCP connection without a close_notify is an error
    (:class:`ssl.SSLEOFError` to ``connection_lost``) instead of an ordinary EOF.
    *on_close*, if given, is called with the TLS connection once the plain connection
    under it has closed (the owner's bookkeeping).  *received* is encrypted data the
    connection already read (STARTTLS: bytes that followed the command).

    Everything here is single-threaded, like the connection under it.
    """

    __slots__ = ()

    @property
    def plain_handler(self) -> StreamHandler | None:
        """The handler installed on the plain :attr:`connection` (``None`` once it is
        closed); its ``tls`` attribute leads back here (handy from
        :attr:`Service.connections <asycamore.servicemodel.Service.connections>`, which
        lists plain connections)."""
        return self._side

    @property
    def connection(self) -> Connection:
        """The plain connection this TLS session runs on."""
        return self._conn

    @property
    def handler(self) -> StreamHandler | None:
        """The protocol (``None`` once it has been told the connection ended)."""
        return self._protocol

    @property
    def closed(self) -> bool:
        """Whether the protocol has been told that the connection ended."""
        return self._state == _CLOSED

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called or the connection ended."""
        return self._state >= _SHUTDOWN or self._conn.is_closing()

    @property
    def connecting(self) -> bool:
        """Whether the TCP connect or the TLS handshake is still under way."""
        return self._state == _HANDSHAKE

    @property
    def handshake_complete(self) -> bool:
        """Whether the handshake completed (it stays true once the connection ends)."""
        return self._sslobj.version() is not None

    @property
    def reading(self) -> bool:
        """Whether the connection is reading (not paused, not past EOF, open)."""
        return self._state == _OPEN and not self._paused and not self._eof

    @property
    def eof_received(self) -> bool:
        """Whether the peer has finished sending (close_notify, or a ragged EOF)."""
        return self._eof

    @property
    def eof_written(self) -> bool:
        """Always false: TLS connections do not half-close (see :meth:`write_eof`)."""
        return False

    # -- the session -----------------------------------------------------------------------

    @property
    def server_side(self) -> bool:
        """Whether this is the server end of the handshake."""
        return self._server_side

    @property
    def server_hostname(self) -> str | None:
        """The name a client sent (SNI) and checked the certificate against."""
        return self._server_hostname

    @property
    def sslcontext(self) -> ssl.SSLContext:
        """The :class:`ssl.SSLContext` of the session."""
        return self._sslcontext

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The :class:`ssl.SSLObject`, for anything not offered here (do not read or
        write through it)."""
        return self._sslobj

    @property
    def tls_version(self) -> str | None:
        """The negotiated protocol version (``"TLSv1.3"``...), ``None`` before the
        handshake."""
        return self._sslobj.version()

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """``(name, protocol version, secret bits)`` of the negotiated cipher, ``None``
        before the handshake."""
        return self._sslobj.cipher()

    @property
    def alpn_protocol(self) -> str | None:
        """The protocol ALPN selected (set the offers with
        :meth:`ssl.SSLContext.set_alpn_protocols`), or ``None``."""
        return self._sslobj.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate, as :meth:`ssl.SSLSocket.getpeercert` gives it.

        ``None`` before the handshake completes, or when the peer sent none (a client
        of a server that does not ask for one).  The decoded form (a dict) is empty
        unless the certificate was verified; ``binary_form=True`` gives the DER bytes
        either way.
        """
        if not self.handshake_complete:
            return None
        return self._sslobj.getpeercert(binary_form)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's transport information by name, for code written against it:
        ``peername``, ``sockname``, ``socket``, ``sslcontext``, ``ssl_object``,
        ``peercert``, ``cipher``, ``compression``."""
        getters: dict[str, Callable[[], Any]] = {
            "peername": self.getpeername,
            "sockname": self.getsockname,
            "socket": lambda: self._conn.sock,
            "sslcontext": lambda: self._sslcontext,
            "ssl_object": lambda: self._sslobj,
            "peercert": self.getpeercert,
            "cipher": self._sslobj.cipher,
            "compression": self._sslobj.compression,
        }
        getter = getters.get(name)
        if getter is None:
            return default
        value = getter()
        return default if value is None else value

    def getpeername(self) -> Any:
        """The peer's address, or ``None`` if it is not available (any more)."""
        return self._conn.getpeername()

    def getsockname(self) -> Any:
        """The local address, or ``None`` if it is not available (any more)."""
        return self._conn.getsockname()

    @property
    def sock(self) -> Any:
        """The underlying socket (do not read from or write to it directly)."""
        return self._conn.sock

    @property
    def last_activity(self) -> float:
        """The plain connection's :attr:`~asycamore.tcpsocket.Connection.last_activity`."""
        return self._conn.last_activity

    def set_clock(self, clock: Callable[[], float]) -> None:
        """The plain connection's :meth:`~asycamore.tcpsocket.Connection.set_clock`."""
        self._conn.set_clock(clock)

    # -- flow control ----------------------------------------------------------------------

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet sent: encrypted ones in the plain connection's
        buffer, plus what waits for the handshake (as plaintext)."""
        return self._conn.write_buffer_size + self._pending_size + self._outgoing.pending

    def get_write_buffer_size(self) -> int:
        """:attr:`write_buffer_size` (asyncio's name)."""
        return self.write_buffer_size

    @property
    def write_buffer_limits(self) -> tuple[int, int]:
        """``(high_water, low_water)`` (the plain connection's: they apply to the
        encrypted bytes, a few per cent more than the plaintext)."""
        return self._conn.write_buffer_limits

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (see :meth:`Connection.set_write_buffer_limits
        <asycamore.tcpsocket.Connection.set_write_buffer_limits>`)."""
        self._conn.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        """Stop reading (and delivering) until :meth:`resume_reading`.

        Before the handshake completes this only holds the data back: the handshake
        itself still reads.
        """
        if not self._paused:
            self._paused = True
            if self._state == _OPEN:
                self._conn.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`.

        Data already decrypted or received while paused is delivered before the next
        dispatch (at once, without timers), never from inside this call when it is made
        from ``data_received``.
        """
        if not self._paused:
            return
        self._paused = False
        if self._state != _OPEN:
            return
        self._conn.resume_reading()
        if not (self._incoming.pending or self._sslobj.pending()):
            return
        if self._delivering:
            return  # the loop that called data_received goes on by itself
        timers = self._timers
        if timers is None:
            self._read()
        elif self._resume_handle is None:
            self._resume_handle = timers.call_later(0, self._resume_read)

    # -- writing and closing ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send *data*; never blocks.

        Before the handshake completes *data* is kept (copied) and sent once it does.
        Writes after :meth:`close` or :meth:`abort`, or once the connection ended, are
        silently dropped, as on a plain connection.
        """
        if self._state != _OPEN or self._pending:
            self._write_later(data)
            return
        try:
            self._sslobj.write(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # A renegotiation is under way: keep it until incoming data completes it.
            self._keep(data)
            return
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        except TypeError:
            raise not_text(data, "write()") from None
        if not self._delivering:
            self._flush()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write several chunks, as one :meth:`write` of their concatenation."""
        self.write(join_chunks(chunks))

    def can_write_eof(self) -> bool:
        """Always false: see :meth:`write_eof`."""
        return False

    def write_eof(self) -> None:
        """Not supported: raises :class:`NotImplementedError`.

        A TLS 1.2 close_notify ends the session both ways (the peer must answer with
        its own and stop), and TLS 1.3 peers differ in what they do with one, so there
        is no half-close that means the same to every peer.  Close instead, or signal
        the end of the data in the application protocol.
        """
        raise NotImplementedError("TLS connections cannot half-close; use close()")

    def close(self) -> None:
        """Close gracefully: send what is buffered and a close_notify, then close.

        The connection waits for the peer's close_notify (or its EOF) -- at most the
        shutdown timeout, after which it is aborted -- reading and dropping whatever
        else arrives; ``connection_lost(None)`` follows.  Before the handshake
        completes, :meth:`close` aborts the connection (as closing a plain connection
        that is still connecting does) and the protocol hears the failure.  Idempotent.
        """
        self._close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, discarding buffered data, with no close_notify;
        ``connection_lost(exc)`` follows (or the failure, during the handshake)."""
        if self._state == _CLOSED:
            return
        self._conn.abort(exc)

    def __repr__(self) -> str:
        state = ("handshake", "open", "shutdown", "closed")[self._state]
        return f"<TLSConnection {state} on {self._conn!r}>"


def _no_data(data: object) -> None:
    pass


class _Acceptor:
    """A listener's handler for an accepted connection: starts TLS on it."""

    __slots__ = ("_protocol", "_server")

    def __init__(self, protocol: StreamHandler, server: _TLSServer) -> None:
        self._protocol = protocol
        self._server = server

    def connection_made(self, connection: Connection) -> None:
        server = self._server
        tls = TLSConnection(
            connection,
            self._protocol,
            server.sslcontext,
            server.options,
            server_side=True,
            timers=server.timers,
            on_close=server.on_connection_closed,
        )
        if server.on_connection is not None:
            server.on_connection(tls)

    # Never called: connection_made hands the connection to the TLS layer at once.
    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        pass


class _TLSServer:
    """What every accepted connection of one TLS listener shares."""

    __slots__ = ("on_connection", "on_connection_closed", "options", "sslcontext", "timers")

    def __init__(
        self,
        sslcontext: ssl.SSLContext,
        options: TransportOptions,
        timers: Timers | None,
        on_connection: Callable[[TLSConnection], object] | None,
        on_connection_closed: Callable[[TLSConnection], object] | None,
    ) -> None:
        self.sslcontext = sslcontext
        self.options = options
        self.timers = timers
        self.on_connection = on_connection
        self.on_connection_closed = on_connection_closed


def tls_handler_factory(
    protocol_factory: Callable[[], StreamHandler],
    sslcontext: ssl.SSLContext,
    options: TransportOptions = DEFAULT_OPTIONS,
    *,
    timers: Timers | None = None,
    on_connection: Callable[[TLSConnection], object] | None = None,
    on_connection_closed: Callable[[TLSConnection], object] | None = None,
) -> Callable[[], StreamHandler]:
    """A handler factory for a :class:`~asycamore.tcpsocket.Listener` that serves
    TLS: each accepted connection becomes a server-side :class:`TLSConnection` for a
    protocol from *protocol_factory*.  :func:`~asycamore.tcpsocket.listen_tcp` with
    ``ssl=`` uses it.  *on_connection* is called with each TLS connection when it is
    made (before its handshake), *on_connection_closed* once it is closed.  A client-side
    *sslcontext* is refused with a :class:`ValueError` that says which one to make."""
    server = _TLSServer(
        server_context(sslcontext), options, timers, on_connection, on_connection_closed
    )
    check_tls_timers(timers, options)

    def factory() -> StreamHandler:
        return _Acceptor(protocol_factory(), server)

    return factory


def start_tls(
    connection: Connection,
    sslcontext: ssl.SSLContext | bool,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    protocol: StreamHandler | None = None,
    timers: Timers | None = None,
    on_close: Callable[[TLSConnection], object] | None = None,
    received: bytes = b"",
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[StreamKeywords],
) -> TLSConnection:
    """Upgrade an open plain connection to TLS (STARTTLS); return the TLS transport.

    From now on the connection's bytes belong to the TLS layer.  *protocol* (default:
    the connection's handler; the protocol itself, not a factory, as with asyncio's
    ``loop.start_tls``) hears ``connection_made(tls_connection)`` when the handshake
    completes -- a second ``connection_made``, with the new transport -- and
    ``connection_lost(exc)`` if it fails.  It may write at once: what it writes is sent,
    encrypted, once the handshake completes.  Whatever the plain connection still has
    buffered (the "go ahead" reply) is sent first.  *sslcontext* may be ``True`` for a
    client (:func:`client_context`); *received* is data the old protocol read past the
    command, fed to TLS first.  The TLS settings are *keywords*, over *options*;
    *on_close* is :class:`TLSConnection`'s.
    """
    if protocol is None:
        protocol = connection.handler
        if protocol is None:
            raise RuntimeError("start_tls() on a closed connection")
    if connection.is_closing():
        raise RuntimeError("start_tls() on a closing connection")
    context = server_context(sslcontext) if server_side else client_context(sslcontext)
    return TLSConnection(
        connection,
        protocol,
        context,
        options.merged(keywords),
        server_side=server_side,
        server_hostname=server_hostname,
        timers=timers,
        on_close=on_close,
        upgrade=True,
        received=received,
    )
