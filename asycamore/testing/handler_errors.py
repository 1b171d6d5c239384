"""Rule 7: an exception in a handler, with and without ``error_in_handler``."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import pytest

from asycamore.dispatcher import Events, IDispatchContext, IDispatchTarget

from .kit import READ, READ_WRITE, WRITE, ErrorRecorder, KitBase, bare_target, ready_target
from .support import RecordingTarget, Sockets

__all__ = ["HandlerErrorRules"]


def _failing(exc: BaseException) -> Callable[[RecordingTarget], None]:
    def on_event(me: RecordingTarget) -> None:
        me.drain()
        raise exc

    return on_event


def _one_bad_among_good(
    ctx: IDispatchContext,
    sockets: Sockets,
    log: list[tuple[str, str]],
    exc: Exception,
    bad_events: Events,
) -> tuple[RecordingTarget, list[RecordingTarget]]:
    """Four ready targets: "bad", registered for *bad_events*, whose read handler
    raises *exc*, and three good ones for READ.  Returns bad and the good ones."""
    bad, _ = ready_target(sockets, log, "bad")
    bad.on_read = _failing(exc)
    goods = [ready_target(sockets, log, f"good{i}")[0] for i in range(3)]
    ctx.register(bad, bad_events)
    for good in goods:
        ctx.register(good, READ)
    return bad, goods


class HandlerErrorRules(KitBase):
    """Rule 7: the caller's error handler or the default policy; BaseExceptions
    propagate at once."""

    def test_rule7_error_in_handler_gets_target_and_exception(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """error_in_handler(target, exc) gets the very exception; the other ready targets
        are still served; the failed call counts in the return value."""
        log: list[tuple[str, str]] = []
        boom = ValueError("boom")
        bad, goods = _one_bad_among_good(ctx, sockets, log, boom, READ)
        errors = ErrorRecorder()
        assert ctx.dispatch_once(0, errors) == 4
        assert len(errors.calls) == 1
        target, exc = errors.calls[0]
        assert target is bad
        assert exc is boom
        assert sorted(log) == sorted([(t.name, "read") for t in [bad, *goods]])
        assert bad in ctx  # the caller's error handler decides what to do with it
        assert bad.close_calls == 0

    def test_rule7_write_handler_error(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """An error raised by handle_write_event goes the same way."""
        sock, _ = sockets.pair()
        boom = OSError(errno.EPIPE, "boom")
        target = RecordingTarget(sock, on_write=_failing(boom))
        ctx.register(target, WRITE)
        errors = ErrorRecorder()
        assert ctx.dispatch_once(0, errors) == 1
        assert errors.calls == [(target, boom)]

    def test_rule7_error_in_handler_raising_propagates(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """An exception raised by error_in_handler propagates out of dispatch_once."""

        class Escalated(Exception):
            pass

        def escalate(target: IDispatchTarget, exc: Exception) -> None:
            raise Escalated from exc

        target, _ = ready_target(sockets)
        target.on_read = _failing(ValueError("boom"))
        ctx.register(target, READ)
        with pytest.raises(Escalated) as info:
            ctx.dispatch_once(0, escalate)
        assert isinstance(info.value.__cause__, ValueError)

    def test_rule7_default_policy_logs_unregisters_closes(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy: log the traceback on logger "asycamore", unregister the target,
        call its close(); the other ready targets are still served."""
        log: list[tuple[str, str]] = []
        boom = ValueError("boom-7-default")
        bad, goods = _one_bad_among_good(ctx, sockets, log, boom, READ_WRITE)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            calls = ctx.dispatch_once(0)
        # bad's write handler does not run: the policy unregistered it after its read.
        assert calls == 4
        assert sorted(log) == sorted([(t.name, "read") for t in [bad, *goods]])
        assert bad not in ctx
        assert bad.close_calls == 1
        assert len(ctx) == 3
        records = [r for r in caplog.records if r.name == "asycamore" and r.exc_info]
        assert len(records) == 1
        exc_info = records[0].exc_info
        assert exc_info is not None
        assert exc_info[1] is boom
        assert "Traceback" in caplog.text
        assert "boom-7-default" in caplog.text

    def test_rule7_default_policy_target_already_unregistered(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy when the failing handler had unregistered its own target."""

        def on_read(me: RecordingTarget) -> None:
            ctx.unregister(me)
            raise RuntimeError("after unregister")

        target, _ = ready_target(sockets)
        target.on_read = on_read
        ctx.register(target, READ)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            assert ctx.dispatch_once(0) == 1
        assert target not in ctx
        assert target.close_calls == 1
        assert "after unregister" in caplog.text

    def test_rule7_default_policy_target_without_close(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Default policy on a target that has no close(): logged and unregistered."""
        sock, peer = sockets.pair()
        peer.send(b"x")
        reads: list[bytes] = []

        def on_read() -> None:
            reads.append(sock.recv(1))
            raise RuntimeError("no close here")

        target = bare_target(sock.fileno, on_read=on_read)
        ctx.register(target, READ)
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            assert ctx.dispatch_once(0) == 1
        assert reads == [b"x"]
        assert target not in ctx
        assert "no close here" in caplog.text

    @pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
    @pytest.mark.parametrize("with_error_handler", [False, True])
    def test_rule7_base_exceptions_propagate_at_once(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        caplog: pytest.LogCaptureFixture,
        exc_type: type[BaseException],
        with_error_handler: bool,
    ) -> None:
        """KeyboardInterrupt/SystemExit from a handler propagate at once: no other handler
        runs, no error handler or policy is applied, and the context stays usable."""
        log: list[tuple[str, str]] = []
        targets = [ready_target(sockets, log, f"t{i}")[0] for i in range(3)]
        for target in targets:
            target.on_read = _failing(exc_type())
            ctx.register(target, READ_WRITE)
        errors = ErrorRecorder()
        with caplog.at_level(logging.ERROR, logger="asycamore"), pytest.raises(exc_type):
            ctx.dispatch_once(0, errors if with_error_handler else None)
        assert len(log) == 1
        assert errors.calls == []
        assert not [r for r in caplog.records if r.name == "asycamore"]
        assert all(target in ctx and target.close_calls == 0 for target in targets)
        for target in targets:
            target.on_read = None
        assert ctx.dispatch_once(0) >= 3
