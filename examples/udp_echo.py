#!/usr/bin/env python3
"""A UDP echo server and client on asycamore's service model.

The server sends every datagram back to its sender; the client sends --count
datagrams of --size bytes over a connected endpoint, one at a time, checks each echo
byte for byte, and reports a closed port (ICMP port unreachable) as an error.

    python examples/udp_echo.py server --port 9007
    python examples/udp_echo.py client --port 9007 --count 100 --size 1200

The server prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM (or
--duration); the client exits 0 when every datagram came back, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from asycamore.servicemodel import DatagramProtocol, Service
from asycamore.udpsocket import DatagramEndpoint


class EchoServer(DatagramProtocol):
    """Sends each datagram back where it came from."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class EchoClient(DatagramProtocol):
    """Sends *count* datagrams one after the other; each echo triggers the next."""

    def __init__(self, service: Service, count: int, size: int, timeout: float) -> None:
        super().__init__()
        self.service = service
        self.left = count
        self.size = size
        self.timeout = timeout
        self.echoed = 0
        self.error: BaseException | None = None
        self.sent = b""
        self.timer: Any = None

    def connection_made(self, transport: DatagramEndpoint) -> None:
        super().connection_made(transport)
        self.send_next()

    def send_next(self) -> None:
        if self.left == 0:
            self.service.stop()
            return
        self.left -= 1
        self.sent = os.urandom(self.size)
        assert self.transport is not None
        self.transport.sendto(self.sent)
        # UDP may lose a datagram: give up on this one after the timeout.
        self.timer = self.service.call_later(self.timeout, self.timed_out)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data != self.sent:
            return  # a late echo of a datagram given up on
        self.timer.cancel()
        self.echoed += 1
        self.send_next()

    def error_received(self, exc: OSError) -> None:
        self.error = exc  # a closed port: ConnectionRefusedError
        self.service.stop()

    def timed_out(self) -> None:
        self.error = TimeoutError(f"no echo within {self.timeout} s")
        self.service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="server: 0 picks a free port")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    parser.add_argument("--duration", type=float, help="server: stop after this many seconds")
    parser.add_argument("--count", type=int, default=10, help="client: datagrams to send")
    parser.add_argument("--size", type=int, default=512, help="client: bytes per datagram")
    parser.add_argument("--timeout", type=float, default=2.0, help="client: seconds per echo")
    args = parser.parse_args(argv)

    with Service(args.backend) as service:
        if args.role == "server":
            endpoint = service.bind_udp(EchoServer, args.host, args.port)
            host, port = endpoint.address[:2]
            print(f"listening on {host}:{port}", flush=True)
            if args.duration is not None:
                service.call_later(args.duration, service.stop)
            service.serve_forever()
            return 0
        client = EchoClient(service, args.count, args.size, args.timeout)
        service.connect_udp(lambda: client, args.host, args.port)
        service.serve_forever()
        print(f"{client.echoed}/{args.count} datagrams echoed")
        if client.error is not None:
            print(f"error: {client.error}", file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
