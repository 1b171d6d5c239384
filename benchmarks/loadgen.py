"""The suite's Python load generator: the C generator's modes and output, slower.

    python benchmarks/loadgen.py --port PORT [--mode pingpong|bulk|connrate|idle]
        [--conns 16] [--size 64] [--seconds 1] [--warmup 0.2]

``benchmarks/run.py`` uses it where ``benchmarks/c/loadgen.c`` cannot be built (no gcc,
not Linux) or with ``--python-generator``; ``benchmarks/c/loadgen.c`` says what each
mode does.  ``pingpong`` and the measured window and report come from the installed
:mod:`asycamore.bench.programs` (``asycamore bench`` uses them too); ``bulk`` (every
byte verified), ``connrate`` and ``idle`` exist only for the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from asycamore.bench.harness import raise_nofile_limit
from asycamore.bench.programs import Window, connect, pingpong

MODES = ("pingpong", "bulk", "connrate", "idle")


def command() -> list[str]:
    """The command that runs this generator (append its options)."""
    return [sys.executable, str(Path(__file__).resolve())]


def generate(
    host: str, port: int, mode: str, conns: int, size: int, seconds: float, warmup: float
) -> int:
    """Run one *mode* against *host*:*port*; return the exit status."""
    raise_nofile_limit()
    address = (host, port)
    if mode == "idle":
        return _gen_idle(address, conns, seconds)
    if mode == "connrate":
        return _gen_connrate(address, conns, size, Window(seconds, warmup))
    socks = [connect(address) for _ in range(conns)]
    window = Window(seconds, warmup)
    try:
        if mode == "pingpong":
            errors = pingpong(socks, size, window)
        elif mode == "bulk":
            errors = _gen_bulk(socks, size, window)
        else:
            print(f"loadgen: unknown mode {mode!r}", file=sys.stderr)
            return 2
    finally:
        for sock in socks:
            sock.close()
    window.report(mode, conns, size, errors)
    return 1 if errors else 0


def _gen_idle(address: tuple[str, int], conns: int, seconds: float) -> int:
    socks = [connect(address) for _ in range(conns)]
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    print(f"ready {conns}", flush=True)
    end = time.monotonic() + seconds
    while not stop and time.monotonic() < end:
        time.sleep(0.02)
    for sock in socks:
        sock.close()
    return 0


_PERIOD = 251  # the byte at stream offset i is i % 251, as in the C generator


def _gen_bulk(socks: list[socket.socket], chunk: int, window: Window) -> int:
    limit = 256 * 1024  # bytes in flight per stream
    pattern = bytes(i % _PERIOD for i in range(_PERIOD + max(chunk, limit)))
    sent = dict.fromkeys(socks, 0)
    received = dict.fromkeys(socks, 0)
    errors = 0
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sock)
        while not window.tick():
            for key, mask in sel.select(0.1):
                sock = key.data
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(chunk)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        errors += 1
                        sel.unregister(sock)
                        continue
                    if data:
                        offset = received[sock] % _PERIOD
                        if data != pattern[offset : offset + len(data)]:
                            errors += 1
                        received[sock] += len(data)
                        window.count += 1
                        window.bytes += len(data)
                room = limit - (sent[sock] - received[sock])
                if mask & selectors.EVENT_WRITE and room > 0:
                    offset = sent[sock] % _PERIOD
                    with contextlib.suppress(BlockingIOError):
                        sent[sock] += sock.send(pattern[offset : offset + min(room, chunk)])
                want = selectors.EVENT_READ
                if limit - (sent[sock] - received[sock]) > 0:
                    want |= selectors.EVENT_WRITE
                if want != key.events:
                    sel.modify(sock, want, sock)
    return errors


def _gen_connrate(address: tuple[str, int], concurrency: int, size: int, window: Window) -> int:
    message = b"c" * size
    errors = 0
    got: dict[socket.socket, int] = {}

    def start(sel: selectors.BaseSelector) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(address)
        got[sock] = -1  # connecting
        sel.register(sock, selectors.EVENT_WRITE, sock)

    with selectors.DefaultSelector() as sel:
        for _ in range(concurrency):
            start(sel)
        while not window.tick():
            for key, _mask in sel.select(0.1):
                sock = key.data
                done = failed = False
                if got[sock] < 0:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        failed = True
                    else:
                        try:
                            sock.send(message)
                            got[sock] = 0
                            sel.modify(sock, selectors.EVENT_READ, sock)
                        except OSError:
                            failed = True
                else:
                    try:
                        data = sock.recv(size - got[sock])
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        failed = True
                    else:
                        got[sock] += len(data)
                        done = got[sock] == size
                if done or failed:
                    if failed:
                        errors += 1
                    else:
                        window.count += 1
                        window.bytes += size
                    sel.unregister(sock)
                    del got[sock]
                    sock.close()
                    start(sel)
        for sock in got:
            sock.close()
    window.report("connrate", concurrency, size, errors)
    # A few failed connections among many are reported, not fatal (as in the C one).
    return 1 if errors > window.count // 100 else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line (the C generator's options) and generate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="pingpong", choices=MODES)
    parser.add_argument("--window", type=int, help="ignored (the C generator's option)")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        return generate(
            args.host, args.port, args.mode, args.conns, args.size, args.seconds, args.warmup
        )
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            print(f"loadgen: nothing listens on {args.host}:{args.port}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
