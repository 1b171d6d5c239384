"""SPEC "Testing with asycamore": MockClock, and one clock for everything a Service times.

These tests use the plugin's own fixtures (``service`` on every backend, on
``mock_clock``), so they also show how a user's tests look.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from asycamore.servicemodel import Protocol, Service
from asycamore.testing import MockClock

# -- the clock itself ------------------------------------------------------------------------


def test_starts_at_zero_and_moves_only_by_advance() -> None:
    clock = MockClock()
    assert clock() == 0.0
    time.sleep(0.01)
    assert clock() == 0.0
    clock.advance(1.5)
    clock.advance(0)
    assert clock() == 1.5
    assert clock.autojump_threshold == math.inf


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_advance_refuses_negative_and_nan(bad: float) -> None:
    clock = MockClock()
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(bad)
    assert clock() == 0.0


@pytest.mark.parametrize("bad", ["1", None, True])
def test_advance_refuses_non_numbers(bad: Any) -> None:
    with pytest.raises(TypeError, match="seconds"):
        MockClock().advance(bad)


@pytest.mark.parametrize("bad", [-1, math.nan])
def test_autojump_threshold_is_checked(bad: float) -> None:
    with pytest.raises(ValueError, match="autojump_threshold"):
        MockClock(autojump_threshold=bad)
    clock = MockClock()
    with pytest.raises(ValueError, match="autojump_threshold"):
        clock.autojump_threshold = bad


def test_service_refuses_a_clock_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="clock"):
        Service(clock=42.0)  # type: ignore[arg-type]


# -- everything the service times follows the clock --------------------------------------


def test_service_and_fixture_share_the_clock(service: Service, mock_clock: MockClock) -> None:
    assert service.clock is mock_clock
    mock_clock.advance(7)
    assert service.time() == 7.0


def test_timers_follow_the_clock(service: Service, mock_clock: MockClock) -> None:
    fired: list[float] = []
    service.call_later(10, lambda: fired.append(service.time()))
    service.call_at(25, lambda: fired.append(service.time()))
    for _ in range(3):
        service.run_once(0)
    assert fired == []
    mock_clock.advance(9.999)
    service.run_once(0)
    assert fired == []
    mock_clock.advance(0.001)
    service.run_once(0)
    assert fired == [10.0]
    mock_clock.advance(100)
    service.run_once(0)
    assert fired == [10.0, 110.0]


def test_call_every_follows_the_clock_with_one_late_call_after_a_stall(
    service: Service, mock_clock: MockClock
) -> None:
    calls: list[float] = []
    timer = service.call_every(2, lambda: calls.append(service.time()))
    for _ in range(3):
        mock_clock.advance(2)
        service.run_once(0)
    assert calls == [2.0, 4.0, 6.0]
    mock_clock.advance(9)  # a stall over four due times: one late call, no burst
    service.run_once(0)
    service.run_once(0)
    assert calls == [2.0, 4.0, 6.0, 15.0]
    mock_clock.advance(1)  # back on the schedule: 16
    service.run_once(0)
    assert calls == [2.0, 4.0, 6.0, 15.0, 16.0]
    timer.cancel()


class Idle(Protocol):
    """Records connection_idle and connection_lost on the service's clock."""

    def __init__(self, service: Service, log: list[tuple[str, float]]) -> None:
        super().__init__()
        self.service = service
        self.log = log

    def connection_idle(self) -> None:
        self.log.append(("idle", self.service.time()))
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append(("lost", self.service.time()))


