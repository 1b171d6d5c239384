"""``asycamore echo``: a TCP, TLS or UDP echo service on :mod:`asycamore.servicemodel`.

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

import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .arguments import format_address
from .errors import UsageError
from .servicemodel import DatagramProtocol, Protocol, Service, ServiceStatistics
from .tcpsocket import StreamTransport
from .udpsocket import DatagramEndpoint

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DatagramEchoProtocol",
    "EchoProtocol",
    "format_address",
    "parse_host",
    "serve_echo",
    "statistics_line",
    "tls_server_context",
]

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

    # No __slots__: data_received becomes an instance attribute in connection_made.
    receive_memoryview = True

    def connection_made(self, transport: StreamTransport) -> None:
        """Make the transport's ``write`` this protocol's ``data_received``.

        A :class:`~asycamore.tcpsocket.Connection` (and a TLS one) looks
        ``data_received`` up again after this call, so it then calls ``write``
        directly: one Python call per echoed message fewer.  A subclass that overrides
        :meth:`data_received` keeps its own.
        """
        self.transport = transport
        if type(self).data_received is EchoProtocol.data_received:
            self.data_received = transport.write  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        """Echo *data*."""
        transport = self.transport
        assert transport is not None, "data before connection_made"
        transport.write(data)


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


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
    raise _EncryptedKey


def tls_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` for TLS 1.2 and later with *cert_file* (a PEM
    certificate chain) and *key_file* (its PEM private key, not encrypted).

    Client-initiated renegotiation is refused (a CPU cost a client could impose at
    will).  A missing, unreadable, malformed or mismatched file raises
    :class:`~asycamore.errors.UsageError` with one line that says which and why.
    """
    import ssl  # here: a plain-TCP echo does not pay for it at start

    for what, path in (("certificate", cert_file), ("key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from None
    try:
        # Parses the certificates alone, so that a bad file is named as such.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except (ssl.SSLError, ValueError):
        raise UsageError(f"the TLS certificate {cert_file!r} is not a PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKey:
        raise UsageError(
            f"the TLS key {key_file!r} is encrypted (give an unencrypted key)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            # (The second: a key of another type than the certificate's.)
            message = f"the TLS certificate {cert_file!r} does not match the key {key_file!r}"
        else:
            message = f"the TLS key {key_file!r} is not a PEM private key"
        raise UsageError(message) from None
    return context


def _fields(stats: object, prefix: str = "") -> Iterator[str]:
    for field in dataclasses.fields(stats):  # type: ignore[arg-type]
        value = getattr(stats, field.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{field.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{field.name}={value:.6f}"
        elif isinstance(value, int):
            yield f"{prefix}{field.name}={value}"
        # (None and tuples -- no dispatch statistics, no slowest handler yet -- are left out.)


def statistics_line(stats: ServiceStatistics) -> str:
    """*stats* as the one line ``--stats-interval`` prints: ``name=value`` pairs, the
    fields of :class:`~asycamore.servicemodel.ServiceStatistics` in order, then those of
    its ``dispatch`` as ``dispatch.NAME`` (seconds with six decimals)."""
    return " ".join(_fields(stats))


def _print_statistics(service: Service, prefix: str) -> None:
    print(f"{prefix}{statistics_line(service.statistics())}", file=sys.stderr, flush=True)


def _serve_metrics(service: Service, host: str, port: int) -> Any:
    """Start prometheus_client's HTTP server for *service* on *host*:*port*; return
    the server (a UsageError if the extra is missing or the port cannot be bound)."""
    from .metrics import MetricsUnavailable, ServiceCollector

    try:
        collector = ServiceCollector(service)
    except MetricsUnavailable as exc:
        raise UsageError(f"--metrics-port: {exc}") from None
    from prometheus_client import CollectorRegistry, start_http_server

    # A registry of our own: only the service's metrics, not the process's defaults.
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot serve metrics on {format_address((host, port))}: {reason}"
        ) from None
    print(
        f"asycamore echo: metrics on http://{format_address(server.server_address)}/metrics",
        file=sys.stderr,
        flush=True,
    )
    return server


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


def _bind_error(exc: OSError | OverflowError, host: str, port: int) -> UsageError:
    """The one line a bad or busy address deserves."""
    if isinstance(exc, socket.gaierror):
        return UsageError(f"bad address {host!r}: {exc.strerror}")
    if isinstance(exc, OverflowError):
        return UsageError(f"bad port {port}: {exc}")
    reason = exc.strerror or str(exc)
    return UsageError(f"cannot listen on {format_address((host, port))}: {reason}")


def serve_echo(
    backend: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    udp: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    workers: int | None = None,
    stats_interval: float | None = None,
    metrics_port: int | None = None,
) -> int:
    """Serve echo on *host*:*port* until a :data:`STOP_SIGNALS` signal; return the exit
    status.

    TCP, or UDP with *udp*, on every address of *host* (see the module docstring).
    Prints ``listening on HOST:PORT`` -- the first address and the real port, as
    bound -- to stdout once serving.  On a signal, stops accepting, lets the
    connections flush for up to :data:`STOP_TIMEOUT` seconds, closes them and returns
    0.  A bad backend raises a :class:`~asycamore.BackendError`, a bad or busy address
    a :class:`~asycamore.errors.UsageError`.

    With *tls_cert* and *tls_key* (both or neither; not with *udp*) the TCP echo speaks
    TLS 1.2 or later (see :func:`tls_server_context`); clients that fail or stall the
    handshake are dropped without disturbing the others.

    With *workers*, that many forked processes serve the port under a supervising
    parent (:mod:`asycamore.workers`); the line is printed once all of them serve.

    With *stats_interval*, a :func:`statistics_line` goes to stderr every that many
    seconds (with *workers*, each worker prints its own, after ``pid=PID``: a worker's
    statistics are its own).  With *metrics_port* (not with *workers*, for now),
    ``prometheus_client``'s HTTP server serves :mod:`asycamore.metrics` on *host* and
    that port (0: any free one), and a line on stderr says where.
    """
    if metrics_port is not None and workers is not None:
        raise UsageError("--metrics-port cannot be combined with --workers (yet)")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both or neither")
    if udp and tls_cert is not None:
        raise UsageError("--udp cannot be combined with --tls-cert/--tls-key")
    sslcontext = None
    if tls_cert is not None and tls_key is not None:
        sslcontext = tls_server_context(tls_cert, tls_key)
    handler = _log_to_stderr()
    host = parse_host(host)
    try:
        if workers is not None:
            return _serve_workers(backend, host, port, workers, sslcontext, udp, stats_interval)
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
                    listener = service.listen_tcp(EchoProtocol, host, port, ssl=sslcontext)
                    address = listener.address
            except (OSError, OverflowError) as exc:
                raise _bind_error(exc, host, port) from None
            metrics = None if metrics_port is None else _serve_metrics(service, host, metrics_port)
            if stats_interval is not None:
                service.call_every(stats_interval, _print_statistics, service, "")
            # Handlers first: a SIGTERM right after the line below must stop us cleanly.
            # They stay (ignoring) until the process has exited: a second signal while
            # it exits must not turn its status 0 into a death by signal.
            with service.signal_handling(STOP_SIGNALS, ignore_afterwards=True):
                print(f"listening on {format_address(address)}", flush=True)
                try:
                    service.serve_forever()
                finally:
                    if metrics is not None:
                        metrics.shutdown()
                        metrics.server_close()
    finally:
        if handler is not None:
            logging.getLogger("asycamore").removeHandler(handler)
    return 0


def _serve_workers(
    backend: str | None,
    host: str,
    port: int,
    workers: int,
    sslcontext: ssl.SSLContext | None,
    udp: bool,
    stats_interval: float | None,
) -> int:
    from .workers import Worker, WorkerPool, WorkerStartError

    pool = WorkerPool(
        workers, backend=backend, stop_timeout=STOP_TIMEOUT, stop_signals=STOP_SIGNALS
    )
    try:
        if udp:
            addresses = pool.bind_udp(host, port, socket_buffer_size=UDP_SOCKET_BUFFER)
        else:
            addresses = pool.bind_tcp(host, port)
    except (OSError, OverflowError) as exc:
        raise _bind_error(exc, host, port) from None

    def setup(service: Service, worker: Worker) -> None:
        if udp:
            worker.serve_udp(service, DatagramEchoProtocol)
        else:
            worker.listen(service, EchoProtocol, ssl=sslcontext)
        if stats_interval is not None:
            service.call_every(stats_interval, _print_statistics, service, f"pid={os.getpid()} ")

    def on_ready() -> None:
        print(f"listening on {format_address(addresses[0])}", flush=True)

    try:
        return pool.run(setup, on_ready=on_ready, ignore_signals_afterwards=True)
    except WorkerStartError as exc:
        logging.getLogger("asycamore").error("%s", exc)
        return exc.status or 1
