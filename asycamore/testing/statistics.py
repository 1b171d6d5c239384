"""Observability: ``statistics()`` counts right, and debug mode does what it promises.

Only for a backend that has them: the statistics tests skip a context without
``statistics()`` (a backend not on :class:`~asycamore.backends.base.DispatcherBase` need
not offer it), the debug-mode tests one whose factory refuses ``debug=True``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from asycamore.dispatcher import IDispatchContext

from .kit import READ, READ_WRITE, WRITE, ErrorRecorder, KitBase, ready_target, registered_target
from .support import RecordingTarget, Sockets

__all__ = ["StatisticsRules"]

_SLOW = 0.06  # how long a slow handler sleeps: over the threshold the tests set, 0.03
_THRESHOLD = 0.03


def _statistics(ctx: IDispatchContext) -> Any:
    """``ctx.statistics()``; skips the test for a context without it."""
    statistics = getattr(ctx, "statistics", None)
    if statistics is None:
        pytest.skip(f"{type(ctx).__qualname__} has no statistics()")
    return statistics()


def _counts(ctx: IDispatchContext) -> tuple[int, int, int, int, int]:
    """(rounds, events, handler_calls, handler_errors, registered) of *ctx*."""
    s = _statistics(ctx)
    return (s.rounds, s.events, s.handler_calls, s.handler_errors, s.registered)


def _sleeping(seconds: float) -> Callable[[RecordingTarget], None]:
    def on_event(me: RecordingTarget) -> None:
        me.drain()
        time.sleep(seconds)

    return on_event


def _is_unclosed_warning(warning: warnings.WarningMessage) -> bool:
    # gc.collect() may also finalize what earlier tests left behind (a socket, say).
    return issubclass(warning.category, ResourceWarning) and "never closed" in str(warning.message)


def _in_thread(action: Callable[[], object], name: str) -> BaseException | None:
    """Run *action* in a new thread called *name*; return what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    return raised[0] if raised else None


