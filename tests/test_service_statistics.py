"""Service.statistics(): real loopback TCP, UDP and TLS traffic, counted exactly.

Every test runs on each of the epoll, poll and select backends (those available here).
The peers are plain sockets or the service itself; the loops are bounded by a deadline
that only fails the test, never decides a count.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

import asycamore
from asycamore.servicemodel import (
    DatagramProtocol,
    Protocol,
    Service,
    ServiceStatistics,
)
from asycamore.tcpsocket import DEFAULT_OPTIONS, StreamTransport
from asycamore.udpsocket import DatagramEndpoint

BACKENDS = [
    name
    for name in ("epoll", "poll", "select")
    if name in {info.name for info in asycamore.list_backends() if info.available}
]

SPEC_FIELDS = [
    "connections_open",
    "connections_accepted",
    "connections_closed",
    "connections_failed",
    "bytes_received",
    "bytes_sent",
    "datagrams_received",
    "datagrams_sent",
    "tls_handshakes",
    "tls_handshakes_failed",
    "processes_running",
    "processes_exited",
    "timers_fired",
    "dispatch",
]


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    with Service(request.param) as svc:
        yield svc


def run_until(service: Service, condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached: {service.statistics()}")
        service.run_once(0.01)


def counts(service: Service) -> dict[str, Any]:
    """The statistics without the dispatch context's (which the other tests check)."""
    stats = dataclasses.asdict(service.statistics())
    del stats["dispatch"]
    return stats


def zero(**changes: int) -> dict[str, int]:
    return {name: 0 for name in SPEC_FIELDS if name != "dispatch"} | changes


class Echo(Protocol):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Talker(Protocol):
    """A client that says its piece at once and keeps what it hears."""

    def __init__(self, say: bytes) -> None:
        super().__init__()
        self.say = say
        self.heard = bytearray()
        self.failed: BaseException | None = None
        self.lost = False

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        transport.write(self.say)

    def data_received(self, data: bytes) -> None:
        self.heard += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True

    def connection_failed(self, exc: BaseException) -> None:
        self.failed = exc


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "EOF before the echo"
        data += chunk
    return bytes(data)


# -- the value ------------------------------------------------------------------------------


def test_statistics_is_a_frozen_dataclass_with_the_spec_fields(service: Service) -> None:
    stats = service.statistics()
    assert isinstance(stats, ServiceStatistics)
    assert [field.name for field in dataclasses.fields(stats)] == SPEC_FIELDS
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.bytes_sent = 1  # type: ignore[misc]
    assert counts(service) == zero()


def test_dispatch_is_the_contexts_statistics(service: Service) -> None:
    statistics = getattr(service.dispatcher, "statistics", None)
    dispatch = service.statistics().dispatch
    if statistics is None:
        assert dispatch is None
    else:
        assert type(dispatch) is type(statistics())


