"""``statistics()`` on every built-in backend, and on a plugin built on the base.

The kit's rule group (:mod:`asycamore.testing.statistics`, run by test_conformance.py)
checks the counts on every backend; this module checks the rest of the contract: the
snapshot type and its export, what the plain mode leaves untimed, and the counts over
real TCP connections.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import asycamore
from asycamore import Events
from asycamore.backends.base import DispatcherBase
from asycamore.testing import RecordingTarget, Sockets

BUILTINS = [
    info.name for info in asycamore.list_backends() if info.origin == "built-in" and info.available
]
FIELDS = (
    "rounds",
    "events",
    "handler_calls",
    "handler_errors",
    "time_waiting",
    "time_dispatching",
    "registered",
    "slowest_handler",
)


@pytest.fixture(params=BUILTINS)
def ctx(request: pytest.FixtureRequest) -> Iterator[DispatcherBase]:
    context = asycamore.create_dispatcher(request.param, debug=False)
    assert isinstance(context, DispatcherBase)
    yield context
    context.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory = Sockets()
    yield factory
    factory.close_all()


def test_the_expected_builtins_are_here() -> None:
    assert {"epoll", "poll", "select"} <= set(BUILTINS) or sys.platform != "linux"


def test_dispatch_statistics_is_exported_and_frozen_with_slots() -> None:
    """asycamore.DispatchStatistics: a frozen dataclass with slots and every field."""
    cls = asycamore.DispatchStatistics
    assert "DispatchStatistics" in asycamore.__all__
    assert "DispatchStatistics" in dir(asycamore)
    assert dataclasses.is_dataclass(cls)
    assert tuple(f.name for f in dataclasses.fields(cls)) == FIELDS
    snapshot = cls(1, 2, 3, 4, 0.5, 0.25, 5, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.rounds = 2  # type: ignore[misc]
    assert not hasattr(snapshot, "__dict__")
    assert snapshot == cls(1, 2, 3, 4, 0.5, 0.25, 5, None)


def test_import_asycamore_stays_cheap() -> None:
    """``import asycamore`` loads neither the snapshot's module nor dataclasses."""
    code = (
        "import sys, asycamore\n"
        "print(sorted(m for m in ('asycamore.statistics', 'dataclasses', 'asycamore.debug')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_statistics_returns_the_snapshot_type(ctx: DispatcherBase) -> None:
    assert type(ctx.statistics()) is asycamore.DispatchStatistics


def test_plain_mode_times_nothing(ctx: DispatcherBase, sockets: Sockets) -> None:
    """Outside debug mode the times stay 0.0 and slowest_handler None, as documented."""
    sock, peer = sockets.pair()
    ctx.register(RecordingTarget(sock), Events.READ)
    peer.send(b"x")
    assert ctx.dispatch_once(5.0) == 1
    ctx.dispatch_once(0.02)
    s = ctx.statistics()
    assert (s.rounds, s.events, s.handler_calls) == (2, 1, 1)
    assert (s.time_waiting, s.time_dispatching, s.slowest_handler) == (0.0, 0.0, None)


def test_counts_over_tcp_connections(ctx: DispatcherBase, sockets: Sockets) -> None:
    """Eight TCP connections, two messages each, echoed back: every report is counted,
    every handler call, and a handler that fails on EOF is an error."""

    class Echo(RecordingTarget):
        def handle_read_event(self) -> None:
            super().handle_read_event()
            if self.eof:
                raise ConnectionResetError("the peer went away")

    servers = []
    clients = []
    for i in range(8):
        client, server = sockets.tcp_pair()
        target = Echo(server, name=f"c{i}")
        target.on_read = lambda me: me.sock.send(me.drain() or b"") and None
        ctx.register(target, Events.READ)
        servers.append(target)
        clients.append(client)
    for _round in range(2):
        for client in clients:
            client.send(b"ping")
        served = 0
        while served < len(clients):
            served += ctx.dispatch_once(5.0)
        for client in clients:
            client.setblocking(True)
            assert client.recv(16) == b"ping"
            client.setblocking(False)
    s = ctx.statistics()
    assert s.handler_calls == s.events == 16
    assert s.handler_errors == 0 and s.registered == 8
    clients[0].shutdown(socket.SHUT_WR)
    errors: list[object] = []
    while not errors:
        ctx.dispatch_once(5.0, lambda target, exc: errors.append(target) or ctx.unregister(target))
    s = ctx.statistics()
    assert s.handler_errors == 1 and s.registered == 7 and s.handler_calls == 17


def test_a_plugin_on_the_base_gets_statistics_and_debug_mode_for_free(sockets: Sockets) -> None:
    """A backend that only implements the hooks has statistics() and debug mode."""
    import select

    class Minimal(DispatcherBase):
        name = "minimal"
        priority = 0

        @classmethod
        def is_available(cls) -> bool:
            return True

        def kernel_add(self, fd: int, events: int) -> None:
            pass

        def kernel_modify(self, fd: int, old: int, new: int) -> None:
            pass

        def kernel_remove(self, fd: int, events: int) -> None:
            pass

        def kernel_poll(self, timeout: float | None) -> list[tuple[object, int]]:  # type: ignore[override]
            watched = [fd for fd, r in self.registrations.items() if r.events]
            ready = select.select(watched, [], [], timeout)[0]
            return [(self.registrations[fd], 1) for fd in ready]

    sock, peer = sockets.pair()
    for debug in (False, True):
        with Minimal(debug=debug) as ctx:
            ctx.register(RecordingTarget(sock), Events.READ)
            peer.send(b"x")
            assert ctx.dispatch_once(5.0) == 1
            s = ctx.statistics()
            assert (s.rounds, s.events, s.handler_calls, s.registered) == (1, 1, 1, 1)
            assert (s.slowest_handler is not None) is debug
