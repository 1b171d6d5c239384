#!/usr/bin/env python3
"""A netcat-like client: relays its stdin to a TCP connection and the answers to stdout.

    python -m asycamore echo --port 8007 &
    python examples/nc.py 127.0.0.1 8007 < some-file > the-echo

Everything runs on one :class:`~asycamore.servicemodel.Service`: the socket is
``Service.connect_tcp``, stdin and stdout are ``Service.connect_read_pipe`` and
``Service.connect_write_pipe`` (pipes, FIFOs, ttys and sockets; a regular file or
``/dev/null``, which cannot be watched, is read or written directly instead).  Flow
control is wired both ways, as in examples/proxy.py: while the socket's write buffer is
over its high-water mark (the server is not reading), stdin is not read; while stdout's
is (whoever reads our output is slow), the socket is not read.  So nc.py buffers about a
high-water mark per direction, whatever the sizes and the speeds.

The end of stdin is passed on as a half-close (``write_eof``); nc.py exits once the
server has closed its side too and everything it sent has been written to stdout:
status 0, or 1 with one line on stderr (a refused connect, a reset).  ``--measure``
prints the peak of the bytes buffered in nc.py to stderr at exit.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, NoReturn

from asycamore.servicemodel import Protocol, Service, StreamTransport

CHUNK = 64 * 1024


class FileSource:
    """stdin when it is a regular file or ``/dev/null`` (always "ready": no watching):
    read a chunk per loop iteration while not paused, as a read pipe would."""

    def __init__(self, nc: Netcat, fd: int) -> None:
        self.nc, self.fd = nc, fd
        self.paused = False
        self.done = False
        nc.service.call_soon(self.step)

    def step(self) -> None:
        if self.paused or self.done:
            return
        data = os.read(self.fd, CHUNK)
        if data:
            self.nc.from_stdin(data)
            self.nc.service.call_soon(self.step)
        else:
            self.done = True
            self.nc.stdin_ended()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            self.nc.service.call_soon(self.step)

    def close(self) -> None:
        self.done = True

    def get_write_buffer_size(self) -> int:
        return 0


class FileSink:
    """stdout when it is a regular file or ``/dev/null``: written at once (a regular file
    takes everything), so it never pauses the socket."""

    def __init__(self, nc: Netcat, fd: int) -> None:
        self.nc, self.fd = nc, fd
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.nc.stdout_ended(None)

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0


def watchable(fd: int) -> bool:
    """Whether the backend can watch *fd*: not a regular file, not a character device
    that is not a tty (``/dev/null``: epoll refuses it)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return False
    return not (stat.S_ISCHR(mode) and not os.isatty(fd))


class SocketSide(Protocol):
    """The TCP connection: what it reads goes to stdout."""

    # What it reads is written by stdout, not by itself: its own full write buffer must
    # not stop its reading (the server may be waiting for us to read before it reads).
    reads_produce_writes = False

    def __init__(self, nc: Netcat) -> None:
        super().__init__()
        self.nc = nc

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        self.nc.connected(transport)

    def connection_failed(self, exc: BaseException) -> None:
        self.nc.fail(exc)

    def data_received(self, data: bytes) -> None:
        assert self.nc.stdout is not None
        self.nc.stdout.write(data)

    def eof_received(self) -> bool:
        # The server has finished: flush stdout and close it; keep sending stdin.
        assert self.nc.stdout is not None
        self.nc.stdout.close()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.nc.socket_ended(exc)

    # The socket's write buffer is over its mark: stop reading stdin, which fills it.
    def pause_writing(self) -> None:
        if self.nc.stdin is not None:
            self.nc.stdin.pause_reading()

    def resume_writing(self) -> None:
        if self.nc.stdin is not None:
            self.nc.stdin.resume_reading()


class StdinSide(Protocol):
    """stdin as a read pipe: what it reads goes to the socket."""

    reads_produce_writes = False

    def __init__(self, nc: Netcat) -> None:
        super().__init__()
        self.nc = nc

    def data_received(self, data: bytes) -> None:
        self.nc.from_stdin(data)

    def eof_received(self) -> None:
        self.nc.stdin_ended()


