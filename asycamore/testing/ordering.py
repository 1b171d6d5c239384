"""Rule 4: read before write, and what a handler's changes do to the rest of the round."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asycamore.dispatcher import Events, IDispatchContext

from .kit import NONE, READ, READ_WRITE, WRITE, KitBase, ready_target
from .support import RecordingTarget, Sockets

__all__ = ["OrderingRules"]


def _first_read_changes_the_other(
    ctx: IDispatchContext,
    sockets: Sockets,
    log: list[tuple[str, str]],
    change: Callable[[RecordingTarget, RecordingTarget], None],
) -> None:
    """Two ready READ targets, a and b: whichever read handler runs first drains its
    socket and calls ``change(itself, the other)``.  One dispatch must then make that
    one call only: what *change* did to the other drops its pending read."""
    first: list[RecordingTarget] = []

    def on_read(me: RecordingTarget) -> None:
        me.drain()
        if not first:
            first.append(me)
            change(me, b if me is a else a)

    a, _ = ready_target(sockets, log, "a")
    b, _ = ready_target(sockets, log, "b")
    a.on_read = b.on_read = on_read
    ctx.register(a, READ)
    ctx.register(b, READ)
    assert ctx.dispatch_once(0) == 1
    assert log == [(first[0].name, "read")]


class OrderingRules(KitBase):
    """Rule 4: the order of the handlers, and readiness gone stale within a dispatch."""

    def test_rule4_read_before_write(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A target ready for both gets handle_read_event before handle_write_event."""
        log: list[tuple[str, str]] = []
        targets = [ready_target(sockets, log, f"t{i}")[0] for i in range(4)]
        for target in targets:
            ctx.register(target, READ_WRITE)
        assert ctx.dispatch_once(0) == 8
        for target in targets:
            mine = [kind for name, kind in log if name == target.name]
            assert mine == ["read", "write"]

    @pytest.mark.parametrize(
        "change", ["unregister", "modify-none", "modify-write", "unregister-register"]
    )
    def test_rule4_other_target_changed_by_handler(
        self, ctx: IDispatchContext, sockets: Sockets, change: str
    ) -> None:
        """A handler that unregisters (or takes READ from) another ready target drops
        that target's pending read in the same dispatch."""

        def on_first_read(me: RecordingTarget, other: RecordingTarget) -> None:
            if change == "unregister":
                ctx.unregister(other)
            elif change == "modify-none":
                ctx.modify(other, NONE)
            elif change == "modify-write":
                ctx.modify(other, WRITE)
            else:  # a new registration of the same target is a new registration
                ctx.unregister(other)
                ctx.register(other, READ)

        _first_read_changes_the_other(ctx, sockets, [], on_first_read)

    def test_rule4_stale_event_never_reaches_new_target_on_same_fd(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A handler unregisters ready target B, closes B's socket and registers a new
        target C on a socket with B's old descriptor number: C gets nothing of B's in
        that dispatch, and is served normally in the next one."""
        log: list[tuple[str, str]] = []
        newcomers: list[RecordingTarget] = []

        def on_first_read(me: RecordingTarget, other: RecordingTarget) -> None:
            fd = other.fileno()
            ctx.unregister(other)
            other.sock.close()
            new_sock, new_peer = sockets.pair_at(fd)
            new_peer.send(b"c")  # C is readable and writable at once
            newcomers.append(RecordingTarget(new_sock, log, "c"))
            ctx.register(newcomers[0], READ_WRITE)

        _first_read_changes_the_other(ctx, sockets, log, on_first_read)
        (c,) = newcomers
        assert c in ctx
        log.clear()
        assert ctx.dispatch_once(0) == 2
        assert log == [("c", "read"), ("c", "write")]

    @pytest.mark.parametrize(
        ("new_interest", "expected"),
        [
            (WRITE, ["read", "write"]),
            (READ_WRITE, ["read", "write"]),
            (READ, ["read"]),
            (NONE, ["read"]),
            (None, ["read"]),  # None: the handler unregisters its own target
        ],
    )
    def test_rule4_handler_changes_own_interest(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        new_interest: Events | None,
        expected: list[str],
    ) -> None:
        """The write handler runs only if the target still wants WRITE after its read
        handler ran."""

        def on_read(me: RecordingTarget) -> None:
            me.drain()
            if new_interest is None:
                ctx.unregister(me)
            else:
                ctx.modify(me, new_interest)

        target, _ = ready_target(sockets)
        target.on_read = on_read
        ctx.register(target, READ_WRITE)
        assert ctx.dispatch_once(0) == len(expected)
        assert [kind for _, kind in target.log] == expected
