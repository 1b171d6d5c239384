"""``asycamore echo``: a TCP echo service built on :mod:`asycamore.servicemodel`.

Every byte received is written back; when the peer half-closes, what is buffered is
sent and the connection is closed.  Memory stays bounded when a peer sends without
reading: the connection stops reading while its write buffer is above the high-water
mark.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable

from .errors import UsageError
from .servicemodel import Protocol, Service

__all__ = ["EchoProtocol", "serve_echo"]

STOP_TIMEOUT = 2.0
"""Seconds the echo service lets its connections flush after SIGINT/SIGTERM/SIGHUP."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop the echo service gracefully.  SIGHUP too, as servers commonly
do: a closed terminal stops it cleanly (echo has no configuration to reload).  Other
signals (SIGQUIT, SIGUSR1, ...) keep their default action."""


def _drop(data: bytes) -> None:
    pass


class EchoProtocol(Protocol):
    """Writes back everything it receives (memoryviews of the shared buffer: no copy
    unless the socket cannot take the data at once)."""

    __slots__ = ()

    receive_memoryview = True

    # A property, not a method: the connection looks data_received up once
    # connection_made has run and then calls what it got for every read, so here it
    # gets the transport's own write and an echoed message costs no Python frame of
    # ours (a subclass may still override data_received with a method).
    @property
    def data_received(self) -> Callable[[bytes], None]:
        """Echo: the transport's ``write`` (a no-op before ``connection_made``)."""
        transport = self.transport
        return _drop if transport is None else transport.write


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
    return UsageError(f"cannot listen on {host}:{port}: {reason}")


def serve_echo(
    backend: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int | None = None,
) -> int:
    """Serve TCP echo on *host*:*port* until a :data:`STOP_SIGNALS` signal; return the
    exit status.

    Prints ``listening on HOST:PORT`` (the real port) to stdout once listening.  On a
    signal, stops accepting, lets the connections flush for up to
    :data:`STOP_TIMEOUT` seconds, closes them and returns 0.  A bad backend raises a
    :class:`~asycamore.BackendError`, a bad or busy address a
    :class:`~asycamore.errors.UsageError`.

    With *workers*, that many forked processes serve the port under a supervising
    parent (:mod:`asycamore.workers`); the line is printed once all of them serve.
    """
    handler = _log_to_stderr()
    try:
        if workers is not None:
            return _serve_workers(backend, host, port, workers)
        try:
            service = Service(backend, stop_timeout=STOP_TIMEOUT)
        except OSError as exc:  # EMFILE, for one: no descriptor for the context or waker
            raise UsageError(f"cannot start: {exc.strerror or exc}") from None
        with service:
            try:
                listener = service.listen_tcp(EchoProtocol, host, port)
            except (OSError, OverflowError) as exc:
                raise _bind_error(exc, host, port) from None
            # Handlers first: a SIGTERM right after the line below must stop us cleanly.
            # They stay (ignoring) until the process has exited: a second signal while
            # it exits must not turn its status 0 into a death by signal.
            with service.signal_handling(STOP_SIGNALS, ignore_afterwards=True):
                print(f"listening on {host}:{listener.port}", flush=True)
                service.serve_forever()
    finally:
        if handler is not None:
            logging.getLogger("asycamore").removeHandler(handler)
    return 0


def _serve_workers(backend: str | None, host: str, port: int, workers: int) -> int:
    from .workers import Worker, WorkerPool, WorkerStartError

    pool = WorkerPool(
        workers, backend=backend, stop_timeout=STOP_TIMEOUT, stop_signals=STOP_SIGNALS
    )
    try:
        address = pool.bind_tcp(host, port)
    except (OSError, OverflowError) as exc:
        raise _bind_error(exc, host, port) from None

    def setup(service: Service, worker: Worker) -> None:
        worker.listen(service, EchoProtocol)

    def on_ready() -> None:
        print(f"listening on {host}:{address[1]}", flush=True)

    try:
        return pool.run(setup, on_ready=on_ready, ignore_signals_afterwards=True)
    except WorkerStartError as exc:
        logging.getLogger("asycamore").error("%s", exc)
        return exc.status or 1