def pump(service: Service, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not until():
        assert time.monotonic() < deadline, "timed out"
        service.run_once(0.02)


def test_idle_timeout_follows_the_clock_and_activity_moves_it(
    service: Service, mock_clock: MockClock
) -> None:
    log: list[tuple[str, float]] = []
    listener = service.listen_tcp(lambda: Idle(service, log), "127.0.0.1", 0, idle_timeout=30)
    with socket.create_connection(listener.address) as client:
        pump(service, lambda: bool(service.transports.streams))
        mock_clock.advance(20)
        client.sendall(b"activity at 20")
        stream = service.transports.streams[0]
        pump(service, lambda: stream.last_activity == 20.0)
        mock_clock.advance(29.5)  # 49.5: idle for 29.5 s only
        for _ in range(3):
            service.run_once(0)
        assert log == []
        mock_clock.advance(0.5)
        pump(service, lambda: bool(log))
        assert log == [("idle", 50.0)]
    # The peer spoke, so the close waits for its EOF (SO_LINGER-free, no reset).
    pump(service, lambda: len(log) == 2)
    listener.close()
    assert log == [("idle", 50.0), ("lost", 50.0)]


class Stubborn(Protocol):
    """Ignores the stop: only the stop timeout's abort ends it."""

    def __init__(self, log: list[float], service: Service) -> None:
        super().__init__()
        self.log = log
        self.service = service

    def service_stopping(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append(self.service.time())


def test_the_stop_timeout_follows_the_clock(service: Service, mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0
    lost: list[float] = []
    listener = service.listen_tcp(lambda: Stubborn(lost, service), "127.0.0.1", 0)
    with socket.create_connection(listener.address) as client:
        pump(service, lambda: bool(service.transports.streams))
        client.sendall(b"keep me open")
        mock_clock.advance(5)
        service.stop(timeout=120)
        started = time.monotonic()
        service.serve_forever(handle_signals=False)
        assert time.monotonic() - started < 60  # not two real minutes
    assert lost == [125.0]
    assert service.time() == 125.0


@pytest.fixture(scope="module")
def server_context() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_the_tls_handshake_timeout_follows_the_clock(
    service: Service, mock_clock: MockClock, server_context: ssl.SSLContext
) -> None:
    mock_clock.autojump_threshold = 0
    seen: list[float] = []

    def watch() -> None:  # each second of the mock clock
        if service.transports.streams:
            seen.append(service.time())
        elif seen:
            seen.append(service.time())
            service.stop()

    watching = service.call_every(1, watch)
    listener = service.listen_tcp(
        Protocol, "127.0.0.1", 0, ssl=server_context, handshake_timeout=45
    )
    with socket.create_connection(listener.address):  # says nothing: no ClientHello
        service.serve_forever(handle_signals=False)
    watching.cancel()
    assert seen[-1] == 45.0 and seen[-2] == 44.0  # handshaking until 44, gone at 45


# -- autojump ----------------------------------------------------------------------------


def test_autojump_runs_a_long_timer_in_no_real_time(
    service: Service, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    service.call_later(86_400, service.stop)
    started = time.monotonic()
    service.serve_forever(handle_signals=False)
    assert time.monotonic() - started < 60
    assert service.time() == 86_400.0


def test_autojump_waits_for_the_threshold_of_real_idleness(
    service: Service, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05
    service.call_later(1000, service.stop)
    started = time.monotonic()
    service.serve_forever(handle_signals=False)
    assert time.monotonic() - started >= 0.05
    assert service.time() == 1000.0


class Echo(Protocol):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def test_no_jump_while_readiness_keeps_coming(service: Service, mock_clock: MockClock) -> None:
    # A client thread ping-pongs for a second of real time, far longer than the
    # threshold; the far timer must not fire until the exchange is over.  (A threshold
    # of 0 would jump in the gaps where the thread waits for the GIL: with peers outside
    # the loop, a test sets a threshold above their response time, as with trio.)
    mock_clock.autojump_threshold = 0.2
    fired: list[int] = []
    exchanged: list[int] = []
    service.call_later(3600, lambda: (fired.append(len(exchanged)), service.stop()))
    listener = service.listen_tcp(Echo, "127.0.0.1", 0)
    sock = socket.create_connection(listener.address)

    def client() -> None:
        with sock:
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
                exchanged.append(1)
            exchanged.append(0)

    thread = threading.Thread(target=client)
    thread.start()
    service.serve_forever(handle_signals=False)
    thread.join(10)
    listener.close()
    assert fired == [len(exchanged)] and exchanged[-1] == 0, "the clock jumped while busy"
    assert len(exchanged) > 100


def test_advance_between_rounds_restarts_the_idle_wait(mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0
    assert mock_clock.real_timeout(10, 0) == 0  # starts an idle wait
    mock_clock.advance(1)  # time moved: not idle any more
    assert mock_clock.real_timeout(9, 0) == 0
    assert mock_clock() == 1.0
    assert mock_clock.real_timeout(9, 0) == 0.0  # idle across a whole wait: jump
    assert mock_clock() == 10.0
    assert mock_clock.real_timeout(None, 0) is None
