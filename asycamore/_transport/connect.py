"""Client connects: :func:`connect_tcp` (with Happy Eyeballs) and :func:`connect_unix`.

A numeric host is connected at once, on one socket, exactly as before names were
supported: no thread, no extra object.  A host name goes through :class:`_Eyeballs`:

1. The name is resolved off the loop (:func:`.resolve.resolve_later`), except a
   localhost name, whose addresses are known (:mod:`.resolve`).
2. The addresses are put in RFC 8305 order: the resolver's order (which already
   follows RFC 6724's preferences), with the families interleaved starting with the
   first one's, so a broken family costs one attempt, not all of them.
3. One attempt starts; each further one starts when the previous attempt fails or
   :data:`CONNECTION_ATTEMPT_DELAY` (250 ms) passes without it finishing, whichever
   is first.  The first attempt to connect wins; the others are closed at once.
4. The winning socket becomes the :class:`~.stream.Connection`'s socket
   (:meth:`~.stream.Connection.connect_socket`); if every attempt fails, the handler's
   ``connection_failed`` gets the only error, or a :class:`ConnectError` listing each
   address with its error.

The :class:`~.stream.Connection` exists from the start (so that it can be written to
and closed while connecting, as with a numeric host); it has no socket until one
attempt wins.  Closing it cancels the resolution and every attempt.
"""

from __future__ import annotations

import collections
import errno
import functools
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..arguments import (
    address_error,
    check_factory,
    check_host,
    check_port,
    check_timeout,
    format_address,
)
from ..dispatcher import Events, IDispatchContext
from ..timers import TimerHandle, Timers
from .base import log
from .options import DEFAULT_OPTIONS, FlowKeywords, StreamKeywords, TransportOptions
from .resolve import AddrInfo, Resolution, numeric_addresses, resolve_later
from .stream import Connection, StreamHandler, StreamTransport

if TYPE_CHECKING:
    from ssl import SSLContext

    from typing_extensions import Unpack

__all__ = ["CONNECTION_ATTEMPT_DELAY", "ConnectError", "connect_tcp", "connect_unix"]

CONNECTION_ATTEMPT_DELAY: Final = 0.25
"""Seconds between the starts of two connection attempts (RFC 8305 section 5)."""


class ConnectError(OSError):
    """Every address of a host name was tried and none connected.

    :attr:`attempts` lists ``(address, exception)`` for each attempt, in the order
    they were made, and the message names them all.  :attr:`errno` is the errno the
    attempts share (``ECONNREFUSED`` when every address refused), else ``None``.
    """

    def __init__(self, host: str, port: int, attempts: list[tuple[Any, BaseException]]) -> None:
        codes = {getattr(exc, "errno", None) for _, exc in attempts}
        code = codes.pop() if len(codes) == 1 else None
        listed = "; ".join(f"{format_address(address)}: {exc}" for address, exc in attempts)
        message = f"cannot connect to {host}:{port} ({len(attempts)} addresses tried: {listed})"
        if code is None:
            super().__init__(message)
        else:
            super().__init__(code, message)
        self.attempts = attempts
        """``(address, exception)`` for each attempt, in order."""


def _interleave(infos: list[AddrInfo]) -> list[AddrInfo]:
    """RFC 8305 section 4: alternate the families, starting with the first's."""
    by_family: dict[int, collections.deque[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], collections.deque()).append(info)
    queues = list(by_family.values())  # dicts keep insertion order: first family first
    ordered: list[AddrInfo] = []
    while queues:
        for q in list(queues):
            ordered.append(q.popleft())
            if not q:
                queues.remove(q)
    return ordered


class _Attempt:
    """One connection attempt: a connecting socket, watched for writability."""

    __slots__ = ("_eyeballs", "_fileno", "address", "sock")

    def __init__(self, eyeballs: _Eyeballs, sock: socket.socket, address: Any) -> None:
        self._eyeballs = eyeballs
        self.sock = sock
        self.address = address
        self._fileno = sock.fileno()

    def fileno(self) -> int:
        return self._fileno

    def handle_read_event(self) -> None:
        """Never called: an attempt only waits for writability."""

    def handle_write_event(self) -> None:
        """The connect finished: tell the race."""
        self._eyeballs.attempt_finished(self)

    def close(self) -> None:
        """The dispatch error policy dropped the attempt: it failed."""
        self._eyeballs.attempt_failed(
            self, ConnectionAbortedError(errno.ECONNABORTED, "attempt dropped")
        )


