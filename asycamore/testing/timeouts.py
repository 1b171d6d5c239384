"""Rule 3: how long ``dispatch_once`` waits, and what it returns; signals during a wait."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from asycamore.dispatcher import IDispatchContext

from .kit import READ, READ_WRITE, WRITE, KitBase, later, ready_target
from .support import RecordingTarget, Sockets, deadline

__all__ = ["TimeoutRules"]


class TimeoutRules(KitBase):
    """Rule 3: ``None`` blocks, ``<= 0`` polls, a timeout is rounded up; the return
    value; a signal that interrupts the wait."""

    def test_rule3_timeout_none_blocks_until_ready(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """dispatch_once(None) waits for readiness that arrives later, then serves it."""
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, READ)
        timer = later(0.2, lambda: peer.send(b"x"))
        start = time.monotonic()
        try:
            with deadline(10, "dispatch_once(None)"):
                calls = ctx.dispatch_once(None)
        finally:
            timer.join()
        assert time.monotonic() - start >= 0.15
        assert calls == 1
        assert target.log == [("target", "read")]

    @pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5])
    def test_rule3_non_positive_timeout_does_not_block(
        self, ctx: IDispatchContext, sockets: Sockets, timeout: float
    ) -> None:
        """dispatch_once(timeout <= 0) returns at once when nothing is ready."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, READ)
        with deadline(3, f"dispatch_once({timeout!r}) on an idle context"):
            for _ in range(20):
                assert ctx.dispatch_once(timeout) == 0
        assert target.log == []

    def test_rule3_non_positive_timeout_serves_ready_targets(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A non-blocking dispatch still serves what is ready."""
        target, _ = ready_target(sockets)
        ctx.register(target, READ)
        assert ctx.dispatch_once(0) == 1
        assert target.log == [("target", "read")]

    def test_rule3_timeout_waits(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """An idle dispatch_once(timeout) waits about that long (a lower bound only)."""
        sock, _ = sockets.pair()
        ctx.register(RecordingTarget(sock), READ)
        start = time.monotonic()
        with deadline(10):
            assert ctx.dispatch_once(0.1) == 0
        assert time.monotonic() - start >= 0.09

    def test_rule3_timeout_waits_on_empty_context(self, ctx: IDispatchContext) -> None:
        """A context with no targets still waits out its timeout."""
        start = time.monotonic()
        with deadline(10):
            assert ctx.dispatch_once(0.05) == 0
        assert time.monotonic() - start >= 0.045

    def test_rule3_tiny_timeout_is_rounded_up(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A 0.4 ms timeout waits at least 0.4 ms: it is not rounded down to a busy poll."""
        sock, _ = sockets.pair()
        ctx.register(RecordingTarget(sock), READ)
        rounds = 200
        start = time.monotonic()
        with deadline(20):
            for _ in range(rounds):
                assert ctx.dispatch_once(0.0004) == 0
        # Rounded down to 0, 200 rounds would take a few hundred microseconds in all.
        assert time.monotonic() - start >= 0.9 * rounds * 0.0004

    @pytest.mark.parametrize("timeout", [1e7, 1e10, float("inf")])
    def test_rule3_long_timeouts_are_accepted(
        self, ctx: IDispatchContext, sockets: Sockets, timeout: float
    ) -> None:
        """Timeouts beyond what the OS call takes (poll's int of milliseconds is about
        24.8 days), and an infinite one, are accepted: with a target ready, the dispatch
        serves it at once."""
        target, _ = ready_target(sockets)
        ctx.register(target, READ)
        with deadline(10, f"dispatch_once({timeout}) with a target ready"):
            assert ctx.dispatch_once(timeout) == 1
        assert target.log == [("target", "read")]

    def test_rule3_returns_number_of_handler_calls(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """The return value is the number of handler calls made."""
        log: list[tuple[str, str]] = []
        reader, _ = ready_target(sockets, log, "reader")
        both, _ = ready_target(sockets, log, "both")
        writer_sock, _ = sockets.pair()
        writer = RecordingTarget(writer_sock, log, "writer")
        idle_sock, _ = sockets.pair()
        idle = RecordingTarget(idle_sock, log, "idle")
        ctx.register(reader, READ)
        ctx.register(both, READ_WRITE)
        ctx.register(writer, WRITE)
        ctx.register(idle, READ)
        assert ctx.dispatch_once(0) == 4
        assert sorted(log) == [
            ("both", "read"),
            ("both", "write"),
            ("reader", "read"),
            ("writer", "write"),
        ]
        log.clear()
        # Drained now: only the write interests remain ready.
        assert ctx.dispatch_once(0) == 2
        assert sorted(log) == [("both", "write"), ("writer", "write")]

    @pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
    def test_signal_during_dispatch_is_not_an_error(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """SIGALRM with a handler that returns, arriving during a blocking dispatch (EINTR
        in the system call), neither raises nor loses the readiness that follows."""
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signal handlers can only be set on the main thread")
        hits: list[int] = []
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
        sock, peer = sockets.pair()
        target = RecordingTarget(sock)
        ctx.register(target, READ)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.03, 0.03)
            with deadline(10):
                assert ctx.dispatch_once(0.2) == 0
            assert hits, "no signal arrived during the dispatch"
            hits.clear()
            timer = later(0.25, lambda: peer.send(b"x"))
            try:
                with deadline(10, "dispatch_once(None) interrupted by signals"):
                    calls = ctx.dispatch_once(None)
            finally:
                timer.join()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert hits, "no signal arrived during the dispatch"
        assert calls == 1
        assert target.log == [("target", "read")]