class StatisticsRules(KitBase):
    """``statistics()``: the counts of rounds, events, handler calls and errors, and the
    registered targets; debug mode's slow-handler warning, thread check and unclosed
    warning."""

    @pytest.fixture
    def debug_ctx(
        self, backend_factory: Callable[..., IDispatchContext]
    ) -> Iterator[IDispatchContext]:
        """A new context in debug mode, closed after the test; skips the test when the
        factory does not accept ``debug=True``."""
        try:
            context = backend_factory(debug=True)
        except TypeError as exc:
            pytest.skip(f"the backend does not accept debug=True: {exc}")
        try:
            yield context
        finally:
            context.close()

    # -- the counts -----------------------------------------------------------------------

    def test_statistics_start_at_zero(self, ctx: IDispatchContext) -> None:
        """A new context has done nothing, and says so in a frozen snapshot."""
        s = _statistics(ctx)
        assert _counts(ctx) == (0, 0, 0, 0, 0)
        assert s.time_waiting >= 0 and s.time_dispatching >= 0
        assert dataclasses.is_dataclass(type(s))
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.rounds = 1

    def test_statistics_count_a_round_with_one_event(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """One ready target: one round, one event, one handler call, one registered;
        an earlier snapshot does not change."""
        before = _statistics(ctx)
        _, peer = registered_target(ctx, sockets, READ)
        peer.send(b"x")
        assert ctx.dispatch_once(5.0) == 1
        assert _counts(ctx) == (1, 1, 1, 0, 1)
        assert before.rounds == 0 and before.registered == 0

    def test_statistics_count_rounds_without_events(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A wait that times out is a round with no events."""
        registered_target(ctx, sockets, READ)
        for _ in range(3):
            assert ctx.dispatch_once(0) == 0
        ctx.dispatch_once(0.01)
        assert _counts(ctx) == (4, 0, 0, 0, 1)

    def test_statistics_count_one_event_for_two_handler_calls(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A target ready for reading and writing is one report, and two handler calls."""
        _, peer = registered_target(ctx, sockets, READ_WRITE)
        peer.send(b"x")
        assert ctx.dispatch_once(5.0) == 2
        assert _counts(ctx) == (1, 1, 2, 0, 1)

    def test_statistics_count_a_stale_report_as_an_event_only(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Two ready targets, the first served unregisters the other: two events, one
        handler call (rule 4), one registered."""
        log: list[tuple[str, str]] = []
        first, _ = ready_target(sockets, log, "a")
        second, _ = ready_target(sockets, log, "b")
        first.on_read = lambda me: ctx.unregister(second)
        second.on_read = lambda me: ctx.unregister(first)
        ctx.register(first, READ)
        ctx.register(second, READ)
        assert ctx.dispatch_once(5.0) == 1
        assert _counts(ctx) == (1, 2, 1, 0, 1)

    def test_statistics_count_handler_errors(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A handler that raises is a handler call and a handler error; the others are
        not errors."""

        def fail(me: RecordingTarget) -> None:
            me.drain()
            raise ValueError("boom")

        log: list[tuple[str, str]] = []
        bad, _ = ready_target(sockets, log, "bad")
        bad.on_write = fail
        good, _ = ready_target(sockets, log, "good")
        ctx.register(bad, WRITE)
        ctx.register(good, READ)
        errors = ErrorRecorder()
        assert ctx.dispatch_once(5.0, errors) == 2
        assert len(errors.calls) == 1
        assert _counts(ctx) == (1, 2, 2, 1, 2)

    def test_statistics_add_up_over_rounds(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """Counts accumulate; registered follows register and unregister."""
        targets = [registered_target(ctx, sockets, READ) for _ in range(3)]
        total = 0
        # One byte per round: a round that found nothing ready would wait its timeout.
        for _, peer in targets:
            peer.send(b"x")
            total += ctx.dispatch_once(5.0)
        assert total == 3
        ctx.unregister(targets[0][0])
        rounds, events, calls, errors, registered = _counts(ctx)
        assert (rounds, calls, errors, registered) == (3, 3, 0, 2)
        assert events == 3

    def test_statistics_do_not_count_a_refused_dispatch(self, ctx: IDispatchContext) -> None:
        """dispatch_once on a closed context raises and is no round."""
        ctx.close()
        with pytest.raises(ValueError):
            ctx.dispatch_once(0)
        assert _counts(ctx) == (0, 0, 0, 0, 0)

    # -- debug mode -----------------------------------------------------------------------

    def test_debug_mode_counts_and_times(
        self, debug_ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Debug mode counts as the plain mode does, times the wait, and records the
        slowest handler call."""
        ctx = debug_ctx
        target, peer = registered_target(ctx, sockets, READ_WRITE)
        assert _statistics(ctx).slowest_handler is None
        peer.send(b"x")
        assert ctx.dispatch_once(5.0) == 2
        ctx.modify(target, READ)
        ctx.dispatch_once(0.05)
        s = _statistics(ctx)
        assert (s.rounds, s.events, s.handler_calls, s.handler_errors, s.registered) == (
            2,
            1,
            2,
            0,
            1,
        )
        assert s.time_waiting >= 0.04
        assert s.time_dispatching >= 0
        assert s.slowest_handler is not None
        seconds, where, handler = s.slowest_handler
        assert seconds >= 0
        assert where == repr(target)
        assert handler in ("handle_read_event", "handle_write_event")

    @pytest.mark.parametrize("events", [READ, WRITE], ids=["read", "write"])
    def test_debug_mode_warns_once_of_a_slow_handler(
        self,
        debug_ctx: IDispatchContext,
        sockets: Sockets,
        caplog: pytest.LogCaptureFixture,
        events: Any,
    ) -> None:
        """A handler call over slow_handler_threshold logs one WARNING on "asycamore"
        naming the target, the handler and the duration; slowest_handler records it."""
        ctx = debug_ctx
        ctx.slow_handler_threshold = _THRESHOLD  # type: ignore[attr-defined]
        slow, peer = registered_target(ctx, sockets, events, name="slow")
        _, fast_peer = registered_target(ctx, sockets, READ, name="fast")
        handler = "handle_read_event" if events == READ else "handle_write_event"
        if events == READ:
            slow.on_read = _sleeping(_SLOW)
            peer.send(b"x")
        else:
            slow.on_write = _sleeping(_SLOW)
        fast_peer.send(b"x")
        with caplog.at_level(logging.WARNING, logger="asycamore"):
            assert ctx.dispatch_once(5.0) == 2
        warnings_logged = [r for r in caplog.records if r.name == "asycamore"]
        assert len(warnings_logged) == 1, [r.getMessage() for r in warnings_logged]
        record = warnings_logged[0]
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert repr(slow) in message and handler in message
        assert re.search(r"\d+\.\d+ s", message), message
        seconds, where, name = _statistics(ctx).slowest_handler
        assert seconds >= _SLOW
        assert (where, name) == (repr(slow), handler)

    def test_debug_mode_refuses_calls_from_another_thread(
        self, debug_ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Before the first dispatch any thread may register; after it, register,
        modify, unregister and dispatch_once from another thread raise RuntimeError
        naming both threads, and change nothing."""
        ctx = debug_ctx
        built, _ = sockets.pair()
        built_target = RecordingTarget(built, name="built")
        assert _in_thread(lambda: ctx.register(built_target, READ), "builder") is None
        ctx.dispatch_once(0)
        me = threading.current_thread().name
        target, _ = registered_target(ctx, sockets, READ)
        other, _ = sockets.pair()
        other_target = RecordingTarget(other, name="other")
        for call in (
            lambda: ctx.register(other_target, READ),
            lambda: ctx.modify(target, WRITE),
            lambda: ctx.unregister(target),
            lambda: ctx.dispatch_once(0),
        ):
            exc = _in_thread(call, "intruder")
            assert isinstance(exc, RuntimeError), exc
            assert "intruder" in str(exc) and me in str(exc), str(exc)
        assert other_target not in ctx and target in ctx
        assert _counts(ctx)[0] == 1

    def test_debug_mode_refuses_another_thread_during_a_dispatch(
        self, debug_ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A thread that calls modify while a handler runs in the dispatching thread
        gets RuntimeError naming both threads."""
        ctx = debug_ctx
        raised: list[BaseException | None] = []
        target, peer = registered_target(ctx, sockets, READ)
        target.on_read = lambda me: raised.append(
            _in_thread(lambda: ctx.modify(target, WRITE), "intruder")
        )
        peer.send(b"x")
        ctx.dispatch_once(5.0)
        assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
        assert "intruder" in str(raised[0])
        assert threading.current_thread().name in str(raised[0])

    def test_debug_mode_warns_of_a_context_never_closed(
        self, backend_factory: Callable[..., IDispatchContext]
    ) -> None:
        """A debug-mode context garbage-collected without close() emits a
        ResourceWarning saying where it was created; a closed one does not."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                line = sys._getframe().f_lineno + 1
                ctx = backend_factory(debug=True)
            except TypeError as exc:
                pytest.skip(f"the backend does not accept debug=True: {exc}")
            closed = backend_factory(debug=True)
            closed.close()
            del ctx, closed
            gc.collect()
        unclosed = [str(w.message) for w in caught if _is_unclosed_warning(w)]
        assert len(unclosed) == 1, [str(w.message) for w in caught]
        message = unclosed[0]
        assert "created at " in message
        if getattr(type(self), "backend_class", None) is not None:
            assert f"{__file__}:{line}" in message, message

    def test_debug_mode_off_checks_nothing(
        self, backend_factory: Callable[..., IDispatchContext], sockets: Sockets
    ) -> None:
        """debug=False: another thread may register after a dispatch, and a context
        never closed is not warned of."""
        try:
            ctx = backend_factory(debug=False)
        except TypeError as exc:
            pytest.skip(f"the backend does not accept debug=False: {exc}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctx.dispatch_once(0)
            sock, _ = sockets.pair()
            target = RecordingTarget(sock)
            assert _in_thread(partial(ctx.register, target, READ), "other") is None
            assert target in ctx
            ctx.unregister(target)
            del ctx
            gc.collect()
        assert not [w for w in caught if _is_unclosed_warning(w)]
