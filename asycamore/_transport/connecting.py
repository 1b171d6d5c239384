"""How a stream connection goes through a client connect: :class:`ConnectingStream`.

A base class of :class:`~.stream.Connection` (see the module note of :mod:`.stream`
for the state machine): the seams that :mod:`.connect` builds ``connect_tcp`` and
``connect_unix`` on -- :meth:`~ConnectingStream.start_connect` for a socket whose
non-blocking connect has begun, :meth:`~ConnectingStream.start_resolving` and
:meth:`~ConnectingStream.connect_socket` for a connect to a name -- and the end of the
CONNECTING state: ``connection_made`` once connected (then what was written
meanwhile is sent), or ``connection_failed`` on an error or a timeout.

While connecting, the connection's ``_state`` is CONNECTING and ``_read_off`` holds
the ``OFF_CONNECTING`` reason; only writability is watched, because that is how a
non-blocking connect reports its end.  :class:`~.stream.Connection` sets the fields
declared here in its ``__init__``.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Protocol

from ..arguments import address_error
from ..timers import Timers
from .base import CLOSED, CONNECTING, EVENTS, OPEN, WRITE, log_connect_failure, set_nodelay
from .writing import OFF_CONNECTING, SHUT_WR_PENDING, StreamWriter

__all__ = ["Cancellable", "ConnectingStream"]


class Cancellable(Protocol):
    """Anything with a ``cancel()``: a timer, or a connect's pending work
    (see :meth:`Connection.start_resolving`)."""

    def cancel(self) -> None:
        """Stop it; harmless twice."""
        ...


class ConnectingStream(StreamWriter):
    """The client-connect part of :class:`~.stream.Connection` (see the module
    docstring).  Its subclass provides :meth:`_made` and :meth:`_release`."""

    __slots__ = ("_connect_to", "_timer")

    _connect_to: Any
    # The connect timeout, or a pending connect's work (or the linger timer of a
    # closing connection): cancelled on release.
    _timer: Cancellable | None

    def start_connect(
        self, timeout: float | None = None, timers: Timers | None = None, address: Any = None
    ) -> None:
        """Wait for the socket's non-blocking connect, begun by the caller, to finish.

        For a connection made with ``start=False`` on a socket whose ``connect_ex``
        returned ``EINPROGRESS`` (or 0): registers for writability, then calls
        ``handler.connection_made`` once connected, or ``connection_failed(exc)`` if the
        connect fails or *timeout* seconds pass first (a timeout needs *timers*).  The
        error names *address*, the address being connected to, if given.
        :func:`connect_tcp` is built on it.
        """
        if timeout is not None and timers is None:
            raise ValueError("a connect timeout needs timers")
        self._connect_to = address
        self._state = CONNECTING
        self._read_off |= OFF_CONNECTING
        self._register(WRITE)
        if timeout is not None and timers is not None:
            self._timer = timers.call_later(timeout, self._connect_timed_out)

    def start_resolving(self, pending: Cancellable) -> None:
        """Be a client connect whose socket does not exist yet.

        For a connection made with ``sock=None`` and ``start=False``: it is connecting
        (writes are buffered, :meth:`close` and :meth:`abort` end it with
        ``connection_failed``) while *pending* -- the caller's name resolution and
        connection attempts -- runs.  *pending* finishes with :meth:`connect_socket`
        (success) or :meth:`abort` (failure: ``abort(exc)`` reaches
        ``connection_failed(exc)``); if the connection is closed first,
        ``pending.cancel()`` is called.  :func:`connect_tcp` uses it for host names.
        """
        self._state = CONNECTING
        self._read_off |= OFF_CONNECTING
        self._timer = pending

    def connect_socket(self, sock: socket.socket) -> None:
        """Finish a :meth:`start_resolving` connect with *sock*, which has connected.

        The connection registers *sock* in its dispatcher and calls
        ``handler.connection_made``; the pending work is cancelled (it has nothing
        left to do but close the attempts that lost).  If the dispatcher refuses *sock*,
        the connect fails with that error.
        """
        if self._state != CONNECTING or self._fileno >= 0:
            sock.close()
            raise RuntimeError("connect_socket() on a connection that is not resolving")
        sock.setblocking(False)
        self._sock = sock
        self._fileno = sock.fileno()
        try:
            self._register(WRITE)
        except (KeyError, ValueError) as exc:
            self._fail_connect(exc)
            return
        self._finish_connect()

    @property
    def connecting(self) -> bool:
        """Whether a client connect is still in progress."""
        return self._state == CONNECTING

    # -- internals --------------------------------------------------------------------------

    def _register(self, events: int) -> None:
        self._context.register(self, EVENTS[events])
        self._events = events

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self._state == CONNECTING:
            self._fail_connect(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _finish_connect(self) -> None:
        try:
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            self._fail_connect(exc)
            return
        if err:
            self._fail_connect(OSError(err, os.strerror(err)))
            return
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        self._state = OPEN
        self._read_off &= ~OFF_CONNECTING
        set_nodelay(self._sock)
        self._made()
        if self._state != OPEN:
            return
        if self._chunks:
            # Written while connecting: the socket is writable now, send it at once.
            self._check_flow()
            self._update_interest()
            self.handle_write_event()
        elif self._shut_wr == SHUT_WR_PENDING:
            self._shutdown_write()
        self._update_interest()

    def _fail_connect(self, exc: BaseException) -> None:
        if self._state == CLOSED:
            return
        if self._connect_to is not None and isinstance(exc, OSError):
            exc = address_error(exc, "connect to", self._connect_to)
        handler = self._release()
        try:
            failed = getattr(handler, "connection_failed", None)
            if failed is not None:
                failed(exc)
            else:
                log_connect_failure(exc)
        finally:
            self._closed_hook()

    # -- hooks (the subclass) ----------------------------------------------------------------

    def _made(self) -> None:
        """Call ``handler.connection_made(self)`` (and what goes with it)."""
        raise NotImplementedError
