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

import dataclasses
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from . import processes, tcpsocket, udpsocket
from .arguments import check_factory, check_timeout, not_text
from .dispatcher import IDispatchContext, IDispatchTarget
from .processes import PIPE, Process, ProcessHandler, ReadPipeTransport, WritePipeTransport
from .serviceloop import ServiceLoop
from .tcpsocket import (
    DEFAULT_RECV_BUFFER_SIZE,
    Connection,
    ConnectionKeywords,
    FlowKeywords,
    Listener,
    ServiceListenKeywords,
    StreamHandler,
    StreamKeywords,
    StreamTransport,
    TransportOptions,
)
from .timers import TimerHandle, Timers
from .transports import TransportSet
from .udpsocket import MAX_DATAGRAM_SIZE, DatagramEndpoint, DatagramHandler, DatagramKeywords

if TYPE_CHECKING:
    from ssl import SSLContext

    from typing_extensions import Unpack

    from .statistics import DispatchStatistics
    from .tcpsocket import TLSConnection

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "Connection",
    "DatagramEndpoint",
    "DatagramProtocol",
    "LineProtocol",
    "Listener",
    "Process",
    "ProcessProtocol",
    "Protocol",
    "Service",
    "ServiceLoop",
    "ServiceStatistics",
    "StreamTransport",
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

    reads_produce_writes: ClassVar[bool] = True
    """Whether this protocol writes on its own transport in reply to what it reads (the
    default).  Set it to false in a protocol that writes what it reads somewhere else,
    a proxy's two sides say: see :class:`~asycamore.tcpsocket.StreamHandler`, and
    :doc:`/recipes` for the wiring."""

    transport: StreamTransport | None
    """The transport (set by :meth:`connection_made`): a
    :class:`~asycamore.tcpsocket.Connection`, or for TLS a
    :class:`~asycamore.tcpsocket.TLSConnection`; both are a
    :class:`~asycamore.tcpsocket.StreamTransport`."""

    def __init__(self) -> None:
        self.transport = None

    def connection_made(self, transport: StreamTransport) -> None:
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
        The default logs it: as a warning, or at debug level for a connect that our side
        cancelled (a :class:`ConnectionAbortedError`: ``close()`` while connecting, a
        service that stops)."""
        if isinstance(exc, ConnectionAbortedError):
            _log.debug("connect cancelled: %s", exc)
        else:
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


class ProcessProtocol:
    """Base class of a child process's protocol (:meth:`Service.spawn`), with
    do-nothing defaults: asyncio's ``SubprocessProtocol`` names.

    A protocol that overrides :meth:`connection_made` should call
    ``super().connection_made(process)`` (or set :attr:`process` itself).
    """

    __slots__ = ("process",)

    process: Process | None
    """The :class:`~asycamore.processes.Process` (set by :meth:`connection_made`)."""

    def __init__(self) -> None:
        self.process = None

    def connection_made(self, process: Process) -> None:
        """The child has started (called before any other callback): remember
        *process*.  Write to its stdin with ``process.get_pipe_transport(0)``."""
        self.process = process

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """The child wrote *data* to its stdout (*fd* 1) or stderr (2).  The default
        ignores it."""

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        """The pipe of the child's *fd* closed: ``None`` at its EOF, else why (a
        :class:`BrokenPipeError` writing to stdin, *fd* 0, of a child that has gone)."""

    def process_exited(self) -> None:
        """The child has exited and been reaped; ``self.process.returncode`` is set.
        Called exactly once; stdout and stderr may still have data to deliver."""

    def pause_writing(self) -> None:
        """The child's stdin buffers more than its high-water mark: stop writing to it
        until :meth:`resume_writing` (its stdout and stderr are still read)."""

    def resume_writing(self) -> None:
        """The child's stdin drained to its low-water mark."""


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
        """Write *line* (bytes: a :class:`str` is a :class:`TypeError`) followed by
        :attr:`delimiter`."""
        if not isinstance(line, bytes | bytearray | memoryview):
            raise not_text(line, "send_line()")
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.write(line + self.delimiter)