class _Eyeballs:
    """The pending work of a connect to a host name (see the module docstring)."""

    def __init__(
        self,
        dispatcher: IDispatchContext,
        conn: Connection,
        host: str,
        port: int,
        timeout: float | None,
        timers: Timers | None,
    ) -> None:
        self._context = dispatcher
        self._conn: Connection | None = conn
        self._host = host
        self._port = port
        self._timers = timers
        self._resolution: Resolution | None = None
        self._queue: collections.deque[AddrInfo] = collections.deque()
        self._attempts: list[_Attempt] = []
        self._errors: list[tuple[Any, BaseException]] = []
        self._stagger: TimerHandle | None = None
        self._deadline: TimerHandle | None = None
        self._raise_failures = False
        if timeout is not None and timers is not None:
            self._deadline = timers.call_later(timeout, self._timed_out, timeout)

    # -- steps -----------------------------------------------------------------------

    def set_raise_failures(self, on: bool) -> None:
        """While on, a failure of every attempt is raised, not reported."""
        self._raise_failures = on

    def resolve(self) -> None:
        self._resolution = resolve_later(self._context, self._host, self._port, self._resolved)

    def _resolved(self, infos: list[AddrInfo] | None, exc: BaseException | None) -> None:
        self._resolution = None
        if infos is None:
            error = exc if isinstance(exc, OSError) else OSError(f"cannot resolve {self._host!r}")
            self._fail(address_error(error, "connect to", (self._host, self._port)))
            return
        try:
            self.start(infos)
        except Exception as error:  # never leave the connection connecting forever
            self._fail(error)

    def _stagger_over(self) -> None:
        self._stagger = None
        try:
            self._next()
        except Exception as error:
            self._fail(error)

    def start(self, infos: list[AddrInfo]) -> None:
        self._queue.extend(_interleave(infos))
        self._next()

    def _next(self) -> None:
        """Start the next attempt (and arm the stagger timer for the one after)."""
        if self._stagger is not None:
            self._stagger.cancel()
            self._stagger = None
        while self._queue and self._conn is not None:
            family, type_, proto, _, address = self._queue.popleft()
            try:
                sock = socket.socket(family, type_, proto)
            except OSError as exc:
                self._errors.append((address, exc))
                continue
            try:
                sock.setblocking(False)
                err = sock.connect_ex(address)
                if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                    raise OSError(err, os.strerror(err))
                attempt = _Attempt(self, sock, address)
                self._context.register(attempt, Events.WRITE)
            except (OSError, ValueError, KeyError) as exc:  # the dispatcher may refuse the fd
                sock.close()
                self._errors.append((address, exc))
                continue
            log.debug("connect to %s: trying %s", self._host, format_address(address))
            self._attempts.append(attempt)
            if self._queue and self._timers is not None:
                self._stagger = self._timers.call_later(
                    CONNECTION_ATTEMPT_DELAY, self._stagger_over
                )
            return
        if not self._attempts:
            self._fail_all()

    def attempt_finished(self, attempt: _Attempt) -> None:
        try:
            err = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            self.attempt_failed(attempt, exc)
            return
        if err:
            self.attempt_failed(attempt, OSError(err, os.strerror(err)))
            return
        conn = self._conn
        self._drop(attempt, close=False)
        if conn is None:
            attempt.sock.close()
            return
        log.debug("connect to %s: %s won", self._host, format_address(attempt.address))
        try:
            # connect_socket cancels us (closing the other attempts) and calls the
            # handler's connection_made.
            conn.connect_socket(attempt.sock)
        except Exception as exc:
            # As if the connection itself had been the target that raised.
            log.exception("error in connection_made of %r", conn)
            conn.abort(exc)

    def attempt_failed(self, attempt: _Attempt, exc: BaseException) -> None:
        if attempt not in self._attempts:
            return
        self._drop(attempt, close=True)
        self._errors.append((attempt.address, exc))
        if self._conn is None:
            return
        if self._queue:
            self._next()  # a failure starts the next attempt at once (RFC 8305 sec. 5)
        elif not self._attempts:
            self._fail_all()

    # -- endings ---------------------------------------------------------------------

    def _drop(self, attempt: _Attempt, close: bool) -> None:
        self._attempts.remove(attempt)
        try:  # noqa: SIM105
            self._context.unregister(attempt)
        except (KeyError, ValueError):
            pass
        if close:
            attempt.sock.close()

    def _timed_out(self, timeout: float) -> None:
        self._deadline = None
        tried = (
            f" (tried: {', '.join(format_address(a) for a, _ in self._errors)})"
            if self._errors
            else ""
        )
        self._fail(
            TimeoutError(
                errno.ETIMEDOUT, f"connect to {self._host} timed out after {timeout} s{tried}"
            )
        )

    def _fail_all(self) -> None:
        errors = self._errors
        if len(errors) == 1:
            address, exc = errors[0]
            if isinstance(exc, OSError):
                exc = address_error(exc, "connect to", address)
        else:
            exc = ConnectError(self._host, self._port, list(errors))
        if self._raise_failures:
            # Still inside connect_tcp (every address failed at once): raise there,
            # as for a numeric host, rather than call the handler before it returns.
            self.cancel()
            raise exc
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        conn = self._conn
        if conn is not None:
            conn.abort(exc)  # calls cancel() through the connection's release
        self.cancel()

    def cancel(self) -> None:
        """Stop everything: the resolution, the attempts, the timers (idempotent)."""
        self._conn = None
        self._queue.clear()
        if self._resolution is not None:
            self._resolution.cancel()
            self._resolution = None
        for timer in (self._stagger, self._deadline):
            if timer is not None:
                timer.cancel()
        self._stagger = self._deadline = None
        for attempt in list(self._attempts):
            self._drop(attempt, close=True)


