"""Listening sockets and :class:`Listener`, which accepts connections for handlers."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, TypedDict

from ..arguments import address_error, check_factory, check_host, check_port, check_timeout
from ..dispatcher import Events, IDispatchContext
from ..timers import TimerHandle, Timers
from .base import DEFAULT_BACKLOG, EVENTS, READ, log
from .binding import bind_every_address
from .options import DEFAULT_OPTIONS, ConnectionKeywords, StreamKeywords, TransportOptions
from .resolve import resolve
from .stream import Connection, StreamHandler

if TYPE_CHECKING:
    from ssl import SSLContext

    from typing_extensions import Unpack

__all__ = [
    "AcceptKeywords",
    "ListenKeywords",
    "ListenSocketKeywords",
    "Listener",
    "ServiceListenKeywords",
    "bind_every_address",
    "create_listening_socket",
    "create_listening_sockets",
    "create_unix_listening_socket",
    "listen_socket",
    "listen_tcp",
    "listen_unix",
    "remove_socket_file",
]

# socket.socket.accept() is a Python wrapper around this C method: it reads the
# listening socket's family and type through properties that convert them to IntEnums,
# and checks the default timeout -- about ten Python-level calls per connection, a good
# share of what the accept-echo-close path costs over a bare selectors loop.  The
# listener calls the C method and builds the socket from ints it read once.  (On Linux
# the accepted descriptor is blocking and close-on-exec, exactly as with accept().)
# Only for a plain socket.socket: a subclass's accept() (ssl.SSLSocket's, a test's) is
# honoured.
_accept = socket.socket._accept  # type: ignore[attr-defined]

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


class _Throttle:
    """Log a recurring warning at most once per *interval* seconds, with a count."""

    __slots__ = ("_interval", "_next", "_suppressed")

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._suppressed = 0
        self._next = now + self._interval
        log.warning(message, *args)


def _socket_kind(sock: socket.socket) -> tuple[int, int, int] | None:
    """What `_accept` needs to build an accepted socket: family, type and protocol as
    ints, for a plain socket.socket; ``None`` for a subclass, whose accept() is used."""
    if type(sock) is not socket.socket:
        return None
    return int(sock.family), int(sock.type), sock.proto


class _Acceptor:
    """The dispatch target of a :class:`Listener`'s second and further sockets.

    The listener itself is the target of its first socket (so the common, one-socket
    case has no indirection); each further socket gets one of these, which accepts
    through the listener: limits, counts and callbacks are the listener's, shared by
    all of its addresses.
    """

    __slots__ = ("_fileno", "_kind", "_listener", "sock")

    def __init__(self, listener: Listener, sock: socket.socket) -> None:
        self._listener = listener
        self.sock = sock
        self._kind = _socket_kind(sock)
        sock.setblocking(False)
        self._fileno = sock.fileno()

    def fileno(self) -> int:
        return self._fileno

    def handle_read_event(self) -> None:
        self._listener._accept_from(self.sock, self._kind)

    def handle_write_event(self) -> None:
        """Never called: registered for reading only."""

    def close(self) -> None:
        """The dispatch error policy dropped this socket: close the whole listener."""
        self._listener.close()


class Listener:
    """Listening sockets as a dispatch target: accepts connections for handlers.

    *sock* is one listening socket or a sequence of them: one listener then serves
    every address a name resolves to (:func:`listen_tcp`), with one connection count,
    one limit and one :meth:`close`.  :attr:`sock`, :attr:`address` and :attr:`port`
    are the first socket's; :attr:`sockets` and :attr:`addresses` are all of them.

    For each accepted socket, ``handler_factory()`` makes a handler and a
    :class:`Connection` is started with it, with *options* (a
    :class:`~asycamore.tcpsocket.TransportOptions`), reading into *recv_buffer*.
    Up to *accept_batch* connections are accepted per readable event.

    - ``ECONNABORTED`` and the other errors that concern a single pending connection are
      skipped.
    - ``EMFILE``/``ENFILE`` (and ``ENOBUFS``/``ENOMEM``): the listener stops accepting
      for *backoff* seconds (the pending connections wait in the kernel's backlog)
      instead of spinning on a socket that stays readable, logs a warning on logger
      ``"asycamore"`` (once per episode, at most every 30 s), then tries again.  The
      resume needs *timers*; it also happens early when one of the listener's own
      connections closes.
    - A connection the dispatcher refuses (the ``select`` backend refuses descriptors at or
      above ``FD_SETSIZE``) is closed and logged; the listener goes on.
    - With *max_connections*, the listener stops accepting while that many of its
      connections are open.

    *on_connection* is called with each new connection before its handler's
    ``connection_made``, *on_connection_closed* after its ``connection_lost``.
    *socket_file*, if given, is removed when the listener closes (the file of a Unix
    domain socket: see :func:`listen_unix`).
    """

    def __init__(
        self,
        dispatcher: IDispatchContext,
        sock: socket.socket | Sequence[socket.socket],
        handler_factory: Callable[[], StreamHandler],
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        timers: Timers | None = None,
        max_connections: int | None = None,
        accept_batch: int = 64,
        backoff: float = 0.25,
        on_connection: Callable[[Connection], object] | None = None,
        on_connection_closed: Callable[[Connection], object] | None = None,
        socket_file: str | None = None,
        recv_buffer: memoryview | None = None,
    ) -> None:
        check_factory(handler_factory, "handler_factory")
        if max_connections is not None:
            _check_count(max_connections, "max_connections")
        _check_count(accept_batch, "accept_batch")
        check_timeout(backoff, "backoff", optional=False)
        socks = [sock] if isinstance(sock, socket.socket) else list(sock)
        if not socks:
            raise ValueError("a listener needs at least one socket")
        sock = socks[0]
        self._context = dispatcher
        self._sock = sock
        sock.setblocking(False)
        self._fileno = sock.fileno()
        self._more = [_Acceptor(self, more) for more in socks[1:]]
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
        # Made once: a call spelling out the keyword arguments (and unpacking the
        # options) costs about half a microsecond more per connection, and a new bound
        # method for on_close each time.
        self._new_connection: Callable[[socket.socket, StreamHandler], Connection]
        self._new_connection = functools.partial(
            Connection,
            dispatcher,
            options=options,
            recv_buffer=recv_buffer,
            on_close=self._connection_closed,
            timers=timers,
            start=False,
        )
        self._counters = options.counters
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._kind = _socket_kind(sock)
        self._count = 0
        self._events = 0
        self._closed = False
        self._at_limit = False
        self._backing_off = False
        self._episode = False
        self._resume_timer: TimerHandle | None = None
        self._refused = _Throttle()
        self._exhaustion_log = _Throttle(30.0)
        self._socket_file = socket_file
        self.accepted = 0
        """How many connections were accepted and started."""
        self.refused = 0
        """How many accepted connections the dispatcher refused (FD_SETSIZE)."""
        dispatcher.register(self, Events.READ)
        try:
            for acceptor in self._more:
                dispatcher.register(acceptor, Events.READ)
        except BaseException:
            for acceptor in self._more:
                with contextlib.suppress(KeyError, ValueError):
                    dispatcher.unregister(acceptor)
            dispatcher.unregister(self)
            raise
        self._events = READ

    # -- the dispatch target ---------------------------------------------------------------------

    def fileno(self) -> int:
        """The listening socket's descriptor (``-1`` once closed)."""
        return self._fileno

    def handle_read_event(self) -> None:
        """Accept up to :attr:`accept_batch` pending connections."""
        self._accept_from(self._sock, self._kind)

    def _accept_from(self, listening: socket.socket, kind: tuple[int, int, int] | None) -> None:
        new_socket = socket.socket
        limit = self.max_connections
        for _ in range(self.accept_batch):
            if limit is not None and self._count >= limit:
                self._at_limit = True
                self._set_events(0)
                return
            try:
                if kind is None:
                    sock, _address = listening.accept()
                else:
                    fd, _address = _accept(listening)
                    sock = new_socket(*kind, fd)
            except (BlockingIOError, InterruptedError):
                if self._episode:
                    # The backlog is drained without running out: the episode is over.
                    self._episode = False
                    log.info("accepting connections again on %s", self._where())
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
    def sockets(self) -> list[socket.socket]:
        """Every listening socket, the first one first."""
        return [self._sock, *(acceptor.sock for acceptor in self._more)]

    @property
    def address(self) -> Any:
        """The address the (first) socket is bound to (``getsockname()``)."""
        return self._sock.getsockname()

    @property
    def addresses(self) -> list[Any]:
        """The address of every socket (``getsockname()``), the first one first."""
        return [sock.getsockname() for sock in self.sockets]

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
        return self._events == READ

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
        for acceptor in self._more:
            with contextlib.suppress(KeyError, ValueError):
                self._context.unregister(acceptor)
            acceptor.sock.close()
        self._events = 0
        self._sock.close()
        self._fileno = -1
        path = self._socket_file
        if path is not None:
            self._socket_file = None
            remove_socket_file(path)

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
            self._context.modify(self, EVENTS[events])
            for acceptor in self._more:
                self._context.modify(acceptor, EVENTS[events])
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
            conn = self._new_connection(sock, handler)
        except Exception:
            log.exception("cannot create a handler for a connection on %s", self._where())
            sock.close()
            return
        if self._counters is not None:
            # Counted before attach: one the dispatcher refuses is closed at once, and
            # counted closed.
            self._counters.connections_accepted += 1
        try:
            conn.attach()
        except (ValueError, KeyError) as exc:
            self.refused += 1
            self._refused.warning("closing a new connection: %s", exc)
            return
        self._count += 1
        self.accepted += 1
        try:
            if self.on_connection is not None:
                self.on_connection(conn)
            conn.start()
        except Exception as exc:
            log.exception("error in connection_made of %r", conn)
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
            self._set_events(READ)


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")


def remove_socket_file(path: str) -> None:
    """Remove *path* if it is a socket file (a stale Unix socket); ignore errors."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


class ListenSocketKeywords(TypedDict, total=False):
    """The keyword arguments that make listening sockets."""

    family: int
    """``socket.AF_INET`` or ``AF_INET6`` to listen on one family only (default: any)."""
    backlog: int
    """The ``listen()`` backlog (default :data:`DEFAULT_BACKLOG`)."""
    reuse_address: bool
    """Set ``SO_REUSEADDR`` (default true: a restarted server can bind at once)."""
    reuse_port: bool
    """Set ``SO_REUSEPORT`` (several processes on one port)."""


class AcceptKeywords(TypedDict, total=False):
    """The keyword arguments of a :class:`Listener` that shape accepting."""

    max_connections: int | None
    """Stop accepting while this many connections are open."""
    accept_batch: int
    """Connections accepted per readable event, at most."""
    backoff: float
    """Seconds to stop accepting after ``EMFILE``/``ENFILE``."""


class ListenKeywords(ListenSocketKeywords, AcceptKeywords, StreamKeywords, total=False):
    """The keyword arguments of :func:`listen_tcp`: sockets, accepting, streams."""


class ServiceListenKeywords(ListenSocketKeywords, AcceptKeywords, ConnectionKeywords, total=False):
    """The keyword arguments of a service's ``listen_*``: :class:`ListenKeywords`
    and the idle timeout."""


_SOCKET_KEYWORDS: Final = frozenset(ListenSocketKeywords.__annotations__)
_ACCEPT_KEYWORDS: Final = frozenset(AcceptKeywords.__annotations__)


def _split(keywords: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """*keywords* as the sockets', the listener's and the streams'."""
    sockets: dict[str, Any] = {}
    accept: dict[str, Any] = {}
    streams: dict[str, Any] = {}
    for name, value in keywords.items():
        if name in _SOCKET_KEYWORDS:
            sockets[name] = value
        elif name in _ACCEPT_KEYWORDS:
            accept[name] = value
        else:
            streams[name] = value
    return sockets, accept, streams


def create_listening_socket(
    host: str | None = "127.0.0.1",
    port: int = 0,
    **socket_options: Unpack[ListenSocketKeywords],
) -> socket.socket:
    """A non-blocking TCP socket bound to the first address of *host*:*port* and
    listening (:func:`create_listening_sockets` listens on every address).

    *host* is resolved with :func:`socket.getaddrinfo` (``None`` or ``""``: all
    interfaces).  ``SO_REUSEADDR`` is set unless *reuse_address* is false;
    ``SO_REUSEPORT`` only with *reuse_port*.  Raises :class:`OSError` that names the
    address (:class:`socket.gaierror` for a bad address) on failure.
    """
    return _listening_sockets(host, port, socket_options, every=False)[0]


def create_listening_sockets(
    host: str | None = "127.0.0.1",
    port: int = 0,
    **socket_options: Unpack[ListenSocketKeywords],
) -> list[socket.socket]:
    """Non-blocking TCP sockets listening on every address *host* resolves to.

    Like :func:`create_listening_socket`, but every address gets its socket, all on
    the same port (see :func:`bind_every_address`): ``localhost`` is ``127.0.0.1``
    and ``::1``, ``None`` or ``""`` is ``0.0.0.0`` and ``::``.  Resolution of a name
    blocks (this runs when a service starts); a numeric address does not.
    """
    return _listening_sockets(host, port, socket_options, every=True)


def _listening_sockets(
    host: str | None, port: int, socket_options: ListenSocketKeywords, every: bool
) -> list[socket.socket]:
    reuse_address = socket_options.get("reuse_address", True)
    reuse_port = socket_options.get("reuse_port", False)
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not supported on this platform")
    check_host(host)
    port = check_port(port)
    family = socket_options.get("family", socket.AF_UNSPEC)
    try:
        infos = resolve(host or None, port, family, socket.SOCK_STREAM, socket.AI_PASSIVE)
    except OSError as exc:
        raise address_error(exc, "listen on", (host, port)) from None

    def setup(sock: socket.socket) -> None:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    socks = bind_every_address(infos if every else infos[:1], port, setup, "listen on")
    try:
        for sock in socks:
            sock.listen(socket_options.get("backlog", DEFAULT_BACKLOG))
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def create_unix_listening_socket(path: str, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A non-blocking Unix domain stream socket bound to *path* and listening.

    A stale socket file at *path* is removed first (any other kind of file is left
    alone, and ``bind`` fails).
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {path!r}")
    remove_socket_file(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            raise address_error(exc, "listen on", path) from None
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    ssl: SSLContext | None = None,
    timers: Timers | None = None,
    on_connection: Callable[[Any], object] | None = None,
    on_connection_closed: Callable[[Any], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[ListenKeywords],
) -> Listener:
    """Listen on every address of *host*:*port*; return the :class:`Listener`,
    already registered in *dispatcher*.

    ``localhost`` listens on ``127.0.0.1`` and ``::1``, ``None`` or ``""`` on every
    interface of both families, a name on each address it resolves to -- all on one
    port, with one listener (see :func:`create_listening_sockets`).  Each connection
    gets a new protocol from *protocol_factory*.  *keywords* are the sockets' (see
    :class:`ListenSocketKeywords`), the :class:`Listener`'s (:class:`AcceptKeywords`)
    and the streams' (the water marks and TLS settings, over *options*).

    Every argument is checked before anything is opened; a failure to resolve or
    bind raises an :class:`OSError` that names the address.

    With *ssl*, a server :class:`ssl.SSLContext` holding the certificate chain and key,
    every accepted connection speaks TLS (see :func:`tls_handler_factory`): the
    protocol hears ``connection_made`` with a :class:`TLSConnection` once the handshake
    completes, and *on_connection*/*on_connection_closed* see that TLS connection.  A
    client that fails the handshake or does not finish it within ``handshake_timeout``
    seconds is dropped (its protocol hears ``handshake_failed(exc)`` if it has one).
    The TLS timeouts need *timers* (or ``handshake_timeout=None, shutdown_timeout=None``).
    """
    check_factory(protocol_factory)
    socket_options, accept, streams = _split(keywords)
    options = options.merged(streams)  # checked before a socket exists
    if ssl is not None:
        from .tls import check_tls_timers, server_context

        server_context(ssl)
        check_tls_timers(timers, options)
    socks = create_listening_sockets(host, port, **socket_options)
    try:
        return listen_socket(
            dispatcher,
            protocol_factory,
            socks,
            ssl=ssl,
            timers=timers,
            on_connection=on_connection,
            on_connection_closed=on_connection_closed,
            recv_buffer=recv_buffer,
            options=options,
            **accept,
        )
    except BaseException:
        for sock in socks:
            sock.close()
        raise


def listen_unix(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    path: str,
    *,
    timers: Timers | None = None,
    on_connection: Callable[[Any], object] | None = None,
    on_connection_closed: Callable[[Any], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[ListenKeywords],
) -> Listener:
    """Listen on the Unix domain socket *path*, like :func:`listen_tcp` (of the
    socket keywords only ``backlog`` applies); the socket file is removed again when
    the listener is closed."""
    check_factory(protocol_factory)
    socket_options, accept, streams = _split(keywords)
    options = options.merged(streams)  # checked before a socket exists
    sock = create_unix_listening_socket(
        path, backlog=socket_options.get("backlog", DEFAULT_BACKLOG)
    )
    try:
        return listen_socket(
            dispatcher,
            protocol_factory,
            sock,
            timers=timers,
            on_connection=on_connection,
            on_connection_closed=on_connection_closed,
            socket_file=path,
            recv_buffer=recv_buffer,
            options=options,
            **accept,
        )
    except BaseException:
        sock.close()
        remove_socket_file(path)
        raise


def listen_socket(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    sock: socket.socket | Sequence[socket.socket],
    *,
    ssl: SSLContext | None = None,
    timers: Timers | None = None,
    on_connection: Callable[[Any], object] | None = None,
    on_connection_closed: Callable[[Any], object] | None = None,
    socket_file: str | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[ListenKeywords],
) -> Listener:
    """A :class:`Listener` on *sock*: one socket or several, already bound and
    listening (:func:`listen_tcp` and :func:`listen_unix` make theirs, a parent process
    may have made them for its workers).  Everything else is as for :func:`listen_tcp`
    (the socket keywords do not apply).  The listener owns the sockets from then on;
    if this raises, the caller still does."""
    check_factory(protocol_factory)
    _, accept, streams = _split(keywords)
    options = options.merged(streams)
    handler_factory = protocol_factory
    if ssl is not None:
        # Imported here: ssl costs a plain-TCP server some 6 MiB and 10 ms at start.
        from .tls import tls_handler_factory

        handler_factory = tls_handler_factory(
            protocol_factory,
            ssl,
            options,
            timers=timers,
            on_connection=on_connection,
            on_connection_closed=on_connection_closed,
        )
        on_connection = on_connection_closed = None  # the TLS layer's business now
    return Listener(
        dispatcher,
        sock,
        handler_factory,
        options,
        timers=timers,
        on_connection=on_connection,
        on_connection_closed=on_connection_closed,
        socket_file=socket_file,
        recv_buffer=recv_buffer,
        **accept,
    )