@dataclasses.dataclass(frozen=True)
class ServiceStatistics:
    """A snapshot of what a :class:`Service` has done, from :meth:`Service.statistics`.

    The counts are totals since the service was made; ``connections_open`` and
    ``processes_running`` are how many there are now.  Bytes are those the service's
    sockets moved (streams and datagrams; for TLS, the encrypted records, handshakes
    included).  Every accepted or client connection ends up counted once in
    ``connections_closed`` or ``connections_failed``.
    """

    connections_open: int
    """Stream connections open now, accepted and client (connecting ones included)."""
    connections_accepted: int
    """Connections the service's listeners accepted."""
    connections_closed: int
    """Connections closed after they were accepted or connected (a TLS connection
    whose handshake failed included)."""
    connections_failed: int
    """Client connects that did not connect: refused, unreachable, timed out, or
    cancelled by a close or a stop."""
    bytes_received: int
    """Bytes read from the service's stream and datagram sockets."""
    bytes_sent: int
    """Bytes the service's stream and datagram sockets took to send."""
    datagrams_received: int
    """Datagrams received."""
    datagrams_sent: int
    """Datagrams sent (taken by the socket)."""
    tls_handshakes: int
    """TLS handshakes completed, server and client side."""
    tls_handshakes_failed: int
    """TLS handshakes that failed, timed out or were cut short by a close."""
    processes_running: int
    """Child processes spawned by the service and not yet reaped."""
    processes_exited: int
    """Child processes spawned by the service that have exited and been reaped."""
    timers_fired: int
    """Scheduled calls made by the service's timers (a repeating call's, each time;
    the service's own idle, TLS and linger timeouts included)."""
    dispatch: DispatchStatistics | None
    """The dispatch context's :class:`~asycamore.DispatchStatistics`, or ``None`` for
    a context without ``statistics()``."""


