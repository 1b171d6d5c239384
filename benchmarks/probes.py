"""The suite's in-process workloads: dispatch rate and idle cost, for every subject.

``dispatch``: handler calls per second with always-ready targets (asycamore's own
measurement, :func:`asycamore.bench.dispatch_rate`, and the same for asyncio, uvloop
and a minimal ``selectors`` loop).  ``idle``: the time of one dispatch with *N* idle
targets registered and one ready, for the same subjects and asyncore's ``poll2``.
Both run in ``benchmarks/run.py``'s own process, pinned to the server's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from asycamore import Events, bench
from asycamore.factory import create_dispatcher, list_backends


def importable(module: str) -> bool:
    """Whether *module* (an optional peer: uvloop, matplotlib, ...) can be imported."""
    return importlib.util.find_spec(module) is not None


def asyncore_importable() -> bool:
    """Whether asyncore is there: in the stdlib up to 3.11, from pyasyncore on 3.12+."""
    return importable("asyncore")


# -- idle cost: asycamore and asyncio ------------------------------------------------------


class _Idle:
    """A target that is never ready."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle target was dispatched")

    def handle_write_event(self) -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle target was dispatched")


@contextlib.contextmanager
def idle_sockets(count: int) -> Iterator[list[socket.socket]]:
    """*count* connected sockets that never become ready (both ends of socketpairs)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            a, b = socket.socketpair()
            socks.append(a)
            socks.append(b)
        yield socks[:count]
    finally:
        for sock in socks:
            sock.close()


def idle_dispatch_cost(backend: str, idle: int, seconds: float) -> float | None:
    """Seconds per ``dispatch_once`` (one ready target's handler) with *idle* idle targets.

    Returns None when the backend refuses that many descriptors (``select`` stops at
    ``FD_SETSIZE``).
    """
    with (
        idle_sockets(idle) as idlers,
        bench.ready_sockets(1) as active,
        create_dispatcher(backend) as dispatcher,
    ):
        try:
            for sock in idlers:
                dispatcher.register(_Idle(sock), Events.READ)
            counter = bench.CountingTarget(active[0])
            dispatcher.register(counter, Events.READ)
        except ValueError:
            return None
        dispatch_once = dispatcher.dispatch_once

        def chunk() -> int:
            for _ in range(20):
                dispatch_once(1.0)
            return 20

        chunk()
        dispatches, elapsed = bench.timed(chunk, seconds)
        if counter.calls != dispatches + 20:
            raise RuntimeError(f"{backend}: {counter.calls} handler calls for {dispatches + 20}")
    return elapsed / dispatches


def asyncio_idle_dispatch_cost(
    idle: int,
    seconds: float,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> float:
    """Seconds per loop iteration (one ready reader's callback) with *idle* idle readers."""
    loop = (loop_factory or asyncio.new_event_loop)()
    calls = 0

    def callback() -> None:
        nonlocal calls
        calls += 1

    def never() -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle reader was called")

    try:
        with idle_sockets(idle) as idlers, bench.ready_sockets(1) as active:
            for sock in idlers:
                loop.add_reader(sock.fileno(), never)
            loop.add_reader(active[0].fileno(), callback)
            loop.call_later(min(0.05, seconds), loop.stop)
            loop.run_forever()
            calls = 0
            start = time.perf_counter()
            loop.call_later(seconds, loop.stop)
            loop.run_forever()
            elapsed = time.perf_counter() - start
            for sock in [*idlers, *active]:
                loop.remove_reader(sock.fileno())
    finally:
        loop.close()
    return elapsed / max(calls, 1)


# -- the peers, and every subject by name --------------------------------------------------


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not importable("uvloop"):
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def selectors_dispatch_rate(seconds: float, targets: int = bench.DISPATCH_TARGETS) -> float:
    """Callbacks per second through a minimal hand-written selectors loop."""
    calls = 0

    def callback() -> None:
        nonlocal calls
        calls += 1

    with bench.ready_sockets(targets) as socks, selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ, callback)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(50):
                for key, _mask in sel.select(1.0):
                    key.data()
        elapsed = time.perf_counter() - start
    return calls / elapsed


def selectors_idle_cost(idle: int, seconds: float) -> float:
    """Seconds per select() round (one ready callback) with *idle* idle sockets registered."""
    calls = 0

    def callback() -> None:
        nonlocal calls
        calls += 1

    def never() -> None:  # pragma: no cover
        raise AssertionError("idle socket was ready")

    with (
        idle_sockets(idle) as idlers,
        bench.ready_sockets(1) as active,
        selectors.DefaultSelector() as sel,
    ):
        for sock in idlers:
            sel.register(sock, selectors.EVENT_READ, never)
        sel.register(active[0], selectors.EVENT_READ, callback)
        rounds = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                for key, _mask in sel.select(1.0):
                    key.data()
            rounds += 20
        elapsed = time.perf_counter() - start
    return elapsed / rounds


def asyncore_idle_cost(idle: int, seconds: float) -> float | None:
    """Seconds per ``asyncore.poll2`` round with *idle* idle dispatchers and one active."""
    if not asyncore_importable():
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import asyncore

    class Target:
        calls = 0

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def readable(self) -> bool:
            return True

        def writable(self) -> bool:
            return False

        def handle_read_event(self) -> None:
            self.calls += 1

    with idle_sockets(idle) as idlers, bench.ready_sockets(1) as active:
        socket_map: dict[int, Any] = {s.fileno(): Target(s) for s in [*idlers, *active]}
        rounds = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(5):
                asyncore.poll2(1.0, socket_map)
            rounds += 5
        elapsed = time.perf_counter() - start
    return elapsed / rounds


def inprocess_subjects() -> tuple[list[str], list[str]]:
    """Names of the in-process subjects: backends, asyncio, uvloop, selectors, asyncore."""
    names = [f"asycamore-{info.name}" for info in list_backends() if info.available]
    names.append("asyncio")
    if importable("uvloop"):
        names.append("uvloop")
    names.append("selectors")
    extra = ["asyncore-poll"] if asyncore_importable() else []
    return names, extra


def dispatch_measure(subject: str, seconds: float) -> float | None:
    """Handler calls per second for one in-process subject."""
    if subject.startswith("asycamore-"):
        return bench.dispatch_rate(subject.removeprefix("asycamore-"), seconds)
    if subject == "asyncio":
        return bench.asyncio_dispatch_rate(seconds)
    if subject == "uvloop":
        return bench.asyncio_dispatch_rate(seconds, loop_factory=_uvloop_factory())
    if subject == "selectors":
        return selectors_dispatch_rate(seconds)
    return None


def idle_measure(subject: str, idle: int, seconds: float) -> float | None:
    """Seconds per dispatch with *idle* idle targets for one in-process subject."""
    if subject.startswith("asycamore-"):
        return idle_dispatch_cost(subject.removeprefix("asycamore-"), idle, seconds)
    if subject == "asyncio":
        return asyncio_idle_dispatch_cost(idle, seconds)
    if subject == "uvloop":
        return asyncio_idle_dispatch_cost(idle, seconds, loop_factory=_uvloop_factory())
    if subject == "selectors":
        return selectors_idle_cost(idle, seconds)
    if subject == "asyncore-poll":
        return asyncore_idle_cost(idle, seconds)
    return None
