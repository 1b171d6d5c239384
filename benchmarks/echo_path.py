"""Where an echoed message's server CPU goes, layer by layer, measured in one process.

    python benchmarks/echo_path.py [--conns 64] [--size 64] [--seconds 1] [--backend epoll]
                                   [--out FILE | --no-save]

64 loopback TCP connections; each round the client side sends one message on every
connection, the *server side* handles them all (timed), and the client reads the echoes
back (not timed).  Only the server's work is timed, on one CPU, so the result is its CPU
cost per message with no cross-CPU wake-ups or generator in the way.  The layers:

    raw epoll       select.epoll + recv_into + send in a bare loop: the kernel floor
    selectors       the same through selectors.DefaultSelector with callbacks
    dispatcher      asycamore context + a target whose handler does recv_into + send
    tcpsocket       + tcpsocket.Connection and asycamore.echo.EchoProtocol
    service         + servicemodel.Service.run_once (timers, callbacks, error policy)

The difference between two adjacent layers is what that layer costs per message,
taken from each layer's best round (the least disturbed by other work on the machine).

The table is printed and written to ``benchmarks/results/echo_path.txt`` (``--out FILE``
elsewhere, ``--no-save`` nowhere), under a line saying when, with what command and on
what machine and Python it was measured.
"""

from __future__ import annotations

import argparse
import os
import select
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import report_file  # benchmarks/report_file.py, beside this file

from asycamore import Events, create_dispatcher
from asycamore.bench import harness
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Service
from asycamore.tcpsocket import Connection


