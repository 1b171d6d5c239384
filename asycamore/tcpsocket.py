"""Dispatch targets for stream sockets: listeners, connections and client connects.

This is the transport layer of asycamore.  Its targets work with any dispatch context
(:class:`~asycamore.IDispatchContext`) and keep their interest in it up to date
themselves, calling :meth:`~asycamore.IDispatchContext.modify` only when it changes:

- :class:`Listener` accepts connections in batches on a listening socket (TCP over IPv4
  or IPv6, or a Unix domain socket), with an optional connection limit and a short
  back-off instead of a busy loop when the process runs out of descriptors.
- :class:`Connection` moves bytes between a connected socket and a *handler* (any object
  with the :class:`StreamHandler` callbacks; the ``protocol_factory`` of every function
  here makes one): non-blocking reads into a shared buffer,
  a write buffer with high/low water marks that pauses reading while the peer does not
  keep up, half-close, graceful :meth:`~Connection.close` and :meth:`~Connection.abort`.
- :func:`connect_tcp` / :func:`connect_unix` start a non-blocking connect with an
  optional timeout; the handler hears :meth:`~StreamHandler.connection_made` or
  ``connection_failed(exc)``.  A host name is resolved in a worker thread (the loop
  never blocks) and its addresses are raced with Happy Eyeballs (RFC 8305).
- :func:`listen_tcp` listens on every address a name resolves to (``localhost``:
  ``127.0.0.1`` and ``::1``), with one :class:`Listener`, on one port.
- :class:`TLSConnection` is TLS layered on a connection (``ssl.MemoryBIO``): server
  side with ``listen_tcp(..., ssl=context)``, client side with ``connect_tcp(...,
  ssl=context_or_True)``, and :func:`start_tls` to upgrade an open connection
  (STARTTLS).  Both satisfy :class:`StreamTransport`, the transport API a protocol
  uses; see :doc:`/tls`.
- :class:`TransportOptions` is the settings of a transport (water marks, TLS timeouts)
  as one checked value; the functions take them as keyword arguments too.  Its
  ``counters``, a :class:`TransportCounters`, is where a service's transports count.
- :class:`~asycamore.timers.Timers` (from :mod:`asycamore.timers`, also importable
  from here) is the timer heap that the listener's back-off and the connect timeout
  use; :class:`asycamore.servicemodel.Service` runs one for you.

This module is the public face of the private ``asycamore._transport`` package, which
holds one module per transport concern (see :doc:`/architecture`).

Everything here is single-threaded: call a target's methods only from the thread that
runs its dispatch context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._transport.base import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HIGH_WATER,
    DEFAULT_LINGER,
    DEFAULT_RECV_BUFFER_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    TransportCounters,
    default_recv_buffer,
)
from ._transport.connect import CONNECTION_ATTEMPT_DELAY, ConnectError, connect_tcp, connect_unix
from ._transport.listener import (
    AcceptKeywords,
    Listener,
    ListenKeywords,
    ListenSocketKeywords,
    ServiceListenKeywords,
    create_listening_socket,
    create_listening_sockets,
    create_unix_listening_socket,
    listen_socket,
    listen_tcp,
    listen_unix,
)
from ._transport.options import (
    DEFAULT_OPTIONS,
    ConnectionKeywords,
    FlowKeywords,
    StreamKeywords,
    TransportOptions,
)
from ._transport.stream import Connection, StreamHandler, StreamTransport
from .lazy import lazy_attributes
from .timers import TimerHandle, Timers

if TYPE_CHECKING:
    from ._transport.tls import TLSConnection, client_context, start_tls, tls_handler_factory

# The TLS names are imported on first use: ssl costs a plain-TCP program some 6 MiB and
# 10 ms at start.
_TLS_NAMES = frozenset({"TLSConnection", "client_context", "start_tls", "tls_handler_factory"})


__getattr__, __dir__ = lazy_attributes(globals(), _TLS_NAMES, "asycamore._transport.tls")


__all__ = [
    "CONNECTION_ATTEMPT_DELAY",
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LINGER",
    "DEFAULT_OPTIONS",
    "DEFAULT_RECV_BUFFER_SIZE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "AcceptKeywords",
    "ConnectError",
    "Connection",
    "ConnectionKeywords",
    "FlowKeywords",
    "ListenKeywords",
    "ListenSocketKeywords",
    "Listener",
    "ServiceListenKeywords",
    "StreamHandler",
    "StreamKeywords",
    "StreamTransport",
    "TLSConnection",
    "TimerHandle",
    "Timers",
    "TransportCounters",
    "TransportOptions",
    "client_context",
    "connect_tcp",
    "connect_unix",
    "create_listening_socket",
    "create_listening_sockets",
    "create_unix_listening_socket",
    "default_recv_buffer",
    "listen_socket",
    "listen_tcp",
    "listen_unix",
    "start_tls",
    "tls_handler_factory",
]
