"""asycamore.nesting.Readiness and the backends' interest()/watch_interest() seam."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import asycamore
from asycamore import Events
from asycamore.nesting import PROBE_MAX_INTERVAL, Readiness, probe_intervals

AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]
BUILTIN = [name for name in ("select", "poll", "epoll", "kqueue") if name in AVAILABLE]


class Target:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        self.sock.recv(100)

    def handle_write_event(self) -> None:
        pass


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.mark.parametrize("backend", BUILTIN)
def test_interest_snapshot_and_watcher(
    backend: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    changes: list[dict[int, Events]] = []
    with asycamore.create_dispatcher(backend) as dispatcher:
        d: Any = dispatcher
        d.watch_interest(lambda: changes.append(d.interest()))
        ta, tb = Target(a), Target(b)
        dispatcher.register(ta, Events.NONE)  # nothing the OS is asked about
        dispatcher.register(tb, Events.READ)
        dispatcher.modify(ta, Events.READ | Events.WRITE)
        dispatcher.modify(ta, Events.READ | Events.WRITE)  # no change: no call
        dispatcher.unregister(tb)
        d.watch_interest(None)
        dispatcher.unregister(ta)
        assert changes == [
            {b.fileno(): Events.READ},
            {b.fileno(): Events.READ, a.fileno(): Events.READ | Events.WRITE},
            {a.fileno(): Events.READ | Events.WRITE},
        ]
        assert d.interest() == {}


def test_thread_mode_signals_readiness_and_stops(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    threads = set(threading.enumerate())
    with asycamore.create_dispatcher("poll") as dispatcher:
        dispatcher.register(Target(a))
        with Readiness(dispatcher) as readiness:
            assert readiness.mode == "thread"
            fd = readiness.fileno()
            assert fd is not None
            readiness.arm()
            assert not readable(fd, 0.05)  # nothing ready: nothing signalled
            b.send(b"x")
            assert readable(fd, 5)
            assert readiness.consume() is True
            assert not readable(fd, 0)  # consumed
            assert dispatcher.dispatch_once(0) == 1
            # A wait that ends without readiness.
            readiness.arm()
            readiness.disarm()
            b.send(b"y")
            assert not readable(fd, 0.05)  # disarmed: the thread does not report
        assert dispatcher.dispatch_once(0) == 1  # usable after close
    assert set(threading.enumerate()) == threads


def test_thread_mode_renews_a_stale_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    """An interest change during a wait: the thread gives up its snapshot, consume()
    says "wait again" and re-arms with the new interest."""
    a, _ = pair
    c, d = socket.socketpair()
    with c, d, asycamore.create_dispatcher("select") as dispatcher:
        dispatcher.register(Target(a))
        with Readiness(dispatcher) as readiness:
            fd = readiness.fileno()
            assert fd is not None
            readiness.arm()
            late = Target(c)
            dispatcher.register(late)  # not in the thread's snapshot
            assert readable(fd, 5)
            assert readiness.consume() is False  # renewed, not ready
            d.send(b"z")
            assert readable(fd, 5)
            assert readiness.consume() is True
            assert dispatcher.dispatch_once(0) == 1


def test_fileno_and_probe_modes(pair: tuple[socket.socket, socket.socket]) -> None:
    intervals = probe_intervals()
    firsts = [next(intervals) for _ in range(10)]
    assert firsts[0] == 0.001 and firsts[-1] == PROBE_MAX_INTERVAL
    assert firsts == sorted(firsts)
    for backend in ("epoll", "kqueue"):
        if backend in AVAILABLE:
            with asycamore.create_dispatcher(backend) as dispatcher:
                with Readiness(dispatcher) as readiness:
                    assert readiness.mode == "fileno"
                    assert readiness.consume() is True
                    with pytest.raises(RuntimeError, match="already hosted"):
                        Readiness(dispatcher)
                Readiness(dispatcher).close()  # free again once closed
