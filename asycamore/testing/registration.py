"""Rules 1 and 2: registration errors, ``Events.NONE``, and ``unregister`` after a close."""

from __future__ import annotations

import time

import pytest

from asycamore.dispatcher import Events, IDispatchContext

from .kit import (
    NONE,
    READ,
    READ_WRITE,
    WRITE,
    KitBase,
    UnhashableTarget,
    assert_refused,
    assert_served,
    bare_target,
    registered_target,
)
from .support import RecordingTarget, Sockets, deadline

__all__ = ["RegistrationRules"]


class RegistrationRules(KitBase):
    """Rule 1 (what ``register``/``modify``/``unregister`` refuse, ``Events.NONE``)
    and rule 2 (``unregister`` of a closed descriptor)."""

    def test_rule1_register_twice_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Registering the same target twice raises KeyError and changes nothing."""
        target, _ = registered_target(ctx, sockets, READ)
        with pytest.raises(KeyError):
            ctx.register(target, READ)
        with pytest.raises(KeyError):
            ctx.register(target, WRITE)
        assert target in ctx
        assert len(ctx) == 1

    def test_rule1_same_fd_other_target_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A second target on an already registered descriptor raises KeyError."""
        sock, peer = sockets.pair()
        first = RecordingTarget(sock, name="first")
        second = RecordingTarget(sock, first.log, name="second")
        ctx.register(first, READ)
        with pytest.raises(KeyError):
            ctx.register(second, WRITE)
        assert first in ctx
        assert second not in ctx
        assert len(ctx) == 1
        assert_served(ctx, first, peer)  # intact: still served, and the other never

    def test_rule1_modify_or_unregister_unknown_raises_keyerror(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """modify/unregister of a target that is not registered raise KeyError."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        with pytest.raises(KeyError):
            ctx.modify(target, READ)
        with pytest.raises(KeyError):
            ctx.unregister(target)
        ctx.register(target, READ)
        ctx.unregister(target)
        with pytest.raises(KeyError):
            ctx.unregister(target)
        with pytest.raises(KeyError):
            ctx.modify(target, WRITE)
        assert len(ctx) == 0

    @pytest.mark.parametrize("events", [4, 8, -1, 0x10, 7, 0x7FFFFFFF])
    def test_rule1_bad_events_raise_valueerror(
        self, ctx: IDispatchContext, sockets: Sockets, events: int
    ) -> None:
        """Events outside READ|WRITE raise ValueError at register and nothing is kept."""
        sock, _ = sockets.pair()
        target = RecordingTarget(sock)
        assert_refused(ctx, target, events, ValueError)  # type: ignore[arg-type]
        ctx.register(target, READ)  # a failed register left nothing behind
        assert target in ctx

    @pytest.mark.parametrize("events", [READ, WRITE, READ_WRITE, NONE])
    def test_rule1_negative_fd_raises_valueerror(
        self, ctx: IDispatchContext, sockets: Sockets, events: Events
    ) -> None:
        """A target whose fileno() is negative (a closed socket) raises ValueError,
        whatever the interest, and nothing is kept."""
        sock, _ = sockets.pair()
        sock.close()
        target = RecordingTarget(sock)
        assert target.fileno() == -1
        assert_refused(ctx, target, events, ValueError)
        assert_refused(ctx, bare_target(lambda: -7), events, ValueError)

    @pytest.mark.parametrize("events", [READ_WRITE, NONE])
    @pytest.mark.parametrize("fd", [True, False, 2**31, 2**64, 1.0, None])
    def test_rule1_fileno_not_a_descriptor_raises_valueerror(
        self, ctx: IDispatchContext, events: Events, fd: object
    ) -> None:
        """A fileno() that is no descriptor number -- a bool (not 1 or 0), one beyond a C
        int (which the OS calls would refuse with OverflowError, or not at all for
        Events.NONE), or not an int -- raises ValueError, and nothing is kept."""
        assert_refused(ctx, bare_target(lambda: fd), events, ValueError)

    @pytest.mark.parametrize("events", [READ, NONE])
    @pytest.mark.parametrize(
        "lacking",
        [
            ("handle_read_event", "handle_write_event"),
            ("fileno",),
            ("handle_write_event",),
            ("fileno", "handle_read_event", "handle_write_event"),
        ],
        ids=["handlers", "fileno", "write-handler", "everything"],
    )
    def test_rule1_register_needs_a_dispatch_target(
        self, ctx: IDispatchContext, sockets: Sockets, events: Events, lacking: tuple[str, ...]
    ) -> None:
        """register() of an object without fileno, handle_read_event or
        handle_write_event raises TypeError at the call, naming the argument (target)
        and what it lacks, and keeps nothing: its descriptor can then be registered by
        a real target, which is served."""
        sock, peer = sockets.pair()
        incomplete = bare_target(sock.fileno, lacking=lacking)
        refused = assert_refused(ctx, incomplete, events, TypeError)
        message = str(refused.value)
        assert "target" in message, message
        assert all(name in message for name in lacking), message
        # The mistake this is for: a socket passed where its dispatcher was meant.
        assert_refused(ctx, sock, events, TypeError)
        target = RecordingTarget(sock)
        ctx.register(target, READ)
        assert_served(ctx, target, peer)

    def test_rule1_events_none_receives_nothing(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A target registered with Events.NONE gets no calls, not even for a hang-up."""
        target, peer = registered_target(ctx, sockets, NONE)
        assert target in ctx
        assert len(ctx) == 1
        peer.send(b"data")
        peer.close()  # pending data, then a hang-up
        start = time.monotonic()
        for _ in range(3):
            assert ctx.dispatch_once(0.02) == 0
        # Not even a wake-up: a hang-up reaching the OS would end each wait at once.
        assert time.monotonic() - start >= 0.05
        assert target.log == []
        # Still registered: interest can be given back, and then it is served.
        ctx.modify(target, READ)
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert target.eof

    def test_rule1_modify_to_none_silences(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """modify(target, NONE) silences a ready target, including its hang-up."""
        # A target that never drains its socket.
        target, peer = registered_target(ctx, sockets, READ_WRITE, on_read=lambda t: None)
        peer.send(b"x")
        peer.close()
        assert ctx.dispatch_once(0) == 2
        ctx.modify(target, NONE)
        start = time.monotonic()
        for _ in range(3):
            assert ctx.dispatch_once(0.02) == 0
        assert time.monotonic() - start >= 0.05
        assert target.log == [("target", "read"), ("target", "write")]
        ctx.unregister(target)
        assert len(ctx) == 0

    def test_rule1_targets_need_not_be_hashable(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """Targets are told apart by identity: unhashable, all-equal targets work."""
        log: list[tuple[str, str]] = []
        sock_a, peer_a = sockets.pair()
        sock_b, peer_b = sockets.pair()
        a = UnhashableTarget(sock_a, log, "a")
        b = UnhashableTarget(sock_b, log, "b")
        ctx.register(a, READ)
        ctx.register(b, READ)
        assert len(ctx) == 2
        peer_b.send(b"x")
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert log == [("b", "read")]
        ctx.unregister(a)
        assert b in ctx
        assert len(ctx) == 1
        peer_a.send(b"x")
        assert ctx.dispatch_once(0.02) == 0

    @pytest.mark.parametrize("events", [READ, WRITE, READ_WRITE, NONE])
    def test_rule2_unregister_after_close(
        self, ctx: IDispatchContext, sockets: Sockets, events: Events
    ) -> None:
        """unregister works when the target's descriptor was already closed."""
        target, _ = registered_target(ctx, sockets, events)
        target.sock.close()
        ctx.unregister(target)
        assert target not in ctx
        assert len(ctx) == 0
        # The context is healthy afterwards, even when the number is reused at once.
        newcomer, new_peer = registered_target(ctx, sockets, READ, name="new")
        assert_served(ctx, newcomer, new_peer)

    def test_rule2_unregister_after_close_and_fd_reuse(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """unregister after close, when another socket already took the fd number."""
        sock, _ = sockets.pair()
        old = RecordingTarget(sock, name="old")
        ctx.register(old, READ_WRITE)
        fd = sock.fileno()
        sock.close()
        new_sock, new_peer = sockets.pair_at(fd)
        ctx.unregister(old)
        assert len(ctx) == 0
        newcomer = RecordingTarget(new_sock, name="new")
        ctx.register(newcomer, READ)
        assert_served(ctx, newcomer, new_peer)
        assert old.log == []