class StdoutSide(Protocol):
    """stdout as a write pipe: while its buffer is over its mark, the socket is not read."""

    def __init__(self, nc: Netcat) -> None:
        super().__init__()
        self.nc = nc

    def pause_writing(self) -> None:
        if self.nc.sock is not None:
            self.nc.sock.pause_reading()

    def resume_writing(self) -> None:
        if self.nc.sock is not None:
            self.nc.sock.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.nc.stdout_ended(exc)


class Netcat:
    """The three transports, and when to stop."""

    def __init__(self, service: Service, measure: bool) -> None:
        self.service = service
        self.sock: StreamTransport | None = None
        self.stdin: Any = None  # a read pipe transport or a FileSource
        self.stdout: Any = None  # a write pipe transport or a FileSink
        self.socket_done = False
        self.stdout_done = False
        self.error: str | None = None
        self.peak_buffered = 0
        if measure:
            service.call_every(0.005, self.sample)

    def start(self, host: str, port: int, timeout: float) -> None:
        out = sys.stdout.buffer
        if watchable(out.fileno()):
            self.stdout = self.service.connect_write_pipe(lambda: StdoutSide(self), out)
        else:
            self.stdout = FileSink(self, out.fileno())
        self.service.connect_tcp(lambda: SocketSide(self), host, port, timeout=timeout)

    def connected(self, sock: StreamTransport) -> None:
        self.sock = sock
        source = sys.stdin.buffer
        if watchable(source.fileno()):
            self.stdin = self.service.connect_read_pipe(lambda: StdinSide(self), source)
        else:
            self.stdin = FileSource(self, source.fileno())

    def from_stdin(self, data: bytes) -> None:
        if self.sock is not None and not self.socket_done:
            self.sock.write(data)

    def stdin_ended(self) -> None:
        if self.sock is not None and not self.socket_done:
            self.sock.write_eof()  # after what is buffered

    def fail(self, exc: BaseException) -> None:
        self.error = str(exc)
        self.socket_done = True
        if self.stdout is not None:
            self.stdout.abort()
        self.service.stop()

    def socket_ended(self, exc: BaseException | None) -> None:
        self.socket_done = True
        if exc is not None and self.error is None:
            self.error = str(exc)
        if self.stdin is not None:
            self.stdin.close()  # nothing more can be sent
        if self.stdout is not None:
            self.stdout.close()  # after what is buffered for it
        self.check_done()

    def stdout_ended(self, exc: BaseException | None) -> None:
        self.stdout_done = True
        if exc is not None:
            # Whoever read our output has gone (a closed pipe): as nc, give up.
            if self.error is None:
                self.error = f"stdout: {exc}"
            if self.sock is not None:
                self.sock.abort()
        self.check_done()

    def check_done(self) -> None:
        if self.socket_done and self.stdout_done:
            self.service.stop()

    def sample(self) -> None:
        buffered = sum(
            side.get_write_buffer_size() for side in (self.sock, self.stdout) if side is not None
        )
        self.peak_buffered = max(self.peak_buffered, buffered)


class Parser(argparse.ArgumentParser):
    """Argument errors in one line (``nc.py: error: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("host", help="the server's name or address")
    parser.add_argument("port", type=port_number, help="the server's TCP port")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect timeout (s)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="print the peak of the bytes buffered in nc.py to stderr at exit",
    )
    args = parser.parse_args(argv)

    # A SIGINT/SIGTERM stops the service; SIGPIPE is an EPIPE (stdout's reader gone).
    with Service(args.backend, stop_timeout=2.0) as service:
        nc = Netcat(service, args.measure)
        nc.start(args.host, args.port, args.timeout)
        service.serve_forever()
    if args.measure:
        print(f"peak buffered: {nc.peak_buffered} bytes", file=sys.stderr)
    if nc.error is not None:
        print(f"nc: {nc.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
