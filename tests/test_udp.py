"""UDP endpoints (asycamore.udpsocket) against real peers: plain Python sockets and
``asycamore echo --udp`` in a subprocess.

Everything is on loopback and bounded: sockets have timeouts, loops have deadlines,
and the subprocess is killed if it does not exit when told.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asycamore.servicemodel import DatagramProtocol, Service
from asycamore.tcpsocket import TransportOptions
from asycamore.udpsocket import (
    MAX_PAYLOAD_IPV4,
    MAX_PAYLOAD_IPV6,
    DatagramEndpoint,
    DatagramTooLarge,
    connect_udp,
    create_datagram_socket,
    create_datagram_sockets,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="this machine has no IPv6 loopback (::1)")


class Recorder(DatagramProtocol):
    """Keeps every callback's arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.lost: list[BaseException | None] = []
        self.pauses = 0
        self.resumes = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1


class Echo(DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


def run_until(service: Service, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        service.run_once(0.05)


def _closed_port(family: int = socket.AF_INET) -> int:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def service() -> Iterator[Service]:
    with Service() as svc:
        yield svc


# -- byte-exact round trips with a plain socket peer ------------------------------------------

SIZES = st.lists(
    st.one_of(st.integers(0, 2048), st.integers(0, MAX_PAYLOAD_IPV4)), min_size=1, max_size=8
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=SIZES, seed=st.integers(0, 2**32 - 1))
def test_bound_endpoint_echoes_random_sizes_to_a_plain_socket(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    with Service() as service, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        endpoint = service.bind_udp(Echo, "127.0.0.1", 0)
        peer.settimeout(5)
        for size in sizes:
            data = rng.randbytes(size)
            peer.sendto(data, endpoint.getsockname())
            got: list[bytes] = []

            def echoed(got: list[bytes] = got) -> bool:
                ready, _, _ = select.select([peer], [], [], 0)
                if ready:
                    got.append(peer.recv(65536))
                return bool(got)

            run_until(service, echoed)
            assert got[0] == data


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=SIZES, seed=st.integers(0, 2**32 - 1))
def test_connected_endpoint_sends_random_sizes_to_a_plain_socket(
    sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    with Service() as service, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        handler = Recorder()
        endpoint = service.connect_udp(lambda: handler, *peer.getsockname())
        assert endpoint.remote_address == peer.getsockname()
        for size in sizes:
            data = rng.randbytes(size)
            endpoint.sendto(data)
            received, addr = peer.recvfrom(65536)
            assert received == data
            assert addr == endpoint.getsockname()
            peer.sendto(received[::-1], addr)  # and back, reversed
            run_until(service, lambda: bool(handler.datagrams))
            assert handler.datagrams.pop() == (data[::-1], peer.getsockname())
        assert handler.errors == []


@needs_ipv6
def test_ipv6_round_trip_of_the_largest_datagram(service: Service) -> None:
    endpoint = service.bind_udp(Echo, "::1", 0)
    assert endpoint.max_payload == MAX_PAYLOAD_IPV6
    handler = Recorder()
    client = service.connect_udp(lambda: handler, "::1", endpoint.getsockname()[1])
    data = os.urandom(MAX_PAYLOAD_IPV6)
    client.sendto(data)
    client.sendto(b"")  # empty datagrams are datagrams too
    run_until(service, lambda: len(handler.datagrams) == 2)
    assert [d for d, _ in handler.datagrams] == [data, b""]
    assert handler.datagrams[0][1][:2] == ("::1", endpoint.getsockname()[1])


@needs_ipv6
def test_bind_udp_all_localhost_serves_both_families_on_one_port(service: Service) -> None:
    endpoints = service.bind_udp_all(Echo, "localhost", 0)
    families = {ep.sock.family for ep in endpoints}
    assert families == {socket.AF_INET, socket.AF_INET6}
    port = endpoints[0].getsockname()[1]
    assert {ep.getsockname()[1] for ep in endpoints} == {port}
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_DGRAM) as peer:
            peer.setblocking(False)
            peer.sendto(host.encode(), (host, port))
            got: list[bytes] = []

            def echoed(peer: socket.socket = peer, got: list[bytes] = got) -> bool:
                with contextlib.suppress(BlockingIOError):
                    got.append(peer.recv(100))
                return bool(got)

            run_until(service, echoed)
            assert got == [host.encode()]


# -- errors -------------------------------------------------------------------------------


def test_sockets_bound_ahead_are_served_by_serve_udp_socket(service: Service) -> None:
    # create_datagram_sockets binds every address on one port (what a parent does
    # before it forks its workers); Service.serve_udp_socket serves one of them.
    socks = create_datagram_sockets("localhost", 0)
    assert len(socks) == (2 if HAVE_IPV6 else 1)
    assert len({sock.getsockname()[1] for sock in socks}) == 1
    assert all(not sock.getblocking() for sock in socks)
    echoes = []
    for sock in socks:

        class Echo(DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                assert self.transport is not None
                self.transport.sendto(data, addr)

        echoes.append(service.serve_udp_socket(Echo, sock))
    family = socks[0].family
    host = socks[0].getsockname()[0]
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.settimeout(0)
        peer.sendto(b"ahead", (host, socks[0].getsockname()[1]))
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "no echo"
            service.run_once(0.05)
            with contextlib.suppress(BlockingIOError):
                assert peer.recv(64) == b"ahead"
                break
    for endpoint in echoes:
        endpoint.close()
    assert all(sock.fileno() == -1 for sock in socks)  # the endpoints owned them


def test_too_large_datagram_raises_and_queues_nothing(service: Service) -> None:
    handler = Recorder()
    endpoint = service.bind_udp(lambda: handler, "127.0.0.1", 0)
    with pytest.raises(DatagramTooLarge) as info:
        endpoint.sendto(b"x" * (MAX_PAYLOAD_IPV4 + 1), ("127.0.0.1", _closed_port()))
    assert info.value.errno == errno.EMSGSIZE
    assert isinstance(info.value, OSError)
    assert endpoint.write_buffer_size == 0
    assert not endpoint.is_closing()
    # The largest legal one goes out (to a port nobody listens on: no error on an
    # unconnected socket).
    endpoint.sendto(b"x" * MAX_PAYLOAD_IPV4, ("127.0.0.1", _closed_port()))
    assert handler.errors == []


@needs_ipv6
def test_too_large_ipv6_datagram_raises(service: Service) -> None:
    endpoint = service.bind_udp(Recorder, "::1", 0)
    with pytest.raises(DatagramTooLarge):
        endpoint.sendto(b"x" * (MAX_PAYLOAD_IPV6 + 1), ("::1", 9))


def test_closed_peer_port_reaches_error_received(service: Service) -> None:
    handler = Recorder()
    endpoint = service.connect_udp(lambda: handler, "127.0.0.1", _closed_port())
    endpoint.sendto(b"anyone there?")
    run_until(service, lambda: bool(handler.errors))
    assert isinstance(handler.errors[0], ConnectionRefusedError)
    assert handler.errors[0].errno == errno.ECONNREFUSED
    # The endpoint stays open and usable: the next datagram reports the same.
    assert not endpoint.is_closing()
    endpoint.sendto(b"still?")
    run_until(service, lambda: len(handler.errors) >= 2)
    assert handler.lost == []


@needs_ipv6
def test_closed_ipv6_peer_port_reaches_error_received(service: Service) -> None:
    handler = Recorder()
    endpoint = service.connect_udp(lambda: handler, "::1", _closed_port(socket.AF_INET6))
    endpoint.sendto(b"anyone there?")
    run_until(service, lambda: bool(handler.errors))
    assert handler.errors[0].errno == errno.ECONNREFUSED


class FlakySocket(socket.socket):
    """A real UDP socket whose sends can be made to fail: EAGAIN (full send buffer)
    or a given error, which a loopback socket will not produce on demand."""

    fail_with: OSError | None = None

    def sendto(self, *args: Any) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        return super().sendto(*args)


def test_kernel_emsgsize_goes_to_error_received(service: Service) -> None:
    sock = FlakySocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    handler = Recorder()
    endpoint = DatagramEndpoint(service.dispatcher, sock, handler)
    sock.fail_with = OSError(errno.EMSGSIZE, "Message too long")  # e.g. a path MTU
    endpoint.sendto(b"x" * 2000, ("127.0.0.1", 9))
    assert [e.errno for e in handler.errors] == [errno.EMSGSIZE]
    assert not endpoint.is_closing()
    endpoint.abort()


def test_send_queue_pauses_and_resumes_at_the_water_marks(service: Service) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        sock = FlakySocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        handler = Recorder()
        endpoint = DatagramEndpoint(
            service.dispatcher, sock, handler, TransportOptions(high_water=10_000, low_water=2_500)
        )
        sock.fail_with = BlockingIOError(errno.EAGAIN, "full")
        payloads = [bytes([i]) * 3000 for i in range(5)]
        for data in payloads[:3]:
            endpoint.sendto(bytearray(data), peer.getsockname())  # copied when queued
        assert (handler.pauses, endpoint.write_buffer_size) == (0, 9000)
        assert endpoint.reading
        endpoint.sendto(payloads[3], peer.getsockname())
        assert handler.pauses == 1  # above the high-water mark: once
        assert not endpoint.reading  # and reading stops, as on streams
        endpoint.sendto(payloads[4], peer.getsockname())
        assert handler.pauses == 1
        service.run_once(0.05)  # writable, but every send still fails with EAGAIN
        assert endpoint.write_buffer_size == 15_000 and handler.resumes == 0
        sock.fail_with = None
        run_until(service, lambda: handler.resumes == 1)
        assert endpoint.write_buffer_size == 0
        assert endpoint.reading
        assert [peer.recv(65536) for _ in payloads] == payloads  # all, in order
        assert handler.errors == []


def test_close_flushes_the_queue_and_abort_drops_it(service: Service) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        for graceful in (True, False):
            sock = FlakySocket(socket.AF_INET, socket.SOCK_DGRAM)
            handler = Recorder()
            endpoint = DatagramEndpoint(service.dispatcher, sock, handler)
            sock.fail_with = BlockingIOError(errno.EAGAIN, "full")
            endpoint.sendto(b"queued", peer.getsockname())
            if graceful:
                endpoint.close()
                assert endpoint.is_closing() and not endpoint.closed
                endpoint.sendto(b"after close: dropped", peer.getsockname())
                sock.fail_with = None
                run_until(service, lambda: endpoint.closed)  # noqa: B023 - called at once
                assert peer.recv(100) == b"queued"
            else:
                endpoint.abort()
            assert handler.lost == [None]
            assert endpoint.closed and endpoint.fileno() == -1
            endpoint.close()
            endpoint.abort()
            assert handler.lost == [None]  # exactly once
        with pytest.raises(BlockingIOError):
            peer.setblocking(False)
            peer.recv(100)  # the aborted one's datagram never went out


def test_sendto_addresses_are_checked(service: Service) -> None:
    bound = service.bind_udp(Recorder, "127.0.0.1", 0)
    with pytest.raises(ValueError, match="needs an address"):
        bound.sendto(b"x")
    connected = service.connect_udp(Recorder, *bound.getsockname())
    with pytest.raises(ValueError, match="connected to"):
        connected.sendto(b"x", ("127.0.0.1", _closed_port()))
    connected.sendto(b"x", bound.getsockname())  # its own peer is fine


def test_a_readable_event_reads_a_bounded_batch(service: Service) -> None:
    handler = Recorder()
    # read_batch is the endpoint's own setting (bind_udp takes socket options and
    # water marks only).
    sock = create_datagram_socket("127.0.0.1", 0)
    endpoint = DatagramEndpoint(service.dispatcher, sock, handler, read_batch=4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for i in range(10):
            peer.sendto(bytes([i]), endpoint.getsockname())
    time.sleep(0.05)
    endpoint.handle_read_event()
    assert len(handler.datagrams) == 4  # fairness: the others wait for the next event
    run_until(service, lambda: len(handler.datagrams) == 10)
    assert [d for d, _ in handler.datagrams] == [bytes([i]) for i in range(10)]
    endpoint.abort()


# -- broadcast ---------------------------------------------------------------------------

# The loopback network's own broadcast address: nothing leaves the machine.
LOOPBACK_BROADCAST = "127.255.255.255"


def test_broadcast_is_refused_without_opt_in(service: Service) -> None:
    handler = Recorder()
    endpoint = service.bind_udp(lambda: handler, "127.0.0.1", 0)
    assert not endpoint.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
    endpoint.sendto(b"to all", (LOOPBACK_BROADCAST, _closed_port()))
    assert [type(e) for e in handler.errors] == [PermissionError]
    assert handler.errors[0].errno == errno.EACCES
    assert not endpoint.is_closing()


def test_broadcast_is_sent_with_allow_broadcast(service: Service) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind((LOOPBACK_BROADCAST, 0))
    except OSError as exc:
        receiver.close()
        pytest.skip(f"cannot bind the loopback broadcast address: {exc}")
    with receiver:
        receiver.settimeout(5)
        handler = Recorder()
        endpoint = service.bind_udp(lambda: handler, "127.0.0.1", 0, allow_broadcast=True)
        assert endpoint.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        endpoint.sendto(b"to all", (LOOPBACK_BROADCAST, receiver.getsockname()[1]))
        assert handler.errors == []
        assert receiver.recvfrom(100) == (b"to all", endpoint.getsockname())


# -- the service ---------------------------------------------------------------------------


def test_service_stop_closes_endpoints_and_ends_the_loop(service: Service) -> None:
    handlers = [Recorder(), Recorder()]
    service.bind_udp(lambda: handlers[0], "127.0.0.1", 0)
    service.connect_udp(lambda: handlers[1], "127.0.0.1", _closed_port())
    assert len(service.endpoints) == 2
    service.call_later(0.05, service.stop)
    started = time.monotonic()
    service.serve_forever(handle_signals=False)
    assert time.monotonic() - started < 5
    assert [h.lost for h in handlers] == [[None], [None]]
    assert service.endpoints == []


def test_a_handler_that_raises_aborts_its_endpoint(service: Service) -> None:
    class Broken(Recorder):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            raise RuntimeError("boom")

    handler = Broken()
    endpoint = service.bind_udp(lambda: handler, "127.0.0.1", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.sendto(b"x", endpoint.getsockname())
    run_until(service, lambda: endpoint.closed)
    assert [type(e) for e in handler.lost] == [RuntimeError]
    assert service.endpoints == []


def test_connect_udp_at_the_tcpsocket_level_without_a_service() -> None:
    from asycamore import create_dispatcher

    with create_dispatcher() as context, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        handler = Recorder()
        endpoint = connect_udp(context, lambda: handler, "localhost", peer.getsockname()[1])
        assert handler.transport is endpoint
        assert endpoint.remote_address == peer.getsockname()
        endpoint.sendto(b"hi")
        data, addr = peer.recvfrom(10)
        peer.sendto(data.upper(), addr)
        deadline = time.monotonic() + 5
        while not handler.datagrams and time.monotonic() < deadline:
            context.dispatch_once(0.05)
        assert handler.datagrams == [(b"HI", peer.getsockname())]
        endpoint.close()
        assert handler.lost == [None]


# -- asycamore echo --udp ------------------------------------------------------------------


@contextlib.contextmanager
def udp_echo(host: str = "127.0.0.1", backend: str | None = None) -> Iterator[tuple[str, int]]:
    extra = ["--backend", backend] if backend else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asycamore",
            "echo",
            "--udp",
            "--host",
            host,
            "--port",
            "0",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the echo server did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on "), line
        where, _, port = line.split()[-1].rpartition(":")
        yield where.strip("[]"), int(port)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert b"Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def _ping(family: int, address: tuple[str, int], payloads: list[bytes]) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.settimeout(5)
        peer.connect(address)
        for data in payloads:
            peer.send(data)
            assert peer.recv(65536) == data


def test_cli_udp_echo_is_byte_exact_up_to_the_largest_datagram(asycamore_backend: str) -> None:
    rng = random.Random(20261201)
    sizes = [0, 1, 1472, 1473, 9000, MAX_PAYLOAD_IPV4] + [
        rng.randrange(MAX_PAYLOAD_IPV4 + 1) for _ in range(40)
    ]
    payloads = [rng.randbytes(size) for size in sizes]
    with udp_echo(backend=asycamore_backend) as (host, port):
        assert host == "127.0.0.1"
        _ping(socket.AF_INET, (host, port), payloads)
        # Several senders at once: each gets its own datagrams back.
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        try:
            for i, peer in enumerate(peers):
                peer.settimeout(5)
                peer.sendto(b"peer %d" % i, (host, port))
            for i, peer in enumerate(peers):
                assert peer.recvfrom(100) == (b"peer %d" % i, (host, port))
        finally:
            for peer in peers:
                peer.close()


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_cli_udp_echo_over_ipv6(host: str) -> None:
    with udp_echo(host) as (where, port):
        assert where == "::1"
        _ping(socket.AF_INET6, ("::1", port), [b"", b"six", os.urandom(MAX_PAYLOAD_IPV6)])


@needs_ipv6
def test_cli_udp_echo_on_localhost_serves_both_addresses() -> None:
    with udp_echo("localhost") as (where, port):
        assert where == "127.0.0.1"
        _ping(socket.AF_INET, ("127.0.0.1", port), [b"four"])
        _ping(socket.AF_INET6, ("::1", port), [b"six"])


def _rmem_max() -> int:
    try:
        return int(open("/proc/sys/net/core/rmem_max").read())
    except OSError:
        return 0


@pytest.mark.skipif(
    _rmem_max() < 2 * 1024 * 1024, reason="net.core.rmem_max is too small for the burst"
)
def test_cli_udp_echo_takes_a_burst_of_large_datagrams_from_many_senders() -> None:
    # 30 x 64 KiB at once is about 2 MB: far more than a default receive buffer holds.
    senders = 30
    with udp_echo() as (host, port):
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(senders)]
        try:
            payloads = [os.urandom(MAX_PAYLOAD_IPV4 - i) for i in range(senders)]
            for peer, data in zip(peers, payloads, strict=True):
                peer.sendto(data, (host, port))
            for peer, data in zip(peers, payloads, strict=True):
                peer.settimeout(5)
                assert peer.recv(65536) == data
        finally:
            for peer in peers:
                peer.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 9000)),
            st.tuples(st.just("block"), st.booleans()),
            st.tuples(st.just("dispatch"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_send_queue_invariants(steps: list[tuple[str, Any]]) -> None:
    """Whatever the mix of sends, full send buffers and dispatches: the queue size is
    what was queued, pause/resume alternate at the marks, reading is off exactly while
    paused, and every datagram arrives once, in order."""
    with Service() as service, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer.setblocking(False)
        sock = FlakySocket(socket.AF_INET, socket.SOCK_DGRAM)
        handler = Recorder()
        endpoint = DatagramEndpoint(
            service.dispatcher, sock, handler, TransportOptions(high_water=12_000, low_water=3_000)
        )
        sent: list[bytes] = []
        received: list[bytes] = []

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    received.append(peer.recv(65536))

        for i, (step, value) in enumerate(steps):
            if step == "send":
                data = bytes([i % 256]) * value
                endpoint.sendto(data, peer.getsockname())
                sent.append(data)
            elif step == "block":
                sock.fail_with = BlockingIOError(errno.EAGAIN, "full") if value else None
            else:
                service.run_once(0)
            drain()
            paused = handler.pauses - handler.resumes
            assert paused in (0, 1)
            assert endpoint.reading == (not paused)
            if paused:
                assert endpoint.write_buffer_size > 3_000
            else:
                assert endpoint.write_buffer_size <= 12_000
        sock.fail_with = None
        run_until(service, lambda: endpoint.write_buffer_size == 0)
        for _ in range(3):  # empty datagrams weigh nothing in the size: one more flush
            service.run_once(0)
        deadline = time.monotonic() + 5
        while len(received) < len(sent) and time.monotonic() < deadline:
            drain()
            time.sleep(0.001)
        assert received == sent
        assert handler.pauses == handler.resumes
        assert handler.errors == []
        endpoint.abort()
