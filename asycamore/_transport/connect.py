"""Client connects: :func:`connect_tcp` and :func:`connect_unix`."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from ..dispatcher import IDispatchContext
from ..timers import Timers
from .stream import Connection, StreamHandler

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
