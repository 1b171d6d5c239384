"""``asycamore echo``: a TCP (or UDP) echo service built on :mod:`asycamore.servicemodel`.

TCP: every byte received is written back; when the peer half-closes, what is buffered
is sent and the connection is closed.  Memory stays bounded when a peer sends without
reading: the connection stops reading while its write buffer is above the high-water
mark.  UDP (``udp=True``): every datagram is sent back to its sender, byte for byte,
from the socket it arrived on.

The host is served on every address it names (``localhost``: ``127.0.0.1`` and
``::1``; ``""``: every interface of both families), all on one port.  An IPv6 address
may be written in brackets (``[::1]``), and is printed that way.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

from .errors import UsageError
from .servicemodel import DatagramProtocol, Protocol, Service
from .tcpsocket import Connection
from .udpsocket import DatagramEndpoint

__all__ = ["DatagramEchoProtocol", "EchoProtocol", "format_address", "parse_host", "serve_echo"]

STOP_TIMEOUT = 2.0
"""Seconds the echo service lets its connections flush after SIGINT/SIGTERM/SIGHUP."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop the echo service gracefully.  SIGHUP too, as servers commonly
do: a closed terminal stops it cleanly (echo has no configuration to reload).  Other
signals (SIGQUIT, SIGUSR1, ...) keep their default action."""

UDP_SOCKET_BUFFER = 4 * 1024 * 1024
"""``SO_RCVBUF``/``SO_SNDBUF`` of the UDP echo's sockets: a burst of dozens of 64 KiB
datagrams from many senders at once fits (the default holds three); the kernel caps it
at ``net.core.rmem_max``."""


class EchoProtocol(Protocol):
    """Writes back everything it receives (memoryviews of the shared buffer: no copy
    unless the socket cannot take the data at once)."""

    __slots__ = ("_write",)

    receive_memoryview = True

    def connection_made(self, transport: Connection) -> None:
        """Remember the transport's ``write`` for the hot path."""
        self.transport = transport
        self._write = transport.write

    def data_received(self, data: bytes) -> None:
        """Echo *data*."""
        self._write(data)


class DatagramEchoProtocol(DatagramProtocol):
    """Sends every datagram back to its sender (a memoryview of the shared buffer:
    no copy unless the socket cannot take it at once)."""

    __slots__ = ("_sendto",)

    receive_memoryview = True

    def connection_made(self, transport: DatagramEndpoint) -> None:
        """Remember the endpoint's ``sendto`` for the hot path."""
        self.transport = transport
        self._sendto = transport.sendto

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Echo *data* to *addr*."""
        self._sendto(data, addr)


def parse_host(text: str) -> str:
    """*text* as a host for the resolver: ``[v6]`` loses its brackets.

    Brackets hold an IPv6 address only (as in URLs, RFC 3986); anything else in
    brackets, or an unbalanced bracket, raises :class:`~asycamore.errors.UsageError`.
    Other malformed hosts are the resolver's to refuse.
    """
    if not (text.startswith("[") or text.endswith("]")):
        return text
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
    try:
        socket.inet_pton(socket.AF_INET6, inner.partition("%")[0])
    except (OSError, ValueError):
        raise UsageError(f"bad address {text!r}: brackets hold an IPv6 address") from None
    return inner


def format_address(address: Any) -> str:
    """``HOST:PORT`` for a socket address, ``[HOST]:PORT`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_to_stderr() -> logging.Handler | None:
    logger = logging.getLogger("asycamore")
    if logger.handlers:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("asycamore echo: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    return handler


def serve_echo(
    backend: str | None = None, host: str = "127.0.0.1", port: int = 0, *, udp: bool = False
) -> int:
    """Serve echo on *host*:*port* until a :data:`STOP_SIGNALS` signal; return the exit
    status.

    TCP, or UDP with *udp*, on every address of *host* (see the module docstring).
    Prints ``listening on HOST:PORT`` -- the first address and the real port, as
    bound -- to stdout once serving.  On a signal, stops accepting, lets the
    connections flush for up to :data:`STOP_TIMEOUT` seconds, closes them and returns
    0.  A bad backend raises a :class:`~asycamore.BackendError`, a bad or busy address
    a :class:`~asycamore.errors.UsageError`.
    """
    handler = _log_to_stderr()
    host = parse_host(host)
    try:
        try:
            service = Service(backend, stop_timeout=STOP_TIMEOUT)
        except OSError as exc:  # EMFILE, for one: no descriptor for the context or waker
            raise UsageError(f"cannot start: {exc.strerror or exc}") from None
        with service:
            try:
                if udp:
                    endpoints = service.bind_udp_all(
                        DatagramEchoProtocol, host, port, socket_buffer_size=UDP_SOCKET_BUFFER
                    )
                    address = endpoints[0].getsockname()
                else:
                    address = service.listen_tcp(EchoProtocol, host, port).address
            except socket.gaierror as exc:
                raise UsageError(f"bad address {host!r}: {exc.strerror}") from None
            except OverflowError as exc:
                raise UsageError(f"bad port {port}: {exc}") from None
            except OSError as exc:
                reason = exc.strerror or str(exc)
                where = format_address((host, port))
                raise UsageError(f"cannot listen on {where}: {reason}") from None
            # Handlers first: a SIGTERM right after the line below must stop us cleanly.
            # They stay (ignoring) until the process has exited: a second signal while
            # it exits must not turn its status 0 into a death by signal.
            with service.signal_handling(STOP_SIGNALS, ignore_afterwards=True):
                print(f"listening on {format_address(address)}", flush=True)
                service.serve_forever()
    finally:
        if handler is not None:
            logging.getLogger("asycamore").removeHandler(handler)
    return 0
