"""The service model: protocol objects, and a service that runs them on ``iterate``.

A :class:`Service` owns a dispatch context from the factory
(:func:`~asycamore.create_dispatcher`) and everything registered in it: listeners,
connections (both from :mod:`asycamore.tcpsocket`), UDP endpoints (from
:mod:`asycamore.udpsocket`) and a wake-up socket.  It runs on
:func:`~asycamore.iterate`, and its ``before_dispatch`` callback runs timers
(:meth:`~Service.call_later`, :meth:`~Service.call_at`), callbacks queued with
:meth:`~Service.call_soon` (or, from any thread, :meth:`~Service.call_soon_threadsafe`)
and per-connection idle timeouts, and sets the timeout of the next dispatch from the
nearest timer: a dispatch blocks when nothing is scheduled.

:meth:`Service.stop` -- or SIGINT/SIGTERM while :meth:`Service.serve_forever` runs in
the main thread -- stops gracefully: listeners stop accepting, every connection's
protocol is told (:meth:`Protocol.service_stopping`, which by default closes the
connection once its buffered data is sent), and whatever is still open after the stop
timeout is aborted.

A protocol is any object with the :class:`~asycamore.tcpsocket.StreamHandler`
callbacks; :class:`Protocol` and :class:`LineProtocol` are base classes with sensible
defaults::

    class Echo(Protocol):
        def data_received(self, data):
            self.transport.write(data)

    with Service() as service:
        listener = service.listen_tcp(Echo, "127.0.0.1", 8000)
        service.serve_forever()
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

from . import tcpsocket, udpsocket
from .dispatcher import Events, IDispatchContext, IDispatchTarget, close_on_error, iterate
from .tcpsocket import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_RECV_BUFFER_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    Connection,
    Listener,
    StreamHandler,
)
from .timers import ReadyQueue, TimerHandle, Timers
from .udpsocket import MAX_DATAGRAM_SIZE, DatagramEndpoint, DatagramHandler
from .wakeup import DEFAULT_SIGNALS, SignalCatcher, Waker

if TYPE_CHECKING:
    from ssl import SSLContext

    from .tcpsocket import TLSConnection

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "Connection",
    "DatagramEndpoint",
    "DatagramProtocol",
    "LineProtocol",
    "Listener",
    "Protocol",
    "Service",
    "TimerHandle",
    "Timers",
]

_log = logging.getLogger("asycamore")

DEFAULT_STOP_TIMEOUT = 5.0
"""Seconds :meth:`Service.stop` lets connections finish before aborting them."""


class Protocol:
    """Base class of a connection's protocol, with do-nothing defaults.

    Subclass it and override the callbacks you need.  A protocol that overrides
    :meth:`connection_made` should call ``super().connection_made(transport)`` (or set
    :attr:`transport` itself).
    """

    __slots__ = ("transport",)

    receive_memoryview: ClassVar[bool] = False
    """Set to true in a subclass to receive :class:`memoryview` slices of the shared
    receive buffer in :meth:`data_received` (no copy; valid only during the call)."""

    transport: Connection | TLSConnection | None
    """The connection (set by :meth:`connection_made`): a
    :class:`~asycamore.tcpsocket.TLSConnection` for TLS, which has the same API."""

    def __init__(self) -> None:
        self.transport = None

    def connection_made(self, transport: Connection | TLSConnection) -> None:
        """The connection is established (for TLS: the handshake completed): remember
        *transport*."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived (never empty).  The default ignores them."""

    def eof_received(self) -> bool | None:
        """The peer closed its sending side.

        Return a true value to keep the connection open for writing (half-close); the
        default returns ``None``, and the connection then closes itself once its
        buffered data is sent.
        """
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is closed; *exc* is ``None`` for a normal close, else why."""

    def pause_writing(self) -> None:
        """The write buffer went above its high-water mark.

        The connection has stopped reading by itself; a protocol that also produces
        data on its own (not in response to reads) should stop writing until
        :meth:`resume_writing`.
        """

    def resume_writing(self) -> None:
        """The write buffer drained to its low-water mark; reading has resumed."""

    def connection_failed(self, exc: BaseException) -> None:
        """A client connect failed or timed out (called instead of
        :meth:`connection_made`), or, for TLS, its handshake did (an
        :class:`ssl.SSLCertVerificationError` for a certificate that does not verify).
        The default logs it."""
        _log.warning("connect failed: %s", exc)

    def handshake_failed(self, exc: BaseException) -> None:
        """A TLS client of a server failed its handshake or did not finish it in time
        (called instead of :meth:`connection_made`; see :doc:`/tls`).  The default logs
        it at debug level: garbage and stalled handshakes are routine for a server."""
        _log.debug("TLS handshake failed: %s", exc)

    def connection_idle(self) -> None:
        """Nothing was read or written for the connection's idle timeout.

        The default closes the connection gracefully; if it is still not closed one
        idle timeout later, the service aborts it.
        """
        transport = getattr(self, "transport", None)  # robust to a missing super() call
        if transport is not None:
            transport.close()

    def service_stopping(self) -> None:
        """The service is stopping.

        The default closes the connection gracefully (buffered data is sent first).
        Override it to finish the current exchange and close later; connections still
        open at the stop timeout are aborted.
        """
        transport = getattr(self, "transport", None)  # robust to a missing super() call
        if transport is not None:
            transport.close()


class DatagramProtocol:
    """Base class of a UDP endpoint's handler, with do-nothing defaults.

    Override :meth:`datagram_received` (and :meth:`error_received` to hear ICMP
    errors); reply with ``self.transport.sendto(data, addr)``.
    """

    __slots__ = ("transport",)

    receive_memoryview: ClassVar[bool] = False
    """Set to true in a subclass to receive :class:`memoryview` slices of the shared
    receive buffer in :meth:`datagram_received` (valid only during the call)."""

    transport: DatagramEndpoint | None
    """The endpoint (set by :meth:`connection_made`)."""

    def __init__(self) -> None:
        self.transport = None

    def connection_made(self, transport: DatagramEndpoint) -> None:
        """The endpoint is ready: remember *transport*."""
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram arrived from *addr*.  The default ignores it."""

    def error_received(self, exc: OSError) -> None:
        """The kernel reported an error for an earlier datagram (see
        :meth:`asycamore.udpsocket.DatagramHandler.error_received`).  The default
        logs it at debug level: UDP errors are expected, the endpoint stays open."""
        _log.debug("datagram error on %r: %s", self.transport, exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The endpoint is closed; *exc* is ``None`` for a normal close, else why."""

    def pause_writing(self) -> None:
        """The send queue went above its high-water mark (the endpoint has stopped
        reading by itself); stop sending datagrams of your own until
        :meth:`resume_writing`."""

    def resume_writing(self) -> None:
        """The send queue drained to its low-water mark; reading has resumed."""

    def service_stopping(self) -> None:
        """The service is stopping.  The default closes the endpoint once its queue
        is sent."""
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.close()


class LineProtocol(Protocol):
    """A protocol for line-based exchanges: override :meth:`line_received`.

    Incoming data is split at :attr:`delimiter`; each line (without the delimiter) is
    passed to :meth:`line_received`.  A line longer than :attr:`max_line_length` calls
    :meth:`line_too_long`, which closes the connection by default.  An incomplete line
    left at EOF is dropped.
    """

    delimiter: ClassVar[bytes] = b"\n"
    """The line delimiter."""
    max_line_length: ClassVar[int] = 64 * 1024
    """The longest line accepted, in bytes, without the delimiter."""

    _partial: bytes = b""

    def data_received(self, data: bytes) -> None:
        """Split *data* into lines; call :meth:`line_received` for each."""
        if self._partial:
            data = self._partial + data
        delimiter = self.delimiter
        lines = data.split(delimiter)
        self._partial = rest = lines.pop()
        transport = getattr(self, "transport", None)
        for line in lines:
            if transport is not None and transport.is_closing():
                return
            if len(line) > self.max_line_length:
                self.line_too_long()
                return
            self.line_received(line)
        if len(rest) > self.max_line_length:
            self._partial = b""
            self.line_too_long()

    def line_received(self, line: bytes) -> None:
        """One line arrived, without its delimiter."""

    def line_too_long(self) -> None:
        """A line exceeded :attr:`max_line_length`; the default closes the connection."""
        transport = getattr(self, "transport", None)  # robust to a missing super() call
        if transport is not None:
            transport.close()

    def send_line(self, line: bytes) -> None:
        """Write *line* followed by :attr:`delimiter`."""
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.write(line + self.delimiter)


class Service:
    """Runs listeners, connections, UDP endpoints and timers on one dispatch context.

    The context is created with :func:`~asycamore.create_dispatcher` from *backend*
    (default: ``$ASYCAMORE_BACKEND`` or the best backend here), unless *dispatcher* is
    given; the service closes it in :meth:`close` only if it created it.

    All connections share one receive buffer of *recv_buffer_size* bytes.
    *idle_timeout* (seconds, ``None``: none) and *high_water*/*low_water* are the
    defaults of :meth:`listen_tcp` and friends.  *stop_timeout* is how long
    :meth:`stop` waits for connections to close before aborting them.

    Every method must be called from the thread that runs the service, except
    :meth:`call_soon_threadsafe` and :meth:`stop`, which may be called from any thread.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        dispatcher: IDispatchContext | None = None,
        recv_buffer_size: int = DEFAULT_RECV_BUFFER_SIZE,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        if dispatcher is None:
            from .factory import create_dispatcher

            dispatcher = create_dispatcher(backend)
            self._owns_dispatcher = True
        else:
            self._owns_dispatcher = False
        self.dispatcher: IDispatchContext = dispatcher
        """The dispatch context."""
        self.timers = Timers()
        """The service's :class:`~asycamore.timers.Timers`."""
        self.dispatchvars: dict[str, Any] = {}
        """The ``dispatchvars`` of :meth:`serve_forever`'s :func:`~asycamore.iterate`."""
        self.idle_timeout = idle_timeout
        """Default idle timeout of new connections, in seconds (``None``: none)."""
        self.high_water = high_water
        """Default high-water mark of new connections' write buffers (``None``: the
        :data:`~asycamore.tcpsocket.DEFAULT_HIGH_WATER`)."""
        self.low_water = low_water
        """Default low-water mark (``None``: a quarter of the high-water mark)."""
        self.stop_timeout = stop_timeout
        """Seconds :meth:`stop` waits before aborting the connections left."""
        self._recv_buffer = memoryview(bytearray(recv_buffer_size))
        self._ready = ReadyQueue()
        self._connections: dict[Connection, TimerHandle | None] = {}
        self._endpoints: dict[DatagramEndpoint, None] = {}  # ordered, O(1) removal
        self._listeners: list[Listener] = []
        self._waker = Waker()
        try:
            dispatcher.register(self._waker, Events.READ)
        except BaseException:
            self._waker.close()
            raise
        self._thread_id: int | None = None
        self._running = False
        self._stopping = False
        self._stop_timer: TimerHandle | None = None
        self._signals = SignalCatcher(self._waker)
        self._on_schedule: Callable[[float], object] | None = None
        self._closed = False

    # -- scheduling ------------------------------------------------------------------------

    def time(self) -> float:
        """The service clock (:func:`time.monotonic`)."""
        return self.timers.clock()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` before the next dispatch (in order of calls)."""
        handle = self._ready.append(callback, *args)
        if self._on_schedule is not None:
            self._on_schedule(-math.inf)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Like :meth:`call_soon`, from any thread: wakes the service if it is blocked."""
        handle = self._ready.append(callback, *args)
        if threading.get_ident() != self._thread_id:
            self._waker.wake()
        elif self._on_schedule is not None:
            self._on_schedule(-math.inf)
        return handle

    def wakeup(self) -> None:
        """Wake a blocked dispatch (from any thread)."""
        self._waker.wake()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` after *delay* seconds; cancel with the handle."""
        return self.timers.call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` at *when* on the :meth:`time` clock."""
        return self.timers.call_at(when, callback, *args)

    # -- listeners and connections -----------------------------------------------------------

    def _connection_options(
        self, idle_timeout: float | None, high_water: int | None, low_water: int | None
    ) -> dict[str, Any]:
        return {
            "recv_buffer": self._recv_buffer,
            "high_water": self.high_water if high_water is None else high_water,
            "low_water": self.low_water if low_water is None else low_water,
            "track_activity": idle_timeout is not None,
        }

    def _listener_options(
        self, idle_timeout: float | None, high_water: int | None, low_water: int | None
    ) -> dict[str, Any]:
        """The options that make a listener's connections the service's own."""
        self._check_open()
        idle = self.idle_timeout if idle_timeout is None else idle_timeout

        if idle is None:
            # No timer to arm: the listener hands over a connection that is open, so
            # the bookkeeping is one dict store (this runs for every connection).
            connections = self._connections

            def on_connection(conn: Connection) -> None:
                connections[conn] = None

        else:

            def on_connection(conn: Connection) -> None:
                self._add(conn, idle)

        return {
            "timers": self.timers,
            "on_connection": on_connection,
            "on_connection_closed": self._remove,
            **self._connection_options(idle, high_water, low_water),
        }

    def listen_tcp(
        self,
        protocol_factory: Callable[[], StreamHandler],
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        reuse_address: bool = True,
        reuse_port: bool = False,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        accept_batch: int = 64,
        backoff: float = 0.25,
        ssl: SSLContext | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> Listener:
        """Listen on *host*:*port* and serve each connection with a new protocol from
        *protocol_factory*; return the :class:`~asycamore.tcpsocket.Listener`.

        Every address *host* resolves to is served, on one port, by the one listener
        (``localhost``: ``127.0.0.1`` and ``::1``; see
        :func:`asycamore.tcpsocket.listen_tcp`).

        Raises :class:`OSError` if the address cannot be resolved or bound.  See
        :class:`~asycamore.tcpsocket.Listener` for *max_connections*, *accept_batch* and
        *backoff*; *idle_timeout* and the water marks default to the service's.

        With *ssl* (a server :class:`ssl.SSLContext`) the connections speak TLS: see
        :func:`asycamore.tcpsocket.listen_tcp` and :doc:`/tls`.  The service's timers
        run the handshake and shutdown timeouts.
        """
        listener = tcpsocket.listen_tcp(
            self.dispatcher,
            protocol_factory,
            host,
            port,
            backlog=backlog,
            reuse_address=reuse_address,
            reuse_port=reuse_port,
            max_connections=max_connections,
            accept_batch=accept_batch,
            backoff=backoff,
            ssl=ssl,
            handshake_timeout=handshake_timeout,
            shutdown_timeout=shutdown_timeout,
            strict_eof=strict_eof,
            **self._listener_options(idle_timeout, high_water, low_water),
        )
        self._listeners.append(listener)
        return listener

    def listen_unix(
        self,
        protocol_factory: Callable[[], StreamHandler],
        path: str,
        *,
        backlog: int = DEFAULT_BACKLOG,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> Listener:
        """Like :meth:`listen_tcp`, on the Unix domain socket *path* (removed again when
        the listener closes)."""
        listener = tcpsocket.listen_unix(
            self.dispatcher,
            protocol_factory,
            path,
            backlog=backlog,
            max_connections=max_connections,
            **self._listener_options(idle_timeout, high_water, low_water),
        )
        self._listeners.append(listener)
        return listener

    def listen_socket(
        self,
        protocol_factory: Callable[[], StreamHandler],
        sock: socket.socket | Sequence[socket.socket],
        *,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        accept_batch: int = 64,
        backoff: float = 0.25,
        ssl: SSLContext | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> Listener:
        """Like :meth:`listen_tcp`, on *sock*: a socket, or several (one listener then
        serves them all), already bound and listening -- inherited from a parent
        process, say (see :mod:`asycamore.workers`).

        The listener owns the sockets from then on and closes them when it closes.
        """
        if ssl is not None:
            protocol_factory = tcpsocket.tls_handler_factory(
                protocol_factory,
                ssl,
                timers=self.timers,
                handshake_timeout=handshake_timeout,
                shutdown_timeout=shutdown_timeout,
                strict_eof=strict_eof,
            )
        listener = Listener(
            self.dispatcher,
            sock,
            protocol_factory,
            max_connections=max_connections,
            accept_batch=accept_batch,
            backoff=backoff,
            **self._listener_options(idle_timeout, high_water, low_water),
        )
        self._listeners.append(listener)
        return listener

    def _connect(
        self,
        connect: Callable[..., Connection | TLSConnection],
        target: tuple[Any, ...],
        protocol: StreamHandler,
        timeout: float | None,
        idle_timeout: float | None,
        high_water: int | None,
        low_water: int | None,
        **tls_options: Any,
    ) -> Any:
        self._check_open()
        if idle_timeout is None:
            idle_timeout = self.idle_timeout
        conn = connect(
            self.dispatcher,
            protocol,
            *target,
            timeout=timeout,
            timers=self.timers,
            on_close=self._remove,
            **tls_options,
            **self._connection_options(idle_timeout, high_water, low_water),
        )
        # The service tracks plain connections (a TLS one runs on one).
        self._add(conn if isinstance(conn, Connection) else conn.connection, idle_timeout)
        return conn

    @overload
    def connect_tcp(
        self,
        protocol: StreamHandler,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        ssl: Literal[False] | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> Connection: ...

    @overload
    def connect_tcp(
        self,
        protocol: StreamHandler,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        ssl: SSLContext | Literal[True],
        server_hostname: str | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> TLSConnection: ...

    @overload
    def connect_tcp(
        self,
        protocol: StreamHandler,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        ssl: SSLContext | bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> Connection | TLSConnection: ...

    def connect_tcp(
        self,
        protocol: StreamHandler,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        ssl: SSLContext | bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
    ) -> Connection | TLSConnection:
        """Connect to *host*:*port* without blocking; *protocol* hears
        ``connection_made`` or ``connection_failed``.

        A host name is resolved in a worker thread and its addresses raced with Happy
        Eyeballs, with the service's timers for the 250 ms stagger; *timeout* covers
        resolution and attempts (see :func:`asycamore.tcpsocket.connect_tcp`).

        With *ssl* (an :class:`ssl.SSLContext`, or ``True`` for the default, verifying
        one) the connection speaks TLS and the
        :class:`~asycamore.tcpsocket.TLSConnection` is returned; the service's timers
        run its timeouts.  See :doc:`/tls`.
        """
        tls_options: dict[str, Any] = {}
        if ssl is not None and ssl is not False:
            tls_options = {
                "ssl": ssl,
                "server_hostname": server_hostname,
                "handshake_timeout": handshake_timeout,
                "shutdown_timeout": shutdown_timeout,
                "strict_eof": strict_eof,
            }
        return self._connect(  # type: ignore[no-any-return]
            tcpsocket.connect_tcp,
            (host, port),
            protocol,
            timeout,
            idle_timeout,
            high_water,
            low_water,
            **tls_options,
        )

    def start_tls(
        self,
        connection: Connection,
        sslcontext: SSLContext | bool,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        protocol: StreamHandler | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        strict_eof: bool = False,
        received: bytes = b"",
    ) -> TLSConnection:
        """Upgrade the open plain *connection* to TLS (STARTTLS), on either side; the
        service's timers run the timeouts.  See :func:`asycamore.tcpsocket.start_tls`:
        *protocol* (default: the connection's) hears ``connection_made`` again, with the
        returned :class:`~asycamore.tcpsocket.TLSConnection`, once the handshake
        completes."""
        self._check_open()
        return tcpsocket.start_tls(
            connection,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            protocol=protocol,
            timers=self.timers,
            handshake_timeout=handshake_timeout,
            shutdown_timeout=shutdown_timeout,
            strict_eof=strict_eof,
            received=received,
        )

    def connect_unix(
        self,
        protocol: StreamHandler,
        path: str,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> Connection:
        """Like :meth:`connect_tcp`, to the Unix domain socket at *path*."""
        conn: Connection = self._connect(
            tcpsocket.connect_unix, (path,), protocol, timeout, idle_timeout, high_water, low_water
        )
        return conn

    # -- datagram endpoints ------------------------------------------------------------

    def _datagram_options(self, high_water: int | None, low_water: int | None) -> dict[str, Any]:
        self._check_open()
        buffer = self._recv_buffer
        return {
            "recv_buffer": buffer if buffer.nbytes >= MAX_DATAGRAM_SIZE else None,
            "high_water": self.high_water if high_water is None else high_water,
            "low_water": self.low_water if low_water is None else low_water,
            "on_close": self._remove_endpoint,
            "start": False,
        }

    def _start_endpoint(self, endpoint: DatagramEndpoint) -> DatagramEndpoint:
        self._endpoints[endpoint] = None
        try:
            endpoint.start()
        except BaseException:
            # The context refused it (start() has closed it, without telling anyone).
            self._endpoints.pop(endpoint, None)
            raise
        return endpoint

    def bind_udp(
        self,
        protocol: DatagramHandler,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        family: int = 0,
        reuse_port: bool = False,
        allow_broadcast: bool = False,
        socket_buffer_size: int | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> DatagramEndpoint:
        """A bound UDP endpoint on *host*:*port* served by *protocol* (see
        :func:`asycamore.udpsocket.bind_udp`).  Raises :class:`OSError` if the address
        cannot be resolved or bound; the water marks default to the service's."""
        options = self._datagram_options(high_water, low_water)
        sock = udpsocket.create_datagram_socket(
            host,
            port,
            family=family,
            reuse_port=reuse_port,
            allow_broadcast=allow_broadcast,
            socket_buffer_size=socket_buffer_size,
        )
        endpoint = DatagramEndpoint(self.dispatcher, sock, protocol, **options)
        return self._start_endpoint(endpoint)

    def bind_udp_all(
        self,
        protocol_factory: Callable[[], DatagramHandler],
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        family: int = 0,
        reuse_port: bool = False,
        allow_broadcast: bool = False,
        socket_buffer_size: int | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> list[DatagramEndpoint]:
        """One bound endpoint per address of *host*, on one port, each served by a new
        protocol from *protocol_factory* (see :func:`asycamore.udpsocket.bind_udp_all`)."""
        options = self._datagram_options(high_water, low_water)
        endpoints = udpsocket.bind_udp_all(
            self.dispatcher,
            protocol_factory,
            host,
            port,
            family=family,
            reuse_port=reuse_port,
            allow_broadcast=allow_broadcast,
            socket_buffer_size=socket_buffer_size,
            **options,
        )
        try:
            for endpoint in endpoints:
                self._start_endpoint(endpoint)
        except BaseException:
            for endpoint in endpoints:
                endpoint.abort()
            raise
        return endpoints

    def serve_udp_socket(
        self,
        protocol: DatagramHandler,
        sock: socket.socket,
        *,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> DatagramEndpoint:
        """Like :meth:`bind_udp`, on *sock*: a UDP socket already bound -- made by
        :func:`~asycamore.udpsocket.create_datagram_sockets` in a parent process, say
        (see :mod:`asycamore.workers`).  The endpoint owns the socket from then on; if
        this raises (a closed service, a socket that is not UDP), the caller still
        does."""
        options = self._datagram_options(high_water, low_water)
        endpoint = DatagramEndpoint(self.dispatcher, sock, protocol, **options)
        return self._start_endpoint(endpoint)

    def connect_udp(
        self,
        protocol: DatagramHandler,
        host: str,
        port: int,
        *,
        local_host: str | None = None,
        local_port: int = 0,
        family: int = 0,
        allow_broadcast: bool = False,
        socket_buffer_size: int | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
    ) -> DatagramEndpoint:
        """A UDP endpoint connected to *host*:*port*, served by *protocol* (see
        :func:`asycamore.udpsocket.connect_udp`)."""
        options = self._datagram_options(high_water, low_water)
        sock = udpsocket.create_datagram_socket(
            local_host,
            local_port,
            remote=(host, port),
            family=family,
            allow_broadcast=allow_broadcast,
            socket_buffer_size=socket_buffer_size,
        )
        endpoint = DatagramEndpoint(self.dispatcher, sock, protocol, **options)
        return self._start_endpoint(endpoint)

    def _remove_endpoint(self, endpoint: DatagramEndpoint) -> None:
        self._endpoints.pop(endpoint, None)

    @property
    def endpoints(self) -> list[DatagramEndpoint]:
        """A snapshot of the open datagram endpoints."""
        return list(self._endpoints)

    @property
    def connections(self) -> list[Connection]:
        """A snapshot of the open connections (accepted and client)."""
        return list(self._connections)

    @property
    def connection_count(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    @property
    def listeners(self) -> list[Listener]:
        """The listeners that have not been closed."""
        return [listener for listener in self._listeners if not listener.closed]

    def _add(self, conn: Connection, idle_timeout: float | None) -> None:
        if conn.closed:
            return
        timer = None
        if idle_timeout is not None:
            timer = self.timers.call_at(
                conn.last_activity + idle_timeout, self._check_idle, conn, idle_timeout
            )
        self._connections[conn] = timer

    def _remove(self, conn: Connection) -> None:
        timer = self._connections.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _check_idle(self, conn: Connection, idle_timeout: float) -> None:
        if conn not in self._connections:
            return
        now = self.timers.clock()
        due = conn.last_activity + idle_timeout
        if now >= due:
            if conn.is_closing():
                conn.abort(TimeoutError("idle timeout: the connection did not close in time"))
                return
            _log.debug("%r idle for %.1f s", conn, now - conn.last_activity)
            hook = getattr(conn.handler, "connection_idle", None)
            if hook is not None:
                hook()
            else:
                conn.close()
            if conn not in self._connections:
                return
            due = now + idle_timeout
        self._connections[conn] = self.timers.call_at(due, self._check_idle, conn, idle_timeout)

    # -- running ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`serve_forever` is running."""
        return self._running

    @property
    def stopping(self) -> bool:
        """Whether a :meth:`stop` is in progress."""
        return self._stopping

    def before_dispatch(
        self, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
    ) -> None:
        """The service's :func:`~asycamore.iterate` callback.

        Handles received signals, runs queued callbacks and due timers, ends the loop
        (:class:`StopIteration`) once a stop has completed, and sets
        ``dispatchvars["timeout"]``: 0 if callbacks are queued, else the time to the
        next timer, else ``None`` (block).
        """
        if self._signals.pending:
            self._handle_signals()
        queued = self._ready.pending
        if queued:
            self._ready.run()
        timeout = self.timers.advance()
        if (self._stopping and not self._connections and not self._endpoints) or self._closed:
            # A close() from a callback or handler also ends the loop, before it would
            # dispatch on the closed context.
            raise StopIteration
        dispatchvars["timeout"] = 0 if queued else timeout

    def error_in_handler(self, target: IDispatchTarget, exc: Exception) -> None:
        """The service's error policy for handlers that raise (see rule 7).

        A connection whose protocol raised is logged and aborted with the exception
        (its protocol's ``connection_lost(exc)`` is called); any other target is
        logged, unregistered and closed.
        """
        try:
            if isinstance(target, Connection | DatagramEndpoint):
                _log.error("error in a protocol callback of %r", target, exc_info=exc)
                target.abort(exc)
                return
            close_on_error(self.dispatcher, target, exc)
        except Exception:
            _log.exception("error while handling an error of %r", target)

    def run_once(self, timeout: float | None = 0) -> int:
        """Run callbacks and timers, then one dispatch of at most *timeout* seconds
        (less if a timer is due sooner; ``None``: until something happens).  Returns
        the number of handler calls."""
        self._check_open()
        dispatchvars: dict[str, Any] = {}
        try:
            self.before_dispatch(self.dispatcher, dispatchvars)
        except StopIteration:
            self._stopping = False
            return 0
        wait = dispatchvars["timeout"]
        if timeout is not None and (wait is None or timeout < wait):
            wait = timeout
        return self.dispatcher.dispatch_once(wait, self.error_in_handler)

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Run the service until :meth:`stop` completes.

        With *handle_signals* (and only in the main thread), SIGINT and SIGTERM start a
        graceful :meth:`stop` while this runs, and a second one aborts what is left;
        the previous handlers and wake-up fd are restored afterwards (see
        :meth:`signal_handling`).
        """
        with self.serving(), contextlib.ExitStack() as stack:
            if handle_signals:
                stack.enter_context(self.signal_handling())
            iterate(
                self.dispatcher,
                timeout=None,
                dispatchvars=self.dispatchvars,
                before_dispatch=self.before_dispatch,
                error_in_handler=self.error_in_handler,
            )

    @contextlib.contextmanager
    def serving(self, *, on_schedule: Callable[[float], object] | None = None) -> Iterator[None]:
        """A context manager: the service runs in this thread while it is active.

        :meth:`serve_forever` runs :func:`~asycamore.iterate` inside it; a foreign main
        loop (:func:`asycamore.aio.serve`) drives :meth:`before_dispatch`,
        :meth:`error_in_handler` and the dispatcher inside it instead.  While active,
        :attr:`running` is true, :meth:`stop` and :meth:`call_soon_threadsafe` from other
        threads wake the dispatcher, and on exit a stop in progress is reset.

        *on_schedule* is for a loop that waits for the dispatcher's readiness with its own
        deadline: ``on_schedule(when)`` is called, in this thread, whenever something is
        scheduled that the next :meth:`before_dispatch` must handle by *when* on the
        :meth:`time` clock (``-inf``: at once) -- a queued callback, a timer, a stop or a
        close -- so that a wait the loop already started can be cut short.  (Inside a
        dispatch, or from other threads, nothing is missed: the next round, or the wake-up
        socket, sees it.)
        """
        self._check_open()
        if self._running:
            raise RuntimeError("the service is already running")
        self._running = True
        self._thread_id = threading.get_ident()
        self._on_schedule = on_schedule
        self.timers.on_schedule = on_schedule
        try:
            yield
        finally:
            self._on_schedule = None
            self.timers.on_schedule = None
            self._running = False
            self._thread_id = None
            self._stopping = False
            if self._stop_timer is not None:
                self._stop_timer.cancel()
                self._stop_timer = None

    @contextlib.contextmanager
    def signal_handling(
        self, signals: Iterable[int] = DEFAULT_SIGNALS, *, ignore_afterwards: bool = False
    ) -> Iterator[None]:
        """A context manager: *signals* (SIGINT and SIGTERM) stop the service while it is
        active; a second one aborts what is left.

        The handlers only note the signal; ``signal.set_wakeup_fd`` points at the
        service's wake-up socket so a blocked dispatch returns at once (see
        :class:`~asycamore.wakeup.SignalCatcher`, also for *ignore_afterwards*).  Does
        nothing outside the main thread.  :meth:`serve_forever` uses it; enter it
        yourself to cover set-up code that runs before (a signal that arrives then is
        handled when the service runs), or to choose the signals.
        """
        with self._signals.installed(signals, ignore_afterwards=ignore_afterwards):
            yield

    def _handle_signals(self) -> None:
        pending = self._signals.pending
        while pending:
            signum = pending.pop(0)
            name = signal.Signals(signum).name
            if self._stopping:
                _log.info("%s received again: aborting the remaining connections", name)
                self._abort_all(ConnectionAbortedError(f"{name} received twice"))
            else:
                _log.info("%s received: stopping", name)
                self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop accepting, let the connections finish, end the loop.

        Closes every listener, calls each connection's protocol's
        ``service_stopping()`` (or closes the connection if it has none), and aborts
        the connections still open after *timeout* seconds (default
        :attr:`stop_timeout`).  :meth:`serve_forever` returns once no connection is
        left.  May be called from any thread.
        """
        if self._running and threading.get_ident() != self._thread_id:
            self.call_soon_threadsafe(self.stop, timeout)
            return
        if self._stopping or self._closed:
            return
        self._stopping = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        transports: list[Connection | DatagramEndpoint] = [*self._connections, *self._endpoints]
        for conn in transports:
            hook = getattr(conn.handler, "service_stopping", None)
            try:
                if isinstance(conn, Connection) and conn.connecting:
                    # Still resolving or connecting: its protocol has no transport yet,
                    # and a connection made during the stop would be a new one.
                    conn.close()  # connection_failed(ECONNABORTED)
                elif hook is not None:
                    hook()
                else:
                    conn.close()
            except Exception as exc:
                _log.exception("error in service_stopping of %r", conn)
                conn.abort(exc)
        if self._connections or self._endpoints:
            self._stop_timer = self.timers.call_later(
                self.stop_timeout if timeout is None else timeout, self._stop_timed_out
            )
        elif self._on_schedule is not None:
            self._on_schedule(-math.inf)  # nothing left to wait for: end the loop now

    def _stop_timed_out(self) -> None:
        self._stop_timer = None
        if self._connections or self._endpoints:
            _log.warning(
                "stop timeout: aborting %d connection(s) that did not close",
                len(self._connections) + len(self._endpoints),
            )
            self._abort_all(TimeoutError("the service stopped; connection aborted"))

    def _abort_all(self, exc: BaseException) -> None:
        transports: list[Connection | DatagramEndpoint] = [*self._connections, *self._endpoints]
        for conn in transports:
            try:
                conn.abort(exc)
            except Exception:
                _log.exception("error aborting %r", conn)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the service is closed")

    def close(self) -> None:
        """Close everything at once: listeners, connections (aborted), the wake-up
        socket and the dispatch context if the service created it.  Idempotent.

        Called from a callback or handler while :meth:`serve_forever` runs, it also
        ends the loop: ``serve_forever`` returns normally after the current round.
        """
        if self._closed:
            return
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._abort_all(ConnectionAbortedError("the service was closed"))
        self._closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.dispatcher.unregister(self._waker)
        # Closed from inside serve_forever, the signal handlers are still ours: the
        # wake-up fd must not outlive the socket (its number may be reused at once).
        self._signals.detach_waker()
        self._waker.close()
        if self._owns_dispatcher:
            self.dispatcher.close()
        if self._on_schedule is not None:
            self._on_schedule(-math.inf)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._connections)} connections"
        return f"<Service {self.dispatcher.name} {state}>"