@contextmanager
def tcp_pairs(count: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """*count* connected loopback TCP pairs ``(client, server)``."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    pairs = []
    try:
        for _ in range(count):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server.setblocking(False)
            pairs.append((client, server))
        yield pairs
    finally:
        listener.close()
        for client, server in pairs:
            client.close()
            server.close()


def drive(
    clients: list[socket.socket], size: int, step: Callable[[], Any], seconds: float
) -> float:
    """Run rounds for *seconds*; return the median server seconds per message."""
    message = b"m" * size
    per_round = []
    deadline = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < deadline or rounds < 20:
        for client in clients:
            client.send(message)
        # All messages are queued on the server side before the timed part starts: let
        # loopback deliver them (it does so synchronously in send, but be sure).
        # This thread's CPU time, not the wall clock: the server's own cost, which other
        # processes on a shared machine do not inflate.
        t0 = time.thread_time()
        handled = 0
        while handled < len(clients):
            handled += step()
        per_round.append(time.thread_time() - t0)
        for client in clients:
            got = 0
            while got < size:
                got += len(client.recv(size - got))
        rounds += 1
    return statistics.median(per_round) / len(clients)


def layer_raw(
    pairs: list[tuple[socket.socket, socket.socket]], size: int, seconds: float
) -> float:
    """Bare epoll loop."""
    ep = select.epoll()
    buf = memoryview(bytearray(65536))
    by_fd = {server.fileno(): server for _, server in pairs}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)

    def step() -> int:
        n = 0
        for fd, _ in ep.poll(1.0, len(by_fd)):
            sock = by_fd[fd]
            got = sock.recv_into(buf)
            sock.send(buf[:got])
            n += 1
        return n

    try:
        return drive([c for c, _ in pairs], size, step, seconds)
    finally:
        ep.close()


def layer_selectors(
    pairs: list[tuple[socket.socket, socket.socket]], size: int, seconds: float
) -> float:
    """selectors.DefaultSelector with a callback per key."""
    sel = selectors.DefaultSelector()
    buf = memoryview(bytearray(65536))

    def on_read(sock: socket.socket) -> None:
        got = sock.recv_into(buf)
        sock.send(buf[:got])

    for _, server in pairs:
        sel.register(server, selectors.EVENT_READ, on_read)

    def step() -> int:
        n = 0
        for key, _ in sel.select(1.0):
            key.data(key.fileobj)
            n += 1
        return n

    try:
        return drive([c for c, _ in pairs], size, step, seconds)
    finally:
        sel.close()


class _EchoTarget:
    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket, buf: memoryview) -> None:
        self.sock = sock
        self.buf = buf

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        got = self.sock.recv_into(self.buf)
        self.sock.send(self.buf[:got])

    def handle_write_event(self) -> None:
        pass


def layer_dispatcher(
    pairs: list[tuple[socket.socket, socket.socket]], size: int, seconds: float, backend: str
) -> float:
    """asycamore dispatcher with a minimal echo target."""
    buf = memoryview(bytearray(65536))
    with create_dispatcher(backend) as ctx:
        for _, server in pairs:
            ctx.register(_EchoTarget(server, buf), Events.READ)
        return drive([c for c, _ in pairs], size, lambda: ctx.dispatch_once(1.0), seconds)


def layer_tcpsocket(
    pairs: list[tuple[socket.socket, socket.socket]], size: int, seconds: float, backend: str
) -> float:
    """tcpsocket.Connection + EchoProtocol on a bare dispatcher."""
    buf = memoryview(bytearray(256 * 1024))
    with create_dispatcher(backend) as ctx:
        for _, server in pairs:
            Connection(ctx, server, EchoProtocol(), recv_buffer=buf)
        return drive([c for c, _ in pairs], size, lambda: ctx.dispatch_once(1.0), seconds)


def layer_service(
    pairs: list[tuple[socket.socket, socket.socket]], size: int, seconds: float, backend: str
) -> float:
    """The echo service: Service.run_once with its listener's connection options."""
    with Service(backend) as service:
        listener = service.listen_tcp(EchoProtocol, "127.0.0.1", 0)
        clients = []
        try:
            for _ in range(len(pairs)):
                client = socket.create_connection(("127.0.0.1", listener.port))
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients.append(client)
            while service.connection_count < len(clients):
                service.run_once(0.1)

            def step() -> int:
                # run_once counts handler calls: one per message here.
                return service.run_once(1.0)

            return drive(clients, size, step, seconds)
        finally:
            for client in clients:
                client.close()


def main(argv: list[str] | None = None) -> int:
    """Measure every layer, interleaved over rounds, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0, help="per layer and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", action="append", help="asycamore backend(s) (epoll, poll)")
    report_file.add_arguments(parser, "echo_path.txt")
    args = parser.parse_args(argv)
    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    backends = args.backend or ["epoll", "poll"]
    cpu, _ = harness.cpu_layout()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    layers: list[tuple[str, Callable[..., float]]] = [
        ("raw epoll", layer_raw),
        ("selectors", layer_selectors),
    ]
    for backend in backends:
        layers += [
            (f"{backend} dispatcher", lambda p, s, t, b=backend: layer_dispatcher(p, s, t, b)),
            (f"{backend} tcpsocket", lambda p, s, t, b=backend: layer_tcpsocket(p, s, t, b)),
            (f"{backend} service", lambda p, s, t, b=backend: layer_service(p, s, t, b)),
        ]
    results: dict[str, list[float]] = {name: [] for name, _ in layers}
    for r in range(args.rounds):
        for name, fn in layers:
            print(f"[round {r + 1}/{args.rounds}] {name} ...", file=sys.stderr, flush=True)
            with tcp_pairs(args.conns) as pairs:
                results[name].append(fn(pairs, args.size, args.seconds))
    # The least disturbed round is the layer's cost: on a shared machine other work
    # only ever adds to a round's CPU time (cache misses, stolen cycles), and the
    # medians of one layer could then come out above the next one's.
    floor = min(results["raw epoll"])
    lines = [
        provenance,
        "",
        f"server CPU per {args.size}-byte message, {args.conns} connections, one CPU, "
        f"{args.rounds} rounds (python {sys.version.split()[0]}); best round, and median",
        f"{'layer':22s} {'best':>9s} {'median':>9s} {'over raw':>9s} {'over previous':>14s}",
    ]
    previous = None
    for name, _ in layers:
        vals = results[name]
        best = min(vals)
        step = "" if previous is None else f"{(best - previous) * 1e6:+.2f} us"
        if name.endswith("dispatcher"):
            step = f"{(best - min(results['selectors'])) * 1e6:+.2f} us vs sel"
        lines.append(
            f"{name:22s} {best * 1e6:6.2f} us {statistics.median(vals) * 1e6:6.2f} us "
            f"{(best - floor) * 1e6:+7.2f} us {step:>14s}".rstrip()
        )
        previous = best
    print("\n".join(lines))
    report_file.save(args, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
