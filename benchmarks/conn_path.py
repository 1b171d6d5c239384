"""Server CPU per short connection (accept, 64-byte echo, EOF, close), in one process.

    python benchmarks/conn_path.py [--batch 32] [--seconds 1] [--rounds 3] [--profile]
                                   [--out FILE | --no-save]

Each round, the client side opens *batch* connections, sends 64 bytes on each and
half-closes them; the server side accepts, echoes, sees the EOF and closes (timed); then
the client side reads the echoes and closes (not timed, with SO_LINGER 0 so no
TIME_WAIT piles up).  Only the server's work is timed, on one CPU.  Subjects:

    selectors   a minimal selectors accept/echo/close loop: the pure-Python floor
    service     asycamore: Service.listen_tcp(EchoProtocol) driven by Service.run_once

``--profile`` also prints the asycamore service's cProfile, per connection.

The report is printed and written to ``benchmarks/results/conn_path.txt`` (``--out FILE``
elsewhere, ``--no-save`` nowhere), under a line saying when, with what command and on
what machine and Python it was measured.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import selectors
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

import report_file  # benchmarks/report_file.py, beside this file

from asycamore.bench import harness
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Service

MESSAGE = b"x" * 64
Step = Callable[[], int]


def open_clients(address: tuple[str, int], count: int) -> list[socket.socket]:
    """*count* clients that connected, sent the message and half-closed."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.connect(address)
        client.send(MESSAGE)
        client.shutdown(socket.SHUT_WR)
        clients.append(client)
    return clients


def finish_clients(clients: list[socket.socket]) -> None:
    """Read each echo up to the server's EOF, then close."""
    for client in clients:
        while client.recv(4096):
            pass
        client.close()


def drive(address: tuple[str, int], step: Step, batch: int, seconds: float) -> float:
    """Median server seconds per connection over rounds lasting about *seconds*."""
    per: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(per) < 10:
        clients = open_clients(address, batch)
        # This thread's CPU time, not the wall clock: the server's own cost, which other
        # processes on a shared machine do not inflate (the clients are not timed).
        t0 = time.thread_time()
        done = 0
        while done < batch:
            done += step()
        per.append((time.thread_time() - t0) / batch)
        finish_clients(clients)
    return statistics.median(per)


def selectors_server() -> tuple[tuple[str, int], Step, Callable[[], None]]:
    """The minimal selectors loop; returns (address, step, close)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    closed = 0

    def on_conn(sock: socket.socket) -> None:
        nonlocal closed
        data = sock.recv(65536)
        if data:
            sock.send(data)
        else:
            sel.unregister(sock)
            sock.close()
            closed += 1

    def on_accept(lsock: socket.socket) -> None:
        while True:
            try:
                sock, _ = lsock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(sock, selectors.EVENT_READ, on_conn)

    sel.register(listener, selectors.EVENT_READ, on_accept)

    def step() -> int:
        before = closed
        for key, _ in sel.select(1.0):
            key.data(key.fileobj)
        return closed - before

    def close() -> None:
        sel.close()
        listener.close()

    host, port = listener.getsockname()[:2]
    return (host, port), step, close


def asycamore_server(backend: str) -> tuple[tuple[str, int], Step, Callable[[], None]]:
    """The echo service; returns (address, step, close)."""
    service = Service(backend)
    closed = 0

    class CountingEcho(EchoProtocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            nonlocal closed
            closed += 1
            super().connection_lost(exc)

    listener = service.listen_tcp(CountingEcho, "127.0.0.1", 0)

    def step() -> int:
        before = closed
        service.run_once(1.0)
        return closed - before

    return ("127.0.0.1", listener.port), step, service.close


def main(argv: list[str] | None = None) -> int:
    """Measure, interleaved over rounds, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="epoll")
    parser.add_argument("--profile", action="store_true", help="cProfile the asycamore side")
    report_file.add_arguments(parser, "conn_path.txt")
    args = parser.parse_args(argv)
    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    cpu, _ = harness.cpu_layout()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    makers: dict[str, Callable[[], tuple[tuple[str, int], Step, Callable[[], None]]]] = {
        "selectors": selectors_server,
        f"asycamore {args.backend} service": lambda: asycamore_server(args.backend),
    }
    results: dict[str, list[float]] = {name: [] for name in makers}
    for r in range(args.rounds):
        for name, make in makers.items():
            print(f"[round {r + 1}/{args.rounds}] {name} ...", file=sys.stderr, flush=True)
            address, step, close = make()
            try:
                results[name].append(drive(address, step, args.batch, args.seconds))
            finally:
                close()
    lines = [
        provenance,
        "",
        f"server CPU per connection (accept, 64-byte echo, EOF, close), batches of "
        f"{args.batch}, one CPU, {args.rounds} rounds (python {sys.version.split()[0]})",
    ]
    floor = statistics.median(results["selectors"])
    for name, vals in results.items():
        med = statistics.median(vals)
        lines.append(
            f"{name:28s} {med * 1e6:7.1f} us  (min {min(vals) * 1e6:.1f}, "
            f"max {max(vals) * 1e6:.1f})  {(med - floor) * 1e6:+.1f} us over selectors"
        )
    if args.profile:
        address, step, close = asycamore_server(args.backend)
        profiler = cProfile.Profile()
        connections = 0
        try:
            for _ in range(100):
                clients = open_clients(address, args.batch)
                profiler.enable()
                done = 0
                while done < args.batch:
                    done += step()
                profiler.disable()
                connections += done
                finish_clients(clients)
        finally:
            close()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs()
        calls = stats.total_calls  # type: ignore[attr-defined]
        lines.append(
            f"\ncProfile of the asycamore side: {calls / connections:.1f} calls/connection"
        )
        stats.sort_stats("tottime").print_stats(30)
        lines.append(out.getvalue())
    report = "\n".join(lines)
    print(report)
    report_file.save(args, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