def _connect(
    dispatcher: IDispatchContext,
    sock: socket.socket,
    address: Any,
    handler: StreamHandler,
    timeout: float | None,
    timers: Timers | None,
    make: Callable[..., Connection],
) -> Connection:
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise address_error(OSError(err, os.strerror(err)), "connect to", address)
        conn = make(dispatcher, sock, handler)
        conn.start_connect(timeout, timers, address)
    except BaseException:
        sock.close()
        raise
    return conn


def connect_tcp(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    ssl: SSLContext | bool | None = None,
    server_hostname: str | None = None,
    on_close: Callable[[Any], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[StreamKeywords],
) -> StreamTransport:
    """Start a non-blocking TCP connect to *host*:*port*; return the transport.

    A protocol from *protocol_factory* hears ``connection_made`` when the connect
    completes, and if it fails or *timeout* seconds pass first (a timeout needs
    *timers*), its ``connection_failed(exc)`` (a :class:`TimeoutError` for the timeout;
    an error that names the address).  :meth:`~StreamTransport.write` may be called
    meanwhile: the data is sent once connected.  The water marks (and TLS settings)
    are *keywords*, over *options*; *on_close* is called with the transport after its
    protocol heard the end.  Every argument is checked before a socket exists.

    A numeric *host* is connected at once; errors the OS reports at once raise
    :class:`OSError` here.  A host name never blocks the loop: it is resolved in a
    worker thread, the result is delivered through the dispatcher, and the addresses are
    tried with Happy Eyeballs (RFC 8305): families alternated, a new attempt every 250
    ms (:data:`CONNECTION_ATTEMPT_DELAY`) or as soon as the previous one fails, the
    first to connect wins and the others are closed.  Without *timers* there is no
    stagger: each address is tried when the previous one has failed.  A resolution
    failure reaches ``connection_failed`` as the :class:`socket.gaierror`; if every
    address fails, it gets the error of the only attempt or a :class:`ConnectError`
    listing every attempt's.  ``localhost`` is ``127.0.0.1`` and ``::1`` without
    asking the resolver (RFC 6761), raced the same way, with no thread; if every one
    of its addresses fails inside ``connect()`` itself, that is raised here, as for a
    number.

    With *ssl* (an :class:`ssl.SSLContext`, or ``True`` for
    :func:`ssl.create_default_context`: certificates verified, host names checked) the
    connection speaks TLS and a :class:`TLSConnection` is returned (it has the same
    API): the protocol hears ``connection_made`` once the handshake completes,
    ``connection_failed(exc)`` if the connect or the handshake fails
    (:class:`ssl.SSLCertVerificationError` for a certificate that does not verify).
    *server_hostname* (default *host*) is sent for SNI and checked against the
    certificate; the handshake timeout counts from the TCP connect, and the TLS
    timeouts need *timers* (or ``None``).
    """
    check_factory(protocol_factory)
    check_host(host, optional=False)
    port = check_port(port)
    check_timeout(timeout, "timeout")
    if server_hostname is not None and not isinstance(server_hostname, str):
        raise TypeError(f"server_hostname must be a str or None, not {server_hostname!r}")
    options = options.merged(keywords)
    sslcontext = None
    if ssl is not None and ssl is not False:
        # Imported here: ssl costs a plain-TCP program some 6 MiB and 10 ms at start.
        from .tls import TLSConnection, check_tls_timers, client_context

        # Every TLS argument is checked before a socket exists.
        sslcontext = client_context(ssl)
        check_tls_timers(timers, options)
        if server_hostname is None:
            server_hostname = host
    if timeout is not None and timers is None:
        raise ValueError("a connect timeout needs timers")
    protocol = protocol_factory()
    make = functools.partial(
        Connection,
        options=options,
        recv_buffer=recv_buffer,
        on_close=None if sslcontext is not None else on_close,
        timers=timers,
        start=False,
    )
    conn = _connect_tcp(dispatcher, protocol, host, port, timeout, timers, make)
    if sslcontext is None:
        return conn
    try:
        return TLSConnection(
            conn,
            protocol,
            sslcontext,
            options,
            server_side=False,
            server_hostname=server_hostname,
            timers=timers,
            on_close=on_close,
        )
    except BaseException:
        conn.abort()
        raise


def _connect_tcp(
    dispatcher: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    timeout: float | None,
    timers: Timers | None,
    make: Callable[..., Connection],
) -> Connection:
    """The plain connect of :func:`connect_tcp` (TLS, if asked for, goes on top)."""
    infos = numeric_addresses(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    if infos is not None and len(infos) == 1:
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        return _connect(dispatcher, sock, address, handler, timeout, timers, make)
    conn = make(dispatcher, None, handler)
    eyeballs = _Eyeballs(dispatcher, conn, host, port, timeout, timers)
    conn.start_resolving(eyeballs)
    if infos is None:
        try:
            eyeballs.resolve()
        except BaseException:
            # No socket pair or no thread (EMFILE...): raised here, as for a number.
            eyeballs.cancel()
            raise
    else:
        # A localhost name: its addresses are known at once, and so may be their errors.
        eyeballs.set_raise_failures(True)
        try:
            eyeballs.start(infos)
        finally:
            eyeballs.set_raise_failures(False)
    return conn


def connect_unix(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    path: str,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    on_close: Callable[[Any], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[FlowKeywords],
) -> StreamTransport:
    """Like :func:`connect_tcp`, to the Unix domain socket at *path*."""
    check_factory(protocol_factory)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {path!r}")
    check_timeout(timeout, "timeout")
    if timeout is not None and timers is None:
        raise ValueError("a connect timeout needs timers")
    options = options.merged(keywords)
    make = functools.partial(
        Connection,
        options=options,
        recv_buffer=recv_buffer,
        on_close=on_close,
        timers=timers,
        start=False,
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return _connect(dispatcher, sock, path, protocol_factory(), timeout, timers, make)
