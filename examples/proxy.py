#!/usr/bin/env python3
"""A TCP proxy on asycamore's service model, with flow control wired across its sides.

For each client it accepts, the proxy connects to the upstream with
``Service.connect_tcp`` and relays bytes both ways.  Each transport has water marks:
when one side's write buffer goes over its high-water mark -- the peer on that side is
not reading -- the transport calls its protocol's ``pause_writing()``, and the proxy
stops reading the *other* side (``pause_reading()``); ``resume_writing()`` resumes it.
Without that wiring (--no-flow-control), a client that sends without reading makes the
proxy buffer everything the upstream sends back; see docs/recipes.rst for the numbers.

    python -m asycamore echo --port 8007 &
    python examples/proxy.py --port 9000 --upstream 127.0.0.1:8007
    python examples/proxy.py --self-test      # an echo upstream, the proxy, a client

It prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM (or --duration).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading

from asycamore.servicemodel import Protocol, Service, StreamTransport


class Relay(Protocol):
    """One side of a proxied connection: what it reads, :attr:`peer` writes."""

    # What a side reads is written by the *other* side: its own full write buffer must
    # not stop its reading (both ends of a busy upstream would wait for each other).
    # The wiring below pauses the side that fills a full buffer instead.
    reads_produce_writes = False

    def __init__(self, proxy: Proxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.peer: StreamTransport | None = None  # the other side's transport

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        self.proxy.open.add(transport)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.write(data)

    def eof_received(self) -> bool | None:
        # Pass the half-close on, and stay open for what the other way still brings.
        assert self.peer is not None
        if self.peer.can_write_eof():
            self.peer.write_eof()
            return True
        self.peer.close()  # TLS has no half-close
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.transport is not None:
            self.proxy.open.discard(self.transport)
        if self.peer is not None:
            if exc is None:
                self.peer.close()  # after what is buffered for it is sent
            else:
                self.peer.abort()

    # The wiring.  pause_writing(): *our* transport holds more than its high-water
    # mark (our peer is slow), so stop reading the side that fills it.
    def pause_writing(self) -> None:
        if self.proxy.flow_control and self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.proxy.flow_control and self.peer is not None:
            self.peer.resume_reading()


class ClientSide(Relay):
    """An accepted client: connects to the upstream, then relays."""

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # until the upstream is connected
        host, port = self.proxy.upstream
        try:
            # Writes to the returned transport before the connect completes would be
            # buffered; reading the client is paused until it does anyway.
            self.peer = self.proxy.service.connect_tcp(
                lambda: UpstreamSide(self.proxy, transport), host, port, timeout=10
            )
        except OSError as exc:  # a numeric address refused at once
            print(f"upstream: {exc}", file=sys.stderr)
            transport.abort(exc)


class UpstreamSide(Relay):
    """The proxy's connection to the upstream for one client."""

    def __init__(self, proxy: Proxy, client: StreamTransport) -> None:
        super().__init__(proxy)
        self.peer = client

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        assert self.peer is not None
        self.peer.resume_reading()

    def connection_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, ConnectionAbortedError):  # not the client leaving first
            print(f"upstream: {exc}", file=sys.stderr)
        assert self.peer is not None
        self.peer.close()


class Proxy:
    """What the relays share: the service, the upstream's address, the wiring switch,
    and the open transports (to measure what they buffer)."""

    def __init__(self, service: Service, upstream: tuple[str, int], flow_control: bool) -> None:
        self.service = service
        self.upstream = upstream
        self.flow_control = flow_control
        self.open: set[StreamTransport] = set()
        self.peak_buffered = 0

    def listen(self, host: str, port: int) -> int:
        return self.service.listen_tcp(lambda: ClientSide(self), host, port).port

    def sample(self) -> None:
        """Note the bytes buffered in the proxy's transports (a call_every callback)."""
        buffered = sum(transport.get_write_buffer_size() for transport in self.open)
        self.peak_buffered = max(self.peak_buffered, buffered)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def self_test(backend: str | None, size: int = 8 << 20, pause: float = 0.5) -> int:
    """An echo upstream and the proxy in one service, a blocking client in a thread:
    it sends *size* bytes without reading for *pause* seconds, then reads them all."""

    class Echo(Protocol):
        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(data)

    payload = os.urandom(size)
    result: dict[str, object] = {}

    with Service(backend) as service:
        upstream = service.listen_tcp(Echo, "127.0.0.1", 0)
        proxy = Proxy(service, ("127.0.0.1", upstream.port), flow_control=True)
        port = proxy.listen("127.0.0.1", 0)
        service.call_every(0.005, proxy.sample)

        def client() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                    sender = threading.Thread(target=sock.sendall, args=(payload,))
                    sender.start()
                    threading.Event().wait(pause)  # send, and do not read, for a while
                    digest, received = hashlib.sha256(), 0
                    while received < size:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            break
                        digest.update(chunk)
                        received += len(chunk)
                    sender.join()
                    sock.shutdown(socket.SHUT_WR)
                    result["eof"] = sock.recv(1) == b""
                    result["intact"] = digest.digest() == hashlib.sha256(payload).digest()
                    result["received"] = received
            except OSError as exc:
                result["error"] = exc
            finally:
                service.call_soon_threadsafe(service.stop)

        thread = threading.Thread(target=client)
        thread.start()
        watchdog = service.call_later(60, service.stop)
        service.serve_forever()
        watchdog.cancel()
        thread.join()

    if "error" in result or not result.get("intact") or not result.get("eof"):
        print(f"self-test failed: {result}", file=sys.stderr)
        return 1
    if proxy.peak_buffered > 1 << 20:
        print(f"self-test failed: {proxy.peak_buffered} bytes buffered", file=sys.stderr)
        return 1
    print(
        f"self-test: relayed {size} bytes both ways, at most "
        f"{proxy.peak_buffered} bytes buffered in the proxy"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--upstream", type=parse_address, help="HOST:PORT to relay to")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--idle-timeout", type=float, help="close a side idle for this many seconds"
    )
    parser.add_argument(
        "--no-flow-control",
        dest="flow_control",
        action="store_false",
        help="do not pause one side while the other's buffer is full (to compare)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="sample the bytes buffered in the proxy every 10 ms; print the peak at exit",
    )
    parser.add_argument("--self-test", action="store_true", help="relay to an echo of its own")
    args = parser.parse_args(argv)

    if args.self_test:
        return self_test(args.backend)
    if args.upstream is None:
        parser.error("--upstream HOST:PORT is needed (or --self-test)")

    with Service(args.backend, stop_timeout=2.0, idle_timeout=args.idle_timeout) as service:
        proxy = Proxy(service, args.upstream, args.flow_control)
        try:
            port = proxy.listen(args.host, args.port)
        except OSError as exc:
            print(f"proxy: {exc.strerror or exc}", file=sys.stderr)  # names the address
            return 2
        print(f"listening on {args.host}:{port}", flush=True)
        if args.measure:
            service.call_every(0.01, proxy.sample)
        if args.duration is not None:
            service.call_later(args.duration, service.stop)
        service.serve_forever()  # SIGINT/SIGTERM stop it gracefully
    if args.measure:
        print(f"peak buffered: {proxy.peak_buffered} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