class Service(ServiceLoop):
    """Runs listeners, connections, UDP endpoints and timers on one dispatch context.

    The loop -- the context (from *backend*, or *dispatcher*), timers, ``call_soon``,
    signals, :meth:`serve_forever` -- is :class:`~asycamore.serviceloop.ServiceLoop`'s;
    the transports it makes are tracked by a
    :class:`~asycamore.transports.TransportSet`.  Every method that makes a transport
    takes a protocol factory (a class, or a lambda: ``lambda: Echo(store)``) and checks
    its arguments at the call, before anything is opened.

    All connections share one receive buffer of *recv_buffer_size* bytes.  The
    transport keywords given here (*high_water*, *low_water*, *idle_timeout* in
    seconds, the TLS timeouts, *strict_eof*) are the defaults of every transport the
    service makes; a method's own keywords override them.  *stop_timeout* is how long
    :meth:`stop` waits for connections to close before aborting them.  Everything the
    service times -- timers, :meth:`call_every`, idle, TLS and stop timeouts -- follows
    *clock* (default :func:`time.monotonic`; a test passes an
    :class:`asycamore.testing.MockClock`).  *debug* turns on debug mode for the service
    and its context (see :doc:`/observing`).

    Every method must be called from the thread that runs the service, except
    :meth:`call_soon_threadsafe` and :meth:`stop`, which may be called from any thread.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        dispatcher: IDispatchContext | None = None,
        clock: Callable[[], float] | None = None,
        debug: bool | None = None,
        recv_buffer_size: int = DEFAULT_RECV_BUFFER_SIZE,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        **options: Unpack[ConnectionKeywords],
    ) -> None:
        # Checked before the context is made: a refused call leaves nothing open.
        defaults = TransportOptions().merged(options)
        check_timeout(stop_timeout, "stop_timeout", optional=False)
        if isinstance(recv_buffer_size, bool) or not isinstance(recv_buffer_size, int):
            raise TypeError(f"recv_buffer_size must be an int, not {recv_buffer_size!r}")
        if recv_buffer_size < 1:
            raise ValueError(f"recv_buffer_size must be positive, not {recv_buffer_size}")
        super().__init__(backend, dispatcher=dispatcher, clock=clock, debug=debug)
        self.stop_timeout = stop_timeout
        """Seconds :meth:`stop` waits before aborting the connections left."""
        self.transports = TransportSet(self.timers)
        """The transports the service has made and not yet seen closed."""
        self.options = dataclasses.replace(defaults, counters=self.transports.counters)
        """The :class:`~asycamore.tcpsocket.TransportOptions` every transport starts
        from: the keyword arguments given here, and the service's counters (what
        :meth:`statistics` reports)."""
        self._recv_buffer = memoryview(bytearray(recv_buffer_size))

    # -- streams ---------------------------------------------------------------------------

    def _stream_options(self, keywords: ConnectionKeywords) -> dict[str, Any]:
        """What every stream function gets from the service."""
        self._check_open()
        return {
            "options": self.options.merged(keywords),
            "timers": self.timers,
            "recv_buffer": self._recv_buffer,
        }

    def _listen(self, keywords: ServiceListenKeywords) -> dict[str, Any]:
        """What a listen function gets from the service: its options, timers and
        buffer, and the hooks that track the connections."""
        self._check_open()
        idle_timeout = keywords.get("idle_timeout") or self.options.idle_timeout
        return {
            **keywords,
            "options": self.options,
            "timers": self.timers,
            "recv_buffer": self._recv_buffer,
            "on_connection": self.transports.stream_hook(idle_timeout),
            "on_connection_closed": self.transports.remove_stream,
        }

    def _listening(self, listener: Listener) -> Listener:
        self.transports.add_listener(listener)
        return listener

    def listen_tcp(
        self,
        protocol_factory: Callable[[], StreamHandler],
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl: SSLContext | None = None,
        **options: Unpack[ServiceListenKeywords],
    ) -> Listener:
        """Listen on *host*:*port* and serve each connection with a new protocol from
        *protocol_factory*; return the :class:`~asycamore.tcpsocket.Listener`.

        Every address *host* resolves to is served, on one port, by the one listener
        (``localhost``: ``127.0.0.1`` and ``::1``; see
        :func:`asycamore.tcpsocket.listen_tcp`).  Raises :class:`OSError` naming the
        address if it cannot be resolved or bound.  *options* are the sockets'
        (``backlog``, ``reuse_port``...), the listener's (``max_connections``...) and the
        connections' (water marks, idle timeout, TLS settings: the service's by
        default); see :class:`~asycamore.tcpsocket.ServiceListenKeywords`.

        With *ssl* (a server :class:`ssl.SSLContext`; a client-side one is refused) the
        connections speak TLS: see :doc:`/tls`.  The service's timers run the handshake
        and shutdown timeouts.
        """
        return self._listening(
            tcpsocket.listen_tcp(
                self.dispatcher, protocol_factory, host, port, ssl=ssl, **self._listen(options)
            )
        )

    def listen_unix(
        self,
        protocol_factory: Callable[[], StreamHandler],
        path: str,
        **options: Unpack[ServiceListenKeywords],
    ) -> Listener:
        """Like :meth:`listen_tcp`, on the Unix domain socket *path* (removed again when
        the listener closes)."""
        return self._listening(
            tcpsocket.listen_unix(self.dispatcher, protocol_factory, path, **self._listen(options))
        )

    def listen_socket(
        self,
        protocol_factory: Callable[[], StreamHandler],
        sock: socket.socket | Sequence[socket.socket],
        *,
        ssl: SSLContext | None = None,
        **options: Unpack[ServiceListenKeywords],
    ) -> Listener:
        """Like :meth:`listen_tcp`, on *sock*: a socket, or several (one listener then
        serves them all), already bound and listening -- inherited from a parent
        process, say (see :mod:`asycamore.workers`).

        The listener owns the sockets from then on and closes them when it closes; if
        this raises, the caller still does.
        """
        return self._listening(
            tcpsocket.listen_socket(
                self.dispatcher, protocol_factory, sock, ssl=ssl, **self._listen(options)
            )
        )

    def connect_tcp(
        self,
        protocol_factory: Callable[[], StreamHandler],
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        ssl: SSLContext | bool | None = None,
        server_hostname: str | None = None,
        **options: Unpack[ConnectionKeywords],
    ) -> StreamTransport:
        """Connect to *host*:*port* without blocking; return the transport.

        A protocol from *protocol_factory* hears ``connection_made`` or
        ``connection_failed`` (with an error that names the address).  A host name is
        resolved in a worker thread and its addresses raced with Happy Eyeballs, with
        the service's timers for the 250 ms stagger; *timeout* covers resolution and
        attempts (see :func:`asycamore.tcpsocket.connect_tcp`).

        With *ssl* (an :class:`ssl.SSLContext`, or ``True`` for the default, verifying
        one) the connection speaks TLS, and the transport is a
        :class:`~asycamore.tcpsocket.TLSConnection` (the same API); the service's
        timers run its timeouts.  See :doc:`/tls`.
        """
        return self._connecting(
            options,
            lambda **settings: tcpsocket.connect_tcp(
                self.dispatcher,
                protocol_factory,
                host,
                port,
                timeout=timeout,
                ssl=ssl,
                server_hostname=server_hostname,
                **settings,
            ),
        )

    def connect_unix(
        self,
        protocol_factory: Callable[[], StreamHandler],
        path: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ConnectionKeywords],
    ) -> StreamTransport:
        """Like :meth:`connect_tcp`, to the Unix domain socket at *path*."""
        return self._connecting(
            options,
            lambda **settings: tcpsocket.connect_unix(
                self.dispatcher, protocol_factory, path, timeout=timeout, **settings
            ),
        )

    def _connecting(
        self, keywords: ConnectionKeywords, connect: Callable[..., StreamTransport]
    ) -> StreamTransport:
        """``connect(**settings)`` with the service's settings, and track what it
        returns."""
        settings = self._stream_options(keywords)
        conn = connect(on_close=self.transports.remove_stream, **settings)
        self.transports.add_stream(conn, settings["options"].idle_timeout)  # type: ignore[arg-type]
        return conn

    def start_tls(
        self,
        connection: Connection,
        sslcontext: SSLContext | bool,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        protocol: StreamHandler | None = None,
        received: bytes = b"",
        **options: Unpack[StreamKeywords],
    ) -> TLSConnection:
        """Upgrade the open plain *connection* to TLS (STARTTLS), on either side; the
        service's timers run the timeouts, and the service tracks the returned
        :class:`~asycamore.tcpsocket.TLSConnection` instead of *connection* from now on.

        See :func:`asycamore.tcpsocket.start_tls`: *protocol* (default: the
        connection's; a protocol, not a factory, as with asyncio's ``loop.start_tls``)
        hears ``connection_made`` again, with the TLS transport, once the handshake
        completes."""
        self._check_open()
        merged = self.options.merged(options)
        tls = tcpsocket.start_tls(
            connection,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            protocol=protocol,
            timers=self.timers,
            on_close=self.transports.remove_stream,
            received=received,
            options=merged,
        )
        self.transports.replace_stream(connection, tls, merged.idle_timeout)
        return tls

    # -- processes and pipes -------------------------------------------------------------

    def spawn(
        self,
        protocol_factory: Callable[[], ProcessHandler],
        args: Any,
        *,
        stdin: Any = PIPE,
        stdout: Any = PIPE,
        stderr: Any = PIPE,
        cwd: Any = None,
        env: Any = None,
        **popen_options: Any,
    ) -> Process:
        """Start a child as :class:`subprocess.Popen` would, served by a protocol from
        *protocol_factory* (a :class:`ProcessProtocol`, say); return its
        :class:`~asycamore.processes.Process`.

        See :func:`asycamore.processes.spawn`: the pipes have the service's water marks,
        and the service tracks the child until it has been reaped.  :meth:`stop` sends
        it SIGTERM, then SIGKILL after the stop timeout, and :meth:`serve_forever`
        returns only once it has been reaped; :meth:`close` kills and reaps it.
        """
        check_factory(protocol_factory)
        self._check_open()
        process = processes.spawn(
            self.dispatcher,
            protocol_factory,
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            options=self.options,
            recv_buffer=self._recv_buffer,
            on_exit=self.transports.remove_process,
            **popen_options,
        )
        self.transports.add_process(process)
        return process

    def connect_read_pipe(
        self, protocol_factory: Callable[[], StreamHandler], pipe: Any
    ) -> ReadPipeTransport:
        """Read the existing *pipe* (a file object or a descriptor: a pipe, FIFO, tty or
        socket, ``sys.stdin`` say) with a protocol from *protocol_factory*; return the
        transport, which owns *pipe* and closes it when it closes.

        See :func:`asycamore.processes.connect_read_pipe`: a regular file is refused
        with :class:`ValueError`, and so is what the backend cannot watch, both leaving
        *pipe* open.  The service tracks the transport as a stream.
        """
        check_factory(protocol_factory)
        self._check_open()
        return processes.connect_read_pipe(
            self.dispatcher,
            protocol_factory,
            pipe,
            options=self.options,
            recv_buffer=self._recv_buffer,
            on_close=self.transports.remove_stream,
            on_attached=self._track_pipe,
        )

    def connect_write_pipe(
        self, protocol_factory: Callable[[], StreamHandler], pipe: Any
    ) -> WritePipeTransport:
        """Write to the existing *pipe* (``sys.stdout``, say) for a protocol from
        *protocol_factory*; return the transport (with the service's water marks),
        which owns *pipe*.  As :meth:`connect_read_pipe`, and see
        :func:`asycamore.processes.connect_write_pipe`."""
        check_factory(protocol_factory)
        self._check_open()
        return processes.connect_write_pipe(
            self.dispatcher,
            protocol_factory,
            pipe,
            options=self.options,
            on_close=self.transports.remove_stream,
            on_attached=self._track_pipe,
        )

    def _track_pipe(self, transport: Connection) -> None:
        self.transports.add_stream(transport, None)

    # -- datagram endpoints ------------------------------------------------------------

    def _datagram_options(self, keywords: DatagramKeywords) -> dict[str, Any]:
        """The keywords of a udpsocket function: the caller's, and the service's."""
        self._check_open()
        buffer = self._recv_buffer
        return {
            **keywords,
            "options": self.options,
            "recv_buffer": buffer if buffer.nbytes >= MAX_DATAGRAM_SIZE else None,
            "on_close": self.transports.remove_endpoint,
        }

    def bind_udp(
        self,
        protocol_factory: Callable[[], DatagramHandler],
        host: str | None = "127.0.0.1",
        port: int = 0,
        **options: Unpack[DatagramKeywords],
    ) -> DatagramEndpoint:
        """A bound UDP endpoint on *host*:*port*, served by a protocol from
        *protocol_factory* (see :func:`asycamore.udpsocket.bind_udp`).  Raises
        :class:`OSError` naming the address if it cannot be resolved or bound; the
        water marks default to the service's."""
        endpoint = udpsocket.bind_udp(
            self.dispatcher,
            protocol_factory,
            host,
            port,
            **self._datagram_options(options),
        )
        self.transports.add_endpoint(endpoint)
        return endpoint

    def bind_udp_all(
        self,
        protocol_factory: Callable[[], DatagramHandler],
        host: str | None = "127.0.0.1",
        port: int = 0,
        **options: Unpack[DatagramKeywords],
    ) -> list[DatagramEndpoint]:
        """One bound endpoint per address of *host*, on one port, each served by a new
        protocol from *protocol_factory* (see :func:`asycamore.udpsocket.bind_udp_all`)."""
        endpoints = udpsocket.bind_udp_all(
            self.dispatcher,
            protocol_factory,
            host,
            port,
            **self._datagram_options(options),
        )
        for endpoint in endpoints:
            self.transports.add_endpoint(endpoint)
        return endpoints

    def serve_udp_socket(
        self,
        protocol_factory: Callable[[], DatagramHandler],
        sock: socket.socket,
        **options: Unpack[FlowKeywords],
    ) -> DatagramEndpoint:
        """Like :meth:`bind_udp`, on *sock*: a UDP socket already bound -- made by
        :func:`~asycamore.udpsocket.create_datagram_sockets` in a parent process, say
        (see :mod:`asycamore.workers`).  The endpoint owns the socket from then on; if
        this raises (a closed service, a socket that is not UDP), the caller still
        does."""
        check_factory(protocol_factory)
        self._check_open()
        buffer = self._recv_buffer
        endpoint = DatagramEndpoint(
            self.dispatcher,
            sock,
            protocol_factory(),
            self.options.merged(options),
            recv_buffer=buffer if buffer.nbytes >= MAX_DATAGRAM_SIZE else None,
            on_close=self.transports.remove_endpoint,
            start=False,
        )
        self.transports.add_endpoint(endpoint)
        try:
            endpoint.start()
        except BaseException:
            # The context refused it (start() has closed it, without telling anyone).
            self.transports.remove_endpoint(endpoint)
            raise
        return endpoint

    def connect_udp(
        self,
        protocol_factory: Callable[[], DatagramHandler],
        host: str,
        port: int,
        *,
        local_host: str | None = None,
        local_port: int = 0,
        **options: Unpack[DatagramKeywords],
    ) -> DatagramEndpoint:
        """A UDP endpoint connected to *host*:*port*, served by a protocol from
        *protocol_factory* (see :func:`asycamore.udpsocket.connect_udp`)."""
        endpoint = udpsocket.connect_udp(
            self.dispatcher,
            protocol_factory,
            host,
            port,
            local_host=local_host,
            local_port=local_port,
            **self._datagram_options(options),
        )
        self.transports.add_endpoint(endpoint)
        return endpoint

    # -- what there is ---------------------------------------------------------------------

    def statistics(self) -> ServiceStatistics:
        """A :class:`ServiceStatistics` snapshot of what the service has done.

        Cheap (a few attribute reads), so it may be called as often as wanted, from
        any thread: the counts are plain integers, each read whole.
        """
        counters = self.transports.counters
        dispatch_statistics = getattr(self.dispatcher, "statistics", None)
        return ServiceStatistics(
            connections_open=self.transports.stream_count,
            connections_accepted=counters.connections_accepted,
            connections_closed=counters.connections_closed,
            connections_failed=counters.connections_failed,
            bytes_received=counters.bytes_received,
            bytes_sent=counters.bytes_sent,
            datagrams_received=counters.datagrams_received,
            datagrams_sent=counters.datagrams_sent,
            tls_handshakes=counters.tls_handshakes,
            tls_handshakes_failed=counters.tls_handshakes_failed,
            processes_running=self.transports.process_count,
            processes_exited=self.transports.processes_exited,
            timers_fired=self.timers.fired,
            dispatch=None if dispatch_statistics is None else dispatch_statistics(),
        )

    @property
    def connections(self) -> list[StreamTransport]:
        """A snapshot of the open stream transports (accepted and client), each as its
        protocol sees it: a :class:`~asycamore.tcpsocket.TLSConnection` for TLS."""
        return list(self.transports.streams)

    @property
    def connection_count(self) -> int:
        """How many stream transports are open."""
        return self.transports.stream_count

    @property
    def endpoints(self) -> list[DatagramEndpoint]:
        """A snapshot of the open datagram endpoints."""
        return self.transports.endpoints

    @property
    def listeners(self) -> list[Listener]:
        """The listeners that have not been closed."""
        return self.transports.listeners

    # -- errors, stopping and closing ------------------------------------------------------

    def error_in_handler(self, target: IDispatchTarget, exc: Exception) -> None:
        """The service's error policy for handlers that raise (see rule 7).

        A transport whose protocol raised is logged and aborted with the exception
        (its protocol's ``connection_lost(exc)`` is called); any other target is
        logged, unregistered and closed.
        """
        if isinstance(target, Connection | DatagramEndpoint):
            try:
                _log.error("error in a protocol callback of %r", target, exc_info=exc)
                target.abort(exc)
            except Exception:
                _log.exception("error while handling an error of %r", target)
            return
        super().error_in_handler(target, exc)

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop accepting, let the transports finish, end the loop.

        Closes every listener, calls each transport's protocol's
        ``service_stopping()`` (or closes the transport if it has none; a connect still
        in progress is cancelled, quietly), and aborts the transports still open after
        *timeout* seconds (default :attr:`stop_timeout`).  Child processes get SIGTERM,
        then SIGKILL at the timeout.  :meth:`serve_forever` returns once no transport is
        left and every child has been reaped.  May be called from any thread.
        """
        check_timeout(timeout, "timeout")
        if self._running and not self._in_loop_thread():
            self.call_soon_threadsafe(self.stop, timeout)
            return
        if self._stopping or self._closed:
            return
        self._stopping = True
        if not self.transports.stop(self.stop_timeout if timeout is None else timeout):
            self._schedule_now()  # nothing left to wait for: end the loop now

    def stop_complete(self) -> bool:
        """Whether every transport has closed since :meth:`stop`."""
        return not self.transports

    def stop_reset(self) -> None:
        """The loop stopped running: the stop timer of an unfinished stop goes."""
        self.transports.cancel_stop()

    def abort_remaining(self, exc: BaseException) -> None:
        """Abort every transport still open (a second SIGINT or SIGTERM)."""
        self.transports.abort_all(exc)

    def close(self) -> None:
        """Close everything at once: listeners, transports (aborted), child processes
        (their pipes closed, killed and reaped before this returns: ``process_exited``
        is still called), the wake-up socket and the dispatch context if the service
        created it.  Idempotent.

        Called from a callback or handler while :meth:`serve_forever` runs, it also
        ends the loop: ``serve_forever`` returns normally after the current round.
        """
        if self._closed:
            return
        self.transports.close_listeners()
        self.transports.abort_all(ConnectionAbortedError("the service was closed"))
        self.transports.close_processes()
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.transports.stream_count} connections"
        return f"<Service {self.dispatcher.name} {state}>"
