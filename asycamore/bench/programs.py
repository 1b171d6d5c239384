"""The programs ``asycamore bench`` runs in child processes, and their command lines.

    python -m asycamore.bench loadgen --port PORT [--conns 16] [--size 64] ...
    python -m asycamore.bench asyncio-echo [--host 127.0.0.1] [--port 0]

``loadgen`` is a Python ping-pong load generator: *conns* connections, each sending a
*size*-byte message and waiting for its echo.  It speaks the protocol
:func:`asycamore.bench.harness.run_loadgen` reads, through :class:`Window`.  The
repository's benchmark suite adds more modes on top of :class:`Window`, :func:`connect`
and :func:`pingpong`; ``asycamore bench`` needs only ping-pong.

``asyncio-echo`` is the reference server: an ``asyncio.Protocol`` echo server, run in
the environment :data:`MALLOC_TUNED` (the docstring there says why).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import cast

from .harness import raise_nofile_limit

__all__ = [
    "MALLOC_TUNED",
    "Window",
    "asycamore_echo_command",
    "asyncio_echo_command",
    "connect",
    "loadgen_command",
    "main",
    "pingpong",
]


MALLOC_TUNED = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=524288:glibc.malloc.trim_threshold=1048576"
}
"""Environment for an asyncio server in its best state: glibc's mmap threshold raised.

glibc's malloc serves a request over its mmap threshold (128 KiB when a process starts)
with ``mmap``, and raises the threshold to a block's size the first time the process frees
such a block (``mallopt(3)``, ``M_MMAP_THRESHOLD``).  asyncio's plain ``Protocol`` reads
with ``recv(256 KiB)`` and shrinks the result, so a process that has never freed a big
block pays ``mmap``, ``mremap``, ``munmap`` and page faults on every read (on Python 3.11
to 3.13 alike), and one freed block -- a large file read, a big JSON document -- ends that
for good: the same server then costs a quarter of the CPU per message.  These settings put
a fresh process where such a process already is, so that asyncio is compared as it runs
at its best, not as a benchmark's fresh process happens to start.  No effect off glibc.
"""


def loadgen_command() -> list[str]:
    """The command that runs the Python ping-pong load generator (append its options)."""
    return [sys.executable, "-m", "asycamore.bench", "loadgen"]


def asyncio_echo_command() -> list[str]:
    """The command that runs the reference asyncio echo server (``--port 0``)."""
    return [sys.executable, "-m", "asycamore.bench", "asyncio-echo"]


def asycamore_echo_command(backend: str) -> list[str]:
    """The command that runs ``asycamore echo`` on *backend* (``--port 0``)."""
    return [sys.executable, "-m", "asycamore", "echo", "--backend", backend, "--port", "0"]


# -- the load generator ------------------------------------------------------------------


class Window:
    """A generator's measured window: a warm-up, then *seconds* of counting.

    It prints ``measuring`` when counting starts and :meth:`report` prints the JSON
    report, as :func:`~asycamore.bench.harness.run_loadgen` expects.  The generator
    adds each completed operation to :attr:`count` and its bytes to :attr:`bytes`.
    """

    def __init__(self, seconds: float, warmup: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic() + warmup
        self.end = self.start + seconds
        self.measuring = False
        self.cpu0 = time.process_time()
        self.count = 0
        self.bytes = 0
        if warmup <= 0:
            self._begin(time.monotonic())

    def _begin(self, now: float) -> None:
        self.measuring = True
        self.count = self.bytes = 0
        self.start = now
        self.end = now + self.seconds
        self.cpu0 = time.process_time()
        print("measuring", flush=True)

    def tick(self) -> bool:
        """Start measuring after the warm-up; True once the window is over."""
        now = time.monotonic()
        if not self.measuring and now >= self.start:
            self._begin(now)
        return self.measuring and now >= self.end

    def report(self, mode: str, conns: int, size: int, errors: int) -> None:
        """Print the JSON report the C generator prints."""
        wall = max(time.monotonic() - self.start, 1e-9)
        cpu = time.process_time() - self.cpu0
        report = {
            "mode": mode,
            "conns": conns,
            "size": size,
            "wall": wall,
            "count": self.count,
            "bytes": self.bytes,
            "rate": self.count / wall,
            "mb_per_s": self.bytes / wall / 1e6,
            "cpu": cpu,
            "cpu_frac": cpu / wall,
            "errors": errors,
            "generator": "python",
        }
        print(json.dumps(report), flush=True)


def connect(address: tuple[str, int]) -> socket.socket:
    """A non-blocking TCP connection to *address* with ``TCP_NODELAY`` set."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def pingpong(socks: list[socket.socket], size: int, window: Window) -> int:
    """Echo *size*-byte messages on every socket until *window* ends; return the errors.

    One message is in flight per connection; a connection the server closes counts as
    an error and is dropped.
    """
    message = b"x" * size
    errors = 0
    with selectors.DefaultSelector() as sel:
        got = {}
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ, sock)
            got[sock] = 0
        for sock in socks:
            sock.send(message)
        while not window.tick():
            for key, _mask in sel.select(0.1):
                sock = key.data
                try:
                    data = sock.recv(size - got[sock])
                except BlockingIOError:
                    continue
                if not data:
                    errors += 1
                    sel.unregister(sock)
                    continue
                n = got[sock] + len(data)
                if n == size:
                    got[sock] = 0
                    window.count += 1
                    window.bytes += size
                    sock.send(message)
                else:
                    got[sock] = n
    return errors


def _loadgen(host: str, port: int, conns: int, size: int, seconds: float, warmup: float) -> int:
    raise_nofile_limit()
    socks = [connect((host, port)) for _ in range(conns)]
    window = Window(seconds, warmup)
    try:
        errors = pingpong(socks, size, window)
    finally:
        for sock in socks:
            sock.close()
    window.report("pingpong", conns, size, errors)
    return 1 if errors else 0


# -- the reference echo server ---------------------------------------------------------------


class _AsyncioEcho(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def _asyncio_echo(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(_AsyncioEcho, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await stop
    server.close()


# -- the command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``loadgen`` or ``asyncio-echo``; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m asycamore.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("loadgen", help="the Python ping-pong load generator")
    gen.add_argument("--host", default="127.0.0.1")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--conns", type=int, default=16)
    gen.add_argument("--size", type=int, default=64)
    gen.add_argument("--seconds", type=float, default=1.0)
    gen.add_argument("--warmup", type=float, default=0.2)
    echo = commands.add_parser("asyncio-echo", help="the reference asyncio echo server")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "loadgen":
        try:
            return _loadgen(args.host, args.port, args.conns, args.size, args.seconds, args.warmup)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                print(f"loadgen: nothing listens on {args.host}:{args.port}", file=sys.stderr)
                return 1
            raise
    asyncio.run(_asyncio_echo(args.host, args.port))
    return 0
