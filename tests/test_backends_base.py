"""What the built-in backends share (asycamore.backends.base), beyond the contract's rules:
timeout rounding, use after close, modify's validation, and urgent data."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asycamore
from asycamore import Events
from asycamore.backends.base import MAX_WAIT, ceil_timeout
from asycamore.testing import RecordingTarget, Sockets

AVAILABLE_BUILTINS = sorted(
    info.name for info in asycamore.list_backends() if info.origin == "built-in" and info.available
)


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory = Sockets()
    yield factory
    factory.close_all()


@pytest.fixture(params=AVAILABLE_BUILTINS)
def ctx(request: pytest.FixtureRequest) -> Iterator[asycamore.IDispatchContext]:
    with asycamore.create_dispatcher(request.param) as context:
        yield context


# -- ceil_timeout -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "resolution", "expected"),
    [
        (None, 1e-3, None),
        (0, 1e-3, 0),
        (0.0, 1e-6, 0),
        (-1, 1e-3, 0),
        (-1e-9, 1e-9, 0),
        (0.0004, 1e-3, 1),
        (0.001, 1e-3, 1),
        (0.0011, 1e-3, 2),
        (1e-12, 1e-9, 1),
        (2.5, 1e-3, 2500),
        (float("inf"), 1e-3, None),
        (float("-inf"), 1e-3, 0),
        (1e12, 1e-3, 2_000_000_000),  # capped at MAX_WAIT: within poll's C int of ms
    ],
)
def test_ceil_timeout(timeout: float | None, resolution: float, expected: int | None) -> None:
    assert ceil_timeout(timeout, resolution) == expected


def test_ceil_timeout_nan_is_an_error() -> None:
    with pytest.raises(ValueError):
        ceil_timeout(float("nan"), 1e-3)


@given(
    timeout=st.floats(min_value=1e-12, max_value=MAX_WAIT, allow_nan=False),
    resolution=st.sampled_from([1e-3, 1e-6, 1e-9]),
)
def test_ceil_timeout_never_rounds_down(timeout: float, resolution: float) -> None:
    units = ceil_timeout(timeout, resolution)
    assert units is not None
    assert units >= 1  # a positive timeout never becomes a non-blocking poll
    assert units * resolution >= timeout * (1 - 1e-12)
    assert (units - 1) * resolution < timeout * (1 + 1e-12)


# -- life cycle ---------------------------------------------------------------------------


def test_use_after_close(ctx: asycamore.IDispatchContext, sockets: Sockets) -> None:
    target = RecordingTarget(sockets.pair()[0])
    ctx.register(target, Events.READ)
    ctx.close()
    assert len(ctx) == 0
    assert target not in ctx
    with pytest.raises(ValueError):
        ctx.register(RecordingTarget(sockets.pair()[0]), Events.READ)
    with pytest.raises(ValueError):
        ctx.dispatch_once(0)
    with pytest.raises(KeyError):
        ctx.unregister(target)
    assert ctx.name in repr(ctx) or type(ctx).__name__ in repr(ctx)


@pytest.mark.parametrize("events", [4, -1, 8])
def test_modify_validates_events(
    ctx: asycamore.IDispatchContext, sockets: Sockets, events: int
) -> None:
    sock, peer = sockets.pair()
    target = RecordingTarget(sock)
    ctx.register(target, Events.READ)
    with pytest.raises(ValueError):
        ctx.modify(target, events)  # type: ignore[arg-type]
    peer.send(b"x")
    assert ctx.dispatch_once(1.0) == 1  # the interest is unchanged
    assert target.log == [("target", "read")]


def test_repr_counts_targets(ctx: asycamore.IDispatchContext, sockets: Sockets) -> None:
    ctx.register(RecordingTarget(sockets.pair()[0]), Events.READ)
    assert "1 target" in repr(ctx)


# -- register() needs a dispatch target ---------------------------------------------------
#
# The rule itself is in the conformance kit; these are the base's own promises: the exact
# message, and the per-class memory that keeps the check off the per-connection cost.


def test_register_names_what_the_target_lacks(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    sock, _ = sockets.pair()
    with pytest.raises(TypeError) as info:
        ctx.register(sock, Events.READ)  # type: ignore[arg-type]
    assert str(info.value) == (
        "register() needs a dispatch target with fileno(), handle_read_event() and "
        f"handle_write_event(): target {sock!r} has no handle_read_event, handle_write_event"
    )


class _FilenoOnly:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


def test_register_checks_each_instance_of_a_class_without_the_handlers(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    """Handlers given to one instance do not vouch for another of the same class: only
    a class that has all three methods itself is remembered as checked."""
    complete = _FilenoOnly(sockets.pair()[0])
    complete.handle_read_event = complete.handle_write_event = lambda: None  # type: ignore[attr-defined]
    ctx.register(complete, Events.READ)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="has no handle_read_event, handle_write_event"):
        ctx.register(_FilenoOnly(sockets.pair()[0]), Events.READ)  # type: ignore[arg-type]
    assert len(ctx) == 1


def test_register_checks_past_the_classes_it_remembers(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    """Past the bound on remembered classes, targets are still checked, every time."""
    sock, _ = sockets.pair()
    for number in range(100):
        cls = type(f"Target{number}", (RecordingTarget,), {})
        target = cls(sock)
        ctx.register(target, Events.READ)
        ctx.unregister(target)
    with pytest.raises(TypeError, match="has no handle_read_event, handle_write_event"):
        ctx.register(_FilenoOnly(sock), Events.READ)  # type: ignore[arg-type]
    assert len(ctx) == 0


def test_a_backend_of_its_own_on_the_base_checks_register() -> None:
    """A plugin on the base gets the check without a line of its own, and a refused
    target never reaches its kernel hooks."""
    from asycamore.backends.base import DispatcherBase

    class Recording(DispatcherBase):
        name = "recording"
        priority = 0
        added: ClassVar[list[int]] = []

        @classmethod
        def is_available(cls) -> bool:
            return True

        def kernel_add(self, fd: int, events: int) -> None:
            self.added.append(fd)

    with Recording() as context, socket.socket() as sock:
        with pytest.raises(TypeError, match="target"):
            context.register(sock, Events.READ)  # type: ignore[arg-type]
        assert Recording.added == []
        assert len(context) == 0


# -- urgent data ----------------------------------------------------------------------------


def test_urgent_data_does_not_spin(ctx: asycamore.IDispatchContext, sockets: Sockets) -> None:
    """TCP urgent data (POLLPRI) is not asked for: the handler's recv() would not consume
    it, and reporting it would repeat on every dispatch."""
    client, server = sockets.tcp_pair()
    client.send(b"!", socket.MSG_OOB)
    time.sleep(0.02)
    target = RecordingTarget(server)
    ctx.register(target, Events.READ)
    start = time.monotonic()
    calls = sum(ctx.dispatch_once(0.05) for _ in range(4))
    assert time.monotonic() - start >= 0.15
    assert calls == 0


# -- dispatch_once is not re-entrant -------------------------------------------------------


def test_reentrant_dispatch_is_refused(ctx: asycamore.IDispatchContext, sockets: Sockets) -> None:
    """dispatch_once from a handler raises RuntimeError there at once (it used to recurse
    until RecursionError); the error takes the handler's error path like any other (rule
    7), the round goes on, and the context stays usable."""
    errors: list[tuple[object, Exception]] = []
    inner: list[BaseException] = []

    def nested(me: RecordingTarget) -> None:
        me.drain()
        try:
            ctx.dispatch_once(0)
        except RuntimeError as exc:
            inner.append(exc)
            raise

    log: list[tuple[str, str]] = []
    sock, peer = sockets.pair()
    bad = RecordingTarget(sock, log, "bad", on_read=nested)
    good_sock, good_peer = sockets.pair()
    good = RecordingTarget(good_sock, log, "good")
    ctx.register(bad, Events.READ)
    ctx.register(good, Events.READ)
    peer.send(b"x")
    good_peer.send(b"y")
    assert ctx.dispatch_once(1.0, lambda target, exc: errors.append((target, exc))) == 2
    assert sorted(log) == [("bad", "read"), ("good", "read")]  # no recursion
    assert len(inner) == 1
    assert errors == [(bad, inner[0])]
    assert "already dispatching" in str(inner[0])
    assert bad in ctx  # the caller's error handler decides
    peer.send(b"x")
    bad.on_read = None
    assert ctx.dispatch_once(1.0) == 1  # usable again: the guard was lifted


def test_reentrant_dispatch_under_the_default_policy_is_logged(
    ctx: asycamore.IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the default policy the RuntimeError is logged with its traceback, naming the
    mistake, before the target is closed (rule 7): not a silent close."""
    sock, peer = sockets.pair()
    target = RecordingTarget(sock, on_read=lambda me: ctx.dispatch_once(0))
    ctx.register(target, Events.READ)
    peer.send(b"x")
    with caplog.at_level(logging.ERROR, logger="asycamore"):
        assert ctx.dispatch_once(1.0) == 1
    assert target.close_calls == 1
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "already dispatching" in caplog.text


def test_dispatch_from_another_thread_meanwhile_is_refused(
    ctx: asycamore.IDispatchContext,
) -> None:
    """The same guard refuses a second thread's dispatch_once during one that waits."""
    waiter = threading.Thread(target=ctx.dispatch_once, args=(0.5,))
    waiter.start()
    try:
        time.sleep(0.1)
        with pytest.raises(RuntimeError, match="already dispatching"):
            ctx.dispatch_once(0)
    finally:
        waiter.join()
    assert ctx.dispatch_once(0) == 0