class _NoStatistics:
    """A dispatch context without statistics(): everything else is the real one's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "statistics":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __contains__(self, target: object) -> bool:
        return target in self._inner


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispatch_is_none_for_a_context_without_statistics(backend: str) -> None:
    with asycamore.create_dispatcher(backend) as inner:
        context = _NoStatistics(inner)
        with Service(dispatcher=context) as service:
            assert service.statistics().dispatch is None


# -- TCP ------------------------------------------------------------------------------------


def test_tcp_server_counts_accepts_bytes_and_closes_exactly(service: Service) -> None:
    port = service.listen_tcp(Echo, "127.0.0.1", 0).port
    messages = [b"a" * 1, b"b" * 1000, b"c" * 70_000]
    total = sum(map(len, messages))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        run_until(service, lambda: service.statistics().connections_accepted == 1)
        assert counts(service) == zero(connections_open=1, connections_accepted=1)
        for message in messages:
            client.sendall(message)
        run_until(service, lambda: service.statistics().bytes_sent == total)
        assert recv_exactly(client, total) == b"".join(messages)
    run_until(service, lambda: service.statistics().connections_closed == 1)
    assert counts(service) == zero(
        connections_accepted=1, connections_closed=1, bytes_received=total, bytes_sent=total
    )


def test_tcp_client_counts_bytes_each_way_exactly(service: Service) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        talker = Talker(b"q" * 1234)
        service.connect_tcp(lambda: talker, "127.0.0.1", server.getsockname()[1])
        run_until(service, lambda: service.statistics().bytes_sent == 1234)
        peer, _ = server.accept()
        with peer:
            assert recv_exactly(peer, 1234) == talker.say
            peer.sendall(b"r" * 567)
        run_until(service, lambda: talker.lost)
    assert talker.heard == b"r" * 567
    assert counts(service) == zero(connections_closed=1, bytes_received=567, bytes_sent=1234)


def test_a_failed_connect_is_counted_failed_not_closed(service: Service) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens on it once closed
    talker = Talker(b"never sent")
    service.connect_tcp(lambda: talker, "127.0.0.1", port)
    run_until(service, lambda: talker.failed is not None)
    assert isinstance(talker.failed, ConnectionRefusedError)
    assert counts(service) == zero(connections_failed=1)


def test_a_connect_cancelled_by_close_is_counted_failed(service: Service) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        talker = Talker(b"")
        transport = service.connect_tcp(lambda: talker, "127.0.0.1", server.getsockname()[1])
        transport.close()  # still connecting: no loop round has run
    assert isinstance(talker.failed, ConnectionAbortedError)
    assert counts(service) == zero(connections_failed=1)


def test_transports_outside_a_service_count_nowhere(service: Service) -> None:
    assert DEFAULT_OPTIONS.counters is None
    assert service.options.counters is not None
    assert service.options.merged({"high_water": 1000}).counters is service.options.counters


# -- UDP ------------------------------------------------------------------------------------


class DatagramEcho(DatagramProtocol):
    def connection_made(self, transport: DatagramEndpoint) -> None:
        self.endpoint = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.endpoint.sendto(data, addr)


def test_udp_counts_datagrams_and_their_bytes_exactly(service: Service) -> None:
    port = service.bind_udp(DatagramEcho, "127.0.0.1", 0).port
    sizes = [0, 1, 512, 9000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for size in sizes:
            client.sendto(b"d" * size, ("127.0.0.1", port))
        run_until(service, lambda: service.statistics().datagrams_sent == len(sizes))
        assert sorted(len(client.recv(65536)) for _ in sizes) == sizes
    total = sum(sizes)
    assert counts(service) == zero(
        datagrams_received=4, datagrams_sent=4, bytes_received=total, bytes_sent=total
    )


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_tls_handshakes_both_sides_and_every_byte_sent_is_received(
    service: Service, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, client = contexts
    port = service.listen_tcp(Echo, "127.0.0.1", 0, ssl=server).port
    talker = Talker(b"t" * 5000)
    transport = service.connect_tcp(
        lambda: talker, "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    run_until(service, lambda: len(talker.heard) == 5000)
    stats = service.statistics()
    assert (stats.tls_handshakes, stats.tls_handshakes_failed) == (2, 0)
    transport.close()
    run_until(service, lambda: service.statistics().connections_closed == 2)
    stats = service.statistics()
    # Both ends are the service's: what one sent (records, handshakes) the other read.
    assert stats.bytes_sent == stats.bytes_received > 2 * 5000
    assert counts(service) | {"bytes_received": 0, "bytes_sent": 0} == zero(
        connections_accepted=1, connections_closed=2, tls_handshakes=2
    )


def test_a_failed_tls_handshake_is_counted_and_the_connection_closed(
    service: Service, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, _ = contexts
    port = service.listen_tcp(Echo, "127.0.0.1", 0, ssl=server).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a ClientHello
        run_until(service, lambda: service.statistics().tls_handshakes_failed == 1)
    run_until(service, lambda: service.statistics().connections_closed == 1)
    stats = service.statistics()
    assert stats.bytes_received == len(b"GET / HTTP/1.0\r\n\r\n")
    assert counts(service) | {"bytes_sent": 0} == zero(
        connections_accepted=1,
        connections_closed=1,
        tls_handshakes_failed=1,
        bytes_received=stats.bytes_received,
    )


def test_a_client_handshake_that_does_not_verify_fails_on_both_sides(
    service: Service, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, _ = contexts
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # not the CA that issued the server's cert
    port = service.listen_tcp(Echo, "127.0.0.1", 0, ssl=server).port
    talker = Talker(b"")
    service.connect_tcp(lambda: talker, "127.0.0.1", port, ssl=stranger)
    run_until(service, lambda: service.statistics().connections_closed == 2)
    assert isinstance(talker.failed, ssl.SSLCertVerificationError)
    stats = service.statistics()
    assert (stats.tls_handshakes, stats.tls_handshakes_failed) == (0, 2)
    # The TCP connect succeeded: a handshake failure, not a failed connect.
    assert stats.connections_failed == 0


# -- timers ---------------------------------------------------------------------------------


def test_timers_fired_counts_the_calls_made(service: Service) -> None:
    made: list[str] = []
    for name in "abc":
        service.call_later(0, made.append, name)
    service.call_later(0, made.append, "cancelled").cancel()

    def cancel_the_next() -> None:
        victim.cancel()

    canceller = service.call_later(0, cancel_the_next)  # runs first: scheduled first
    victim = service.call_later(0, made.append, "cancelled in the batch")
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 4:
            repeating.cancel()

    repeating = service.call_every(0.001, tick)
    run_until(service, lambda: len(ticks) == 4 and len(made) == 3)
    assert canceller.cancelled is False
    assert made == ["a", "b", "c"]
    assert service.statistics().timers_fired == 3 + 1 + 4
