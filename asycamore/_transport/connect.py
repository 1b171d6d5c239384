"""Client connects: :func:`connect_tcp` and :func:`connect_unix`."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Literal, overload

from ..dispatcher import IDispatchContext
from ..timers import Timers
from .stream import Connection, StreamHandler
from .tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    SSLContext,
    TLSConnection,
    check_tls_options,
    client_context,
)

__all__ = ["connect_tcp", "connect_unix"]


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
        conn = Connection(context, sock, handler, timers=timers, start=False, **options)
        conn.start_connect(timeout, timers)
    except BaseException:
        sock.close()
        raise
    return conn


@overload
def connect_tcp(
    context: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    ssl: Literal[False] | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
    strict_eof: bool = False,
    **options: Any,
) -> Connection: ...


@overload
def connect_tcp(
    context: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    ssl: SSLContext | Literal[True],
    server_hostname: str | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
    strict_eof: bool = False,
    **options: Any,
) -> TLSConnection: ...


@overload
def connect_tcp(
    context: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    ssl: SSLContext | bool | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
    strict_eof: bool = False,
    **options: Any,
) -> Connection | TLSConnection: ...


def connect_tcp(
    context: IDispatchContext,
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    timers: Timers | None = None,
    ssl: SSLContext | bool | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
    strict_eof: bool = False,
    **options: Any,
) -> Connection | TLSConnection:
    """Start a non-blocking TCP connect to *host*:*port*; return the connection.

    The connection is registered at once; when the connect completes the handler's
    ``connection_made`` is called, and if it fails or *timeout* seconds pass first (a
    timeout needs *timers*), its ``connection_failed(exc)`` is (with a
    :class:`TimeoutError` for the timeout).  :meth:`Connection.write` and
    :meth:`Connection.write_eof` may be called meanwhile: the data is sent once
    connected.  *options* are passed to :class:`Connection`.

    With *ssl* (an :class:`ssl.SSLContext`, or ``True`` for
    :func:`ssl.create_default_context`: certificates verified, host names checked) the
    connection speaks TLS and a :class:`TLSConnection` is returned: the handler hears
    ``connection_made`` once the handshake completes, ``connection_failed(exc)`` if the
    connect or the handshake fails (:class:`ssl.SSLCertVerificationError` for a
    certificate that does not verify).  *server_hostname* (default *host*) is sent for
    SNI and checked against the certificate; *handshake_timeout* (counted from the TCP
    connect), *shutdown_timeout* and *strict_eof* are :class:`TLSConnection`'s, and the
    timeouts need *timers* (or ``None``).

    *host* is resolved with a blocking :func:`socket.getaddrinfo` (instant for a
    numeric address); resolution errors and errors the OS reports at once raise
    :class:`OSError` here.
    """
    sslcontext = None
    if ssl is not None and ssl is not False:
        # Every TLS argument is checked before a socket exists.
        sslcontext = client_context(ssl)
        check_tls_options(timers, handshake_timeout, shutdown_timeout)
        if server_hostname is None:
            server_hostname = host
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    conn = _connect(context, sock, address, handler, timeout, timers, options)
    if sslcontext is None:
        return conn
    try:
        return TLSConnection(
            conn,
            handler,
            sslcontext,
            server_side=False,
            server_hostname=server_hostname,
            timers=timers,
            handshake_timeout=handshake_timeout,
            shutdown_timeout=shutdown_timeout,
            strict_eof=strict_eof,
        )
    except BaseException:
        conn.abort()
        raise


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
