#!/usr/bin/env python3
"""A TLS echo server with the service model, and an optional TLS client for it.

    python examples/tls_echo_server.py --cert cert.pem --key key.pem --port 8443
    openssl s_client -connect 127.0.0.1:8443 -CAfile ca.pem -quiet

    python examples/tls_echo_server.py --self-test     # makes a throwaway CA (trustme),
                                                       # serves, and talks to itself

It prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM (or --duration).
Clients that send garbage, or never finish their handshake within --handshake-timeout
seconds, are dropped without disturbing the others; docs/tls.rst explains the rest.
"""

from __future__ import annotations

import argparse
import importlib
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from asycamore.servicemodel import Protocol, Service


class Echo(Protocol):
    """Writes back what it reads; the transport is a TLSConnection."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.getpeername()
        print(f"{peer[0]}:{peer[1]} speaks {transport.tls_version}", file=sys.stderr)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def handshake_failed(self, exc: BaseException) -> None:
        # Optional: without it a failed handshake is only logged at debug level.
        print(f"a client failed its handshake: {exc}", file=sys.stderr)


class Client(Protocol):
    """Sends one message, checks the echo, closes (with a close_notify)."""

    message = b"hello over TLS\n"

    def __init__(self) -> None:
        super().__init__()
        self.received = b""
        self.result: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.write(self.message)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.message) and self.transport is not None:
            self.transport.close()

    def connection_failed(self, exc: BaseException) -> None:
        self.result = f"failed: {exc}"  # e.g. ssl.SSLCertVerificationError

    def connection_lost(self, exc: BaseException | None) -> None:
        ok = exc is None and self.received == self.message
        self.result = "echoed" if ok else f"lost: {exc!r} after {self.received!r}"


def throwaway_pki(where: Path, trustme: Any) -> tuple[str, str, ssl.SSLContext]:
    """A CA, a certificate for 127.0.0.1/localhost, and a client context trusting it."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = where / "cert.pem", where / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return str(cert), str(key), client_context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--cert", help="PEM certificate chain")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--handshake-timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--self-test", action="store_true", help="serve and connect to self")
    args = parser.parse_args(argv)

    trustme: Any = None
    if args.self_test:
        try:
            trustme = importlib.import_module("trustme")  # a test dependency
        except ImportError as exc:
            # One line that says what to do, not a traceback: the example is often run
            # from a checkout without the test extras.
            print(f"--self-test needs trustme ({exc}): pip install trustme", file=sys.stderr)
            return 1

    with tempfile.TemporaryDirectory() as tmp:
        client_context = None
        if trustme is not None:
            args.cert, args.key, client_context = throwaway_pki(Path(tmp), trustme)
        if not (args.cert and args.key):
            parser.error("--cert and --key are needed (or --self-test)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION
        context.load_cert_chain(args.cert, args.key)

        with Service() as service:
            listener = service.listen_tcp(
                Echo, args.host, args.port, ssl=context,
                handshake_timeout=args.handshake_timeout,
            )  # fmt: skip
            print(f"listening on {args.host}:{listener.port}", flush=True)
            if client_context is not None:
                client = Client()
                # Verified against the throwaway CA; the name checked is "localhost".
                # connect_tcp takes a protocol factory: this one returns our client.
                service.connect_tcp(
                    lambda: client, "127.0.0.1", listener.port, ssl=client_context,
                    server_hostname="localhost", timeout=5,
                )  # fmt: skip
                deadline = service.time() + 10  # bounded, whatever happens
                while client.result is None and service.time() < deadline:
                    service.run_once(0.1)
                print(f"self-test: {client.result}")
                return 0 if client.result == "echoed" else 1
            if args.duration is not None:
                service.call_later(args.duration, service.stop)
            service.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
