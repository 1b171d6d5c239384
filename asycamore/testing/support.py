"""The kit's building blocks, for a plugin's own tests too: a recording target, socket
pairs closed at teardown, and a watchdog for calls that must not block.

They use real sockets and the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["DispatchHung", "RecordingTarget", "Sockets", "deadline"]

# Bounds for every loop the kit runs, so a broken backend fails rather than hangs.
MAX_RECVS = 4096
CHUNK = 65536
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # in case a test hands in a blocking socket


class DispatchHung(BaseException):
    """Raised by :func:`deadline` when a call under test blocks past its deadline.

    A :class:`BaseException`, so that a backend's ``except Exception`` cannot swallow it.
    """


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the dispatch") -> Iterator[None]:
    """Interrupt the body with :class:`DispatchHung` if it runs longer than *seconds*.

    A watchdog thread sends ``SIGUSR2`` to the main thread, whose handler raises; system
    calls such as ``select`` or ``epoll_wait`` are interrupted by it.  Only possible on
    the main thread of a POSIX system; elsewhere the body runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_kill"
    ):
        yield
        return
    done = threading.Event()
    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not done.is_set():
            raise DispatchHung(f"{what} was still blocked after {seconds} s")

    def watch() -> None:
        if not done.wait(seconds):
            signal.pthread_kill(main_ident, signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, on_signal)
    watcher = threading.Thread(target=watch, name="asycamore-testing-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR2, previous)


class RecordingTarget:
    """A dispatch target over one socket that records every handler call.

    Each call appends ``(name, "read")`` or ``(name, "write")`` to :attr:`log`, which
    several targets may share to record the order of calls across targets.  Then the
    ``on_read`` / ``on_write`` hook runs if one was given; without an ``on_read`` hook the
    read handler drains the socket (so level-triggered readiness ends) and notes EOF.
    Errors raised by ``recv`` propagate out of the handler, as in a real program.
    """

    def __init__(
        self,
        sock: socket.socket,
        log: list[tuple[str, str]] | None = None,
        name: str = "target",
        on_read: Callable[[RecordingTarget], None] | None = None,
        on_write: Callable[[RecordingTarget], None] | None = None,
    ) -> None:
        self.sock = sock
        """The socket whose descriptor is watched."""
        self.log: list[tuple[str, str]] = [] if log is None else log
        """The shared call log: ``(name, "read" | "write")`` per handler call."""
        self.name = name
        """The name used in :attr:`log`."""
        self.on_read = on_read
        """Called with the target after a read event is logged (replaces draining)."""
        self.on_write = on_write
        """Called with the target after a write event is logged."""
        self.eof = False
        """True once a drain saw end-of-file."""
        self.close_calls = 0
        """How many times :meth:`close` was called."""

    def __repr__(self) -> str:
        return f"<RecordingTarget {self.name}>"

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once the socket is closed)."""
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        """Log the call, then run ``on_read`` or drain the socket."""
        self.log.append((self.name, "read"))
        if self.on_read is not None:
            self.on_read(self)
        else:
            self.drain()

    def handle_write_event(self) -> None:
        """Log the call, then run ``on_write`` if given."""
        self.log.append((self.name, "write"))
        if self.on_write is not None:
            self.on_write(self)

    def drain(self) -> bytes:
        """Read everything the socket holds now (never blocks); set :attr:`eof` on EOF."""
        data = bytearray()
        for _ in range(MAX_RECVS):
            try:
                chunk = self.sock.recv(CHUNK, _DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
        return bytes(data)

    def calls(self, kind: str | None = None) -> int:
        """How many handler calls of this target are in the log (of *kind*, if given)."""
        return sum(1 for name, k in self.log if name == self.name and kind in (None, k))

    def close(self) -> None:
        """Count the call and close the socket (the default error policy calls this)."""
        self.close_calls += 1
        self.sock.close()


class Sockets:
    """Makes non-blocking loopback sockets and closes all of them at teardown."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._fds: list[int] = []

    def adopt(self, sock: socket.socket) -> socket.socket:
        """Close *sock* at teardown; return it."""
        self._sockets.append(sock)
        return sock

    def adopt_fd(self, fd: int) -> int:
        """Close the raw descriptor *fd* at teardown (if it is still open); return it."""
        self._fds.append(fd)
        return fd

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking ``socket.socketpair()``."""
        a, b = socket.socketpair()
        for sock in (a, b):
            sock.setblocking(False)
            self.adopt(sock)
        return a, b

    def pair_at(self, fd: int) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking socket pair whose first socket has descriptor number
        *fd* (a number just closed, typically: to test what a newcomer on it gets)."""
        sock, peer = self.pair()
        if sock.fileno() != fd:
            os.dup2(sock.fileno(), fd)
            sock.close()
            sock = self.adopt(socket.socket(fileno=fd))
            sock.setblocking(False)
        return sock, peer

    def tcp_pair(self, buffer_size: int | None = None) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking TCP pair over ``127.0.0.1``: ``(client, server)``.

        With *buffer_size*, both sides get small send and receive buffers, so a sender
        can fill the connection quickly.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.adopt(client)
        try:
            if buffer_size is not None:
                for sock in (listener, client):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client.connect(listener.getsockname())
            server, _ = listener.accept()
        finally:
            listener.close()
        self.adopt(server)
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, server

    def close_all(self) -> None:
        """Close every socket and descriptor handed out or adopted."""
        for sock in self._sockets:
            sock.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sockets.clear()
        self._fds.clear()
