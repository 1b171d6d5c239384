#!/usr/bin/env python3
"""Keep many connections open to an echo server, with asycamore.servicemodel.

Opens --connections connections (a few at a time, like a polite load generator), then
every --interval seconds sends a numbered message on each and checks that exactly it
comes back, for --rounds rounds; then closes them all.  Everything is bounded by
--timeout.

    python -m asycamore echo --port 8007 &
    python examples/many_clients.py --port 8007 --connections 500 --rounds 3

Exits 0 if every connection was opened and every message came back intact.
"""

from __future__ import annotations

import argparse
import sys
import time

from asycamore.servicemodel import Protocol, Service, StreamTransport


class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.finished = 0
        self.messages = 0
        self.errors: list[str] = []


class Client(Protocol):
    """One connection: answers to Pinger's ticks, checks what comes back."""

    def __init__(self, number: int, stats: Stats) -> None:
        super().__init__()
        self.number = number
        self.stats = stats
        self.expected = bytearray()
        self.received = bytearray()
        self.done = False

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        self.stats.connected += 1

    def connection_failed(self, exc: BaseException) -> None:
        self.stats.errors.append(f"connection {self.number}: connect failed: {exc}")

    def send(self, round_number: int) -> None:
        message = b"connection %d round %d\n" % (self.number, round_number)
        self.expected += message
        assert self.transport is not None
        self.transport.write(message)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if not self.expected.startswith(self.received):
            self.stats.errors.append(f"connection {self.number}: unexpected bytes")
            assert self.transport is not None
            self.transport.abort()
            return
        if len(self.received) == len(self.expected):
            self.stats.messages += self.received.count(b"\n")
            self.expected.clear()
            self.received.clear()

    def eof_received(self) -> bool | None:
        if not self.done:
            self.stats.errors.append(f"connection {self.number}: closed by the server")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None and not self.done:
            self.stats.errors.append(f"connection {self.number}: {exc}")
        self.stats.finished += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    args = parser.parse_args(argv)

    stats = Stats()
    clients: list[Client] = []
    started = time.monotonic()
    with Service(args.backend, stop_timeout=2.0) as service:

        def new_client() -> Client:
            # The protocol factory of every connect: makes the protocol and keeps it.
            client = Client(len(clients), stats)
            clients.append(client)
            return client

        def open_some() -> None:
            # 50 connects per round: a burst of thousands would overflow the backlog.
            for _ in range(min(50, args.connections - len(clients))):
                service.connect_tcp(new_client, args.host, args.port, timeout=10)
            if len(clients) < args.connections:
                service.call_later(0.01, open_some)
            else:
                service.call_later(0, wait_connected)

        def wait_connected() -> None:
            if stats.connected + len(stats.errors) < args.connections:
                service.call_later(0.05, wait_connected)
            else:
                tick(0)

        def tick(round_number: int) -> None:
            if round_number == args.rounds:
                service.call_later(args.interval, finish)
                return
            for client in clients:
                if client.transport is not None and not client.transport.is_closing():
                    client.send(round_number)
            service.call_later(args.interval, tick, round_number + 1)

        def finish() -> None:
            for client in clients:
                client.done = True
            service.stop()

        def give_up() -> None:
            stats.errors.append(f"timed out after {args.timeout} s")
            finish()

        service.call_soon(open_some)
        service.call_later(args.timeout, give_up)
        service.serve_forever()

    expected = args.connections * args.rounds
    elapsed = time.monotonic() - started
    print(
        f"{stats.connected} connections, {stats.messages}/{expected} messages echoed "
        f"in {elapsed:.2f} s, {len(stats.errors)} error(s)"
    )
    for error in stats.errors[:10]:
        print(f"  {error}", file=sys.stderr)
    ok = not stats.errors and stats.connected == args.connections and stats.messages == expected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
