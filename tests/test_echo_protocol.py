"""EchoProtocol hands its transport's write out as data_received (no frame per message):
what that must not break, in one process on a socket pair."""

from __future__ import annotations

import contextlib
import socket

from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Service
from asycamore.tcpsocket import Connection


def _serve_pair(service: Service, protocol: object) -> tuple[socket.socket, Connection]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    conn = Connection(service.dispatcher, ours, protocol, recv_buffer=memoryview(bytearray(4096)))  # type: ignore[arg-type]
    return theirs, conn


def _pump_until(service: Service, predicate: object) -> None:
    for _ in range(200):
        if predicate():  # type: ignore[operator]
            return
        service.run_once(0.01)
    raise AssertionError("timed out")


def test_echo_protocol_echoes_and_calls_write_directly() -> None:
    with Service() as service:
        protocol = EchoProtocol()
        assert protocol.data_received(b"ignored") is None  # before connection_made: a no-op
        peer, conn = _serve_pair(service, protocol)
        assert protocol.data_received == conn.write  # bound once connected
        peer.sendall(b"hello")
        received = b""

        def got() -> bool:
            nonlocal received
            peer.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                received += peer.recv(64)
            return received == b"hello"

        _pump_until(service, got)
        conn.close()
        peer.close()


def test_a_subclass_overriding_data_received_is_called() -> None:
    seen: list[bytes] = []

    class Recording(EchoProtocol):
        def data_received(self, data: bytes) -> None:  # type: ignore[override]
            seen.append(bytes(data))

    with Service() as service:
        peer, conn = _serve_pair(service, Recording())
        peer.sendall(b"abc")
        _pump_until(service, lambda: seen == [b"abc"])
        conn.close()
        peer.close()
