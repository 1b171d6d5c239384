"""Pipes, FIFOs, ttys and sockets given as a descriptor: stream transports on
:class:`~.stream.Connection`.

A pipe is a byte stream like a connected socket, and everything a stream transport does
above the system calls -- the write buffer and its water marks, ``pause_writing``/
``resume_writing``, ``pause_reading``, the EOF, ``close``/``abort`` and the exactly-once
``connection_lost`` -- applies to it unchanged.  So a pipe transport *is* a
:class:`~.stream.Connection`, and the seam is the object it calls the system through:
:class:`PipeFile` gives a descriptor the handful of socket methods the connection uses
(``send``, ``sendmsg``, ``recv_into``, ``close``, ``fileno``, ``setblocking``,
``getpeername``) over ``os.write``, ``os.writev``, ``os.readv`` and ``os.close``.  The
subclasses here change only what differs for a one-way descriptor:

- a pipe has no half-close of its own (no ``shutdown``): ``write_eof`` closes a write
  pipe, and a close never lingers (a TCP matter: unread input would make the kernel
  send a reset);
- a read pipe never writes (:meth:`ReadPipeTransport.write` raises), and its EOF ends it;
- a write pipe watches its descriptor for reading only to learn that the reader has gone
  (a pipe's write end reports an error then, which every backend turns into readiness
  for every interest), as asyncio does, and only for FIFOs and sockets: a tty opened for
  writing may be the terminal's read side as well.  (A socket's peer that *sends*
  something is taken for one that has gone, as in asyncio: a write pipe is one-way.)

Pipe transports count nothing into a service's
:class:`~asycamore.tcpsocket.TransportCounters` (those are the sockets' connections and
bytes).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import stat
from collections.abc import Callable, Sequence
from typing import IO, Any, ClassVar, Final, cast

from ..arguments import check_factory
from ..dispatcher import IDispatchContext
from .base import EVENTS, READ
from .options import DEFAULT_OPTIONS, TransportOptions
from .stream import Connection, StreamHandler
from .writing import SHUT_WR_DONE

__all__ = [
    "PipeFile",
    "PipeTransport",
    "ReadPipeTransport",
    "WritePipeTransport",
    "connect_read_pipe",
    "connect_write_pipe",
    "pipe_descriptor",
]

# _read_off: a write pipe that does not watch for its reader going away (a tty, a
# character device): reading, its only use of READ, never comes on.
OFF_NO_WATCH: Final = 32

Pipe = IO[Any] | int
"""What the functions here take: a file object (anything with ``fileno()``) or a fd."""


def pipe_descriptor(pipe: object, name: str = "pipe") -> int:
    """The descriptor of *pipe* (a file object or an int), refusing what cannot be one.

    :class:`TypeError` for something without a descriptor; :class:`ValueError` for a
    negative one and for a regular file or a directory (always "ready": a dispatch on
    it would never block).
    """
    if isinstance(pipe, bool):
        raise TypeError(f"{name} must be a file object or a file descriptor, not {pipe!r}")
    if isinstance(pipe, int):
        fd = pipe
    else:
        fileno = getattr(pipe, "fileno", None)
        if not callable(fileno):
            raise TypeError(f"{name} must be a file object or a file descriptor, not {pipe!r}")
        fd = fileno()
    if fd < 0:
        raise ValueError(f"{name} has no open descriptor: {pipe!r}")
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        raise ValueError(
            f"{name} is a regular file or a directory, which is always ready: use a pipe, "
            f"a FIFO, a tty or a socket ({pipe!r})"
        )
    return fd


class PipeFile:
    """A descriptor with the socket methods a :class:`~.stream.Connection` calls.

    *owner* is the file object the descriptor came from, if any: closing closes it
    (so it does not close the number again later, when it may be someone else's).
    :meth:`detach` gives the descriptor back untouched, its blocking mode restored.
    """

    __slots__ = ("_blocking", "_fd", "_owner")

    def __init__(self, fd: int, owner: object = None) -> None:
        self._fd = fd
        self._owner = owner
        self._blocking = os.get_blocking(fd)

    def fileno(self) -> int:
        """The descriptor (``-1`` once closed or detached)."""
        return self._fd

    def setblocking(self, flag: bool) -> None:
        """Set the descriptor's blocking mode."""
        os.set_blocking(self._fd, flag)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """``os.write``."""
        return os.write(self._fd, data)

    def sendmsg(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """``os.writev``."""
        return os.writev(self._fd, buffers)

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        """``os.readv`` into *buffer* (its first *nbytes* bytes; 0: all of it)."""
        return os.readv(self._fd, [buffer[:nbytes] if nbytes else buffer])

    def getpeername(self) -> Any:
        """A pipe has no peer address."""
        raise OSError(errno.ENOTSOCK, "a pipe has no address")

    getsockname = getpeername

    def detach(self) -> None:
        """Forget the descriptor, restoring its blocking mode: the caller keeps it."""
        fd, self._fd, self._owner = self._fd, -1, None
        if fd >= 0:
            os.set_blocking(fd, self._blocking)

    def close(self) -> None:
        """Close the descriptor (through its file object, if any).  Idempotent."""
        fd, owner = self._fd, self._owner
        self._fd, self._owner = -1, None
        if owner is not None:
            owner.close()  # type: ignore[attr-defined]
        elif fd >= 0:
            os.close(fd)


class PipeTransport(Connection):
    """A :class:`~.stream.Connection` over a :class:`PipeFile` (see the module note).

    Made with ``start=False`` semantics: :meth:`attach` registers it (and, if the
    dispatcher refuses the descriptor, gives it back to the caller untouched), then
    :meth:`start` tells the handler.
    """

    __slots__ = ("_attached", "_pipe", "_pipe_object")

    sends: ClassVar[bool] = True
    """Whether the transport writes (a read pipe's class says no)."""

    def __init__(
        self,
        dispatcher: IDispatchContext,
        pipe: Pipe,
        handler: StreamHandler,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        recv_buffer: memoryview | None = None,
        on_close: Callable[[Connection], object] | None = None,
    ) -> None:
        fd = pipe_descriptor(pipe)
        self._pipe_object = pipe
        self._pipe = PipeFile(fd, None if isinstance(pipe, int) else pipe)
        self._attached = False
        # A pipe is not a socket, but it answers every call a Connection makes of one
        # (see PipeFile); the counters are the sockets' (see the module note).
        Connection.__init__(
            self,
            dispatcher,
            cast(socket.socket, self._pipe),
            handler,
            options if options.counters is None else dataclasses.replace(options, counters=None),
            recv_buffer=recv_buffer,
            on_close=on_close,
            start=False,
        )
        if not self.sends:
            # Nothing is ever sent: the sending side is done, so the EOF ends the transport.
            self._shut_wr = SHUT_WR_DONE

    def _initial_events(self) -> int:
        """The interest to register with (subclasses)."""
        return READ

    def attach(self) -> None:
        """Register in the dispatcher, without telling the handler yet.

        If the dispatcher refuses the descriptor (epoll refuses ``/dev/null``; select
        those at or above ``FD_SETSIZE``), the descriptor is given back -- left open, in
        its blocking mode -- the transport is closed without a word to the handler, and
        the dispatcher's error propagates.
        """
        if self._attached:
            return
        events = self._initial_events()
        try:
            self._context.register(self, EVENTS[events])
        except BaseException:
            self._pipe.detach()
            self._release()
            raise
        self._attached = True
        self._events = events

    def start(self) -> None:
        """:meth:`attach` if not yet done, then call ``handler.connection_made(self)``."""
        self.attach()
        self._made()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``pipe``: the file object or descriptor given; *default* for anything else."""
        if name == "pipe":
            return self._pipe_object
        return default

    def _start_linger(self) -> None:
        # Pipes do not linger: unread input makes no reset on a pipe.
        self._finish(None)

    def _shutdown_write(self) -> None:
        # A pipe's EOF is its close (see write_eof).
        self._shut_wr = SHUT_WR_DONE
        self._finish(None)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "closed")[self._state]
        return f"<{type(self).__name__} fd={self._fileno} {state} buffered={self._buffered}>"


class ReadPipeTransport(PipeTransport):
    """The read end of a pipe (or a FIFO, a tty, a socket) as a transport.

    The handler gets ``data_received(data)``, then ``eof_received()`` and
    ``connection_lost(None)`` at the end (the transport closes itself at the EOF,
    whatever ``eof_received`` returns: nothing can be written).  ``pause_reading`` and
    ``resume_reading`` work as on a connection.
    """

    __slots__ = ()

    sends = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """A read pipe cannot write: :class:`RuntimeError`."""
        raise RuntimeError("write() on a read pipe")

    def write_eof(self) -> None:
        """A read pipe cannot write: :class:`RuntimeError`."""
        raise RuntimeError("write_eof() on a read pipe")

    def can_write_eof(self) -> bool:
        """False: a read pipe does not write."""
        return False


class WritePipeTransport(PipeTransport):
    """The write end of a pipe (or a FIFO, a tty, a socket) as a transport.

    :meth:`write` buffers what the pipe does not take, with the water marks and the
    handler's ``pause_writing``/``resume_writing`` of a connection; :meth:`write_eof`
    and :meth:`close` close the pipe once the buffer is flushed.  A reader that went
    away is ``connection_lost(BrokenPipeError)`` at the next write, or at once if
    something is buffered (``connection_lost(None)`` if nothing is: the pipe has simply
    ended).
    """

    __slots__ = ()

    def _initial_events(self) -> int:
        mode = os.fstat(self._pipe.fileno()).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return READ
        self._read_off |= OFF_NO_WATCH
        return 0

    def handle_read_event(self) -> None:
        """The reader has gone (a write end is never readable otherwise)."""
        if self._chunks:
            self._lose(BrokenPipeError(errno.EPIPE, "the pipe's reader has gone"))
        else:
            self._finish(None)

    def can_write_eof(self) -> bool:
        """True: :meth:`write_eof` closes the pipe once the buffer is flushed."""
        return True


def _connect_pipe(
    kind: type[PipeTransport],
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    pipe: Pipe,
    options: TransportOptions,
    recv_buffer: memoryview | None,
    on_close: Callable[[Connection], object] | None,
    on_attached: Callable[[Connection], object] | None,
) -> PipeTransport:
    check_factory(protocol_factory)
    pipe_descriptor(pipe)  # refused before the protocol is made
    transport = kind(
        dispatcher,
        pipe,
        protocol_factory(),
        options,
        recv_buffer=recv_buffer,
        on_close=on_close,
    )
    transport.attach()
    if on_attached is not None:
        on_attached(transport)
    transport.start()
    return transport


def connect_read_pipe(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    pipe: Pipe,
    *,
    options: TransportOptions = DEFAULT_OPTIONS,
    recv_buffer: memoryview | None = None,
    on_close: Callable[[Connection], object] | None = None,
    on_attached: Callable[[Connection], object] | None = None,
) -> ReadPipeTransport:
    """Read *pipe* (a file object or a descriptor: a pipe, FIFO, tty or socket, e.g.
    ``sys.stdin``) with a protocol from *protocol_factory*; return the transport.

    The transport owns *pipe* from then on and closes it when it closes (through the
    file object, if one was given).  Refused at the call, leaving *pipe* open and
    untouched: a *protocol_factory* that is not callable (:class:`TypeError`), a regular
    file (:class:`ValueError`: it is always ready), and anything the dispatcher cannot
    watch (its error, e.g. epoll's ``PermissionError`` for ``/dev/null``).
    *on_attached* is called with the transport once it is registered, before the
    protocol's ``connection_made`` (an owner's bookkeeping).
    """
    return cast(
        ReadPipeTransport,
        _connect_pipe(
            ReadPipeTransport,
            dispatcher,
            protocol_factory,
            pipe,
            options,
            recv_buffer,
            on_close,
            on_attached,
        ),
    )


def connect_write_pipe(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], StreamHandler],
    pipe: Pipe,
    *,
    options: TransportOptions = DEFAULT_OPTIONS,
    on_close: Callable[[Connection], object] | None = None,
    on_attached: Callable[[Connection], object] | None = None,
) -> WritePipeTransport:
    """Write to *pipe* (a file object or a descriptor: a pipe, FIFO, tty or socket,
    e.g. ``sys.stdout``) for a protocol from *protocol_factory*; return the transport.

    Ownership and refusals as for :func:`connect_read_pipe`.  The protocol hears
    ``pause_writing()``/``resume_writing()`` at the water marks of *options*, and
    ``connection_lost(exc)`` when the pipe closes (a :class:`BrokenPipeError` when the
    reader went away with data still to send).
    """
    return cast(
        WritePipeTransport,
        _connect_pipe(
            WritePipeTransport,
            dispatcher,
            protocol_factory,
            pipe,
            options,
            None,
            on_close,
            on_attached,
        ),
    )
