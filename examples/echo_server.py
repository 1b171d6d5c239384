#!/usr/bin/env python3
"""A TCP echo server written with asycamore.tcpsocket alone (no service model).

It shows the moving parts a service model hides: a dispatch context from the factory,
a Listener that makes a handler per connection, Timers for the listener's back-off, and
asycamore.iterate as the main loop, with Timers.before_dispatch setting its timeout.

    python examples/echo_server.py --port 8007
    python examples/echo_client.py --port 8007

It prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM (or --duration).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import asycamore
from asycamore.tcpsocket import Connection, listen_tcp
from asycamore.timers import Timers


class EchoHandler:
    """The handler of one connection: writes back what it reads."""

    # Ask for memoryviews of the shared receive buffer: no copy on the way through.
    receive_memoryview = True

    def connection_made(self, connection: Connection) -> None:
        self.connection = connection

    def data_received(self, data: bytes) -> None:
        self.connection.write(data)  # write() copies whatever it has to buffer

    def eof_received(self) -> bool | None:
        return None  # close once everything is written back

    def connection_lost(self, exc: BaseException | None) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)

    # SIGTERM ends the loop like Ctrl-C does: the exception leaves iterate().
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    timers = Timers()
    connections: set[Connection] = set()
    stop = False

    def before_dispatch(dispatcher: Any, dispatchvars: Any) -> None:
        timers.before_dispatch(dispatcher, dispatchvars)  # runs timers, sets timeout
        if stop:
            raise StopIteration  # ends iterate() normally

    def stop_now() -> None:
        nonlocal stop
        stop = True

    with asycamore.create_dispatcher(args.backend) as dispatcher:
        listener = listen_tcp(
            dispatcher,
            EchoHandler,
            args.host,
            args.port,
            timers=timers,  # for the back-off when descriptors run out
            on_connection=connections.add,
            on_connection_closed=connections.discard,
        )
        print(f"listening on {args.host}:{listener.port}", flush=True)
        if args.duration is not None:
            timers.call_later(args.duration, stop_now)
        try:
            asycamore.iterate(dispatcher, timeout=None, before_dispatch=before_dispatch)
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
            for connection in list(connections):
                connection.abort()
    return 0


if __name__ == "__main__":
    sys.exit(main())
