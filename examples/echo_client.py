#!/usr/bin/env python3
"""An echo client written with asycamore.tcpsocket alone: non-blocking connects with a
timeout, then ping-pong exchanges, every byte checked.

    python examples/echo_client.py --port 8007 --connections 10 --count 1000

Exits 0 if every message came back intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

import asycamore
from asycamore.tcpsocket import StreamTransport, connect_tcp
from asycamore.timers import Timers


class PingPong:
    """Sends a message, waits for all of it to come back, sends the next one."""

    def __init__(self, count: int, size: int, results: dict[str, int]) -> None:
        self.remaining = count
        self.message = os.urandom(size)
        self.received = bytearray()
        self.results = results

    def connection_made(self, connection: StreamTransport) -> None:
        self.connection = connection
        self.connection.write(self.message)

    def connection_failed(self, exc: BaseException) -> None:
        print(f"connect failed: {exc}", file=sys.stderr)
        self.results["failed"] += 1

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) < len(self.message):
            return
        if self.received != self.message:
            print("echo mismatch", file=sys.stderr)
            self.results["failed"] += 1
            self.connection.abort()
            return
        self.results["messages"] += 1
        self.received.clear()
        self.remaining -= 1
        if self.remaining:
            self.connection.write(self.message)
        else:
            self.connection.close()

    def eof_received(self) -> bool | None:
        if self.remaining:
            print("the server closed the connection early", file=sys.stderr)
            self.results["failed"] += 1
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            print(f"connection lost: {exc}", file=sys.stderr)
            self.results["failed"] += 1
        self.results["done"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--count", type=int, default=100, help="messages per connection")
    parser.add_argument("--size", type=int, default=64, help="bytes per message")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after this")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    args = parser.parse_args(argv)

    timers = Timers()
    results = {"messages": 0, "failed": 0, "done": 0}
    deadline = time.monotonic() + args.timeout

    def before_dispatch(dispatcher: Any, dispatchvars: Any) -> None:
        timers.before_dispatch(dispatcher, dispatchvars)
        if results["done"] + results["failed"] >= args.connections:
            raise StopIteration
        if time.monotonic() > deadline:
            print("timed out", file=sys.stderr)
            results["failed"] += 1
            raise StopIteration
        left = deadline - time.monotonic()
        timeout = dispatchvars["timeout"]
        dispatchvars["timeout"] = left if timeout is None else min(timeout, left)

    started = time.perf_counter()
    with asycamore.create_dispatcher(args.backend) as dispatcher:
        # connect_tcp takes a protocol factory: a new PingPong for each connection.
        factory = functools.partial(PingPong, args.count, args.size, results)
        for _ in range(args.connections):
            connect_tcp(dispatcher, factory, args.host, args.port, timeout=5, timers=timers)
        asycamore.iterate(dispatcher, timeout=None, before_dispatch=before_dispatch)
    elapsed = time.perf_counter() - started
    rate = results["messages"] / elapsed if elapsed else 0.0
    print(
        f"{results['messages']} messages echoed on {args.connections} connection(s) "
        f"in {elapsed:.2f} s ({rate:.0f}/s), {results['failed']} failure(s)"
    )
    ok = results["failed"] == 0 and results["messages"] == args.connections * args.count
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
