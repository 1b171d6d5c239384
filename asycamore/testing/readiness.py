"""Rules 5 and 6: what the OS reports besides data -- hang-ups, resets, errors, and a
descriptor closed while registered."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable

import pytest

from asycamore.dispatcher import ErrorHandler, IDispatchContext

from .kit import (
    READ,
    READ_WRITE,
    WRITE,
    ErrorRecorder,
    KitBase,
    expects_eviction,
    fill_send_buffer,
    registered_target,
)
from .support import RecordingTarget, Sockets, deadline

__all__ = ["ReadinessRules"]


def _reset(sock: socket.socket) -> None:
    """Close *sock* with SO_LINGER 0, so that the peer gets a TCP reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    sock.close()


def _is_ebadf(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EBADF


def _writer_learns_of_hang_up(
    ctx: IDispatchContext, sock: socket.socket, hang_up: Callable[[], object]
) -> None:
    """A WRITE-only target on *sock*, whose send buffer is full, gets handle_write_event
    (and no read call) once ``hang_up()`` ends the connection; its next send fails."""
    fill_send_buffer(sock)
    errors: list[OSError] = []

    def on_write(me: RecordingTarget) -> None:
        try:
            me.sock.send(b"more")
        except OSError as exc:
            errors.append(exc)

    target = RecordingTarget(sock, on_write=on_write)
    ctx.register(target, WRITE)
    assert ctx.dispatch_once(0.02) == 0  # not writable yet
    hang_up()
    with deadline(10):
        assert ctx.dispatch_once(5.0) == 1
    assert target.log == [("target", "write")]
    assert len(errors) == 1
    assert isinstance(errors[0], (BrokenPipeError, ConnectionResetError))


class ReadinessRules(KitBase):
    """Rule 5 (a hang-up or error is readiness for each interest) and rule 6 (a
    descriptor closed while registered must not break or spin the context)."""

    def test_rule5_peer_closed_is_readable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A READ target whose peer closed gets handle_read_event (and recv sees EOF), and
        no write call: only the registered interest is reported."""
        target, peer = registered_target(ctx, sockets, READ)
        peer.close()
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert target.eof

    def test_rule5_peer_closed_is_writable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A WRITE-only target with a full send buffer gets handle_write_event when its
        peer closes, and no read call; its next send reveals the error."""
        sock, peer = sockets.pair()
        _writer_learns_of_hang_up(ctx, sock, peer.close)

    def test_rule5_peer_closed_both_interests(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A READ|WRITE target whose peer closed gets both calls, read first."""
        target, peer = registered_target(ctx, sockets, READ_WRITE)
        peer.close()
        assert ctx.dispatch_once(0) == 2
        assert target.log == [("target", "read"), ("target", "write")]

    def test_rule5_reset_is_readable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A TCP reset (SO_LINGER 0 on the peer) is reported to a READ target, whose recv
        then fails or sees EOF."""
        client, server = sockets.tcp_pair()
        outcome: list[object] = []

        def on_read(me: RecordingTarget) -> None:
            try:
                outcome.append(me.sock.recv(100))
            except OSError as exc:
                outcome.append(exc)

        target = RecordingTarget(client, on_read=on_read)
        ctx.register(target, READ)
        assert ctx.dispatch_once(0.02) == 0
        _reset(server)
        with deadline(10):
            assert ctx.dispatch_once(5.0) == 1
        assert target.log == [("target", "read")]
        assert outcome == [b""] or isinstance(outcome[0], ConnectionResetError), outcome

    def test_rule5_reset_is_writable(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """A TCP reset is reported to a WRITE-only target whose send buffer is full."""
        client, server = sockets.tcp_pair(buffer_size=4096)
        _writer_learns_of_hang_up(ctx, client, lambda: _reset(server))

    def _closed_while_registered(
        self,
        ctx: IDispatchContext,
        sockets: Sockets,
        error_in_handler: ErrorHandler | None,
        *,
        keep_file_open: bool,
    ) -> RecordingTarget:
        """Close A's descriptor without unregistering it; check that B keeps being served
        and that idle dispatches still wait.  Returns A."""
        sock_a, peer_a = sockets.pair()
        sock_b, peer_b = sockets.pair()
        a = RecordingTarget(sock_a, name="a")
        b = RecordingTarget(sock_b, name="b")
        ctx.register(a, READ)
        ctx.register(b, READ)
        if keep_file_open:
            # Another descriptor keeps the socket alive, and it is readable.
            sockets.adopt_fd(os.dup(sock_a.fileno()))
            peer_a.send(b"x")
        sock_a.close()
        with deadline(30, "dispatching with a closed descriptor registered"):
            for _ in range(20):
                peer_b.send(b"y")
                ctx.dispatch_once(2.0, error_in_handler)
                if b.calls("read") >= 10:
                    break
            assert b.calls("read") >= 10, "the other target was not served"
            start = time.monotonic()
            for _ in range(4):
                ctx.dispatch_once(0.05, error_in_handler)
        assert time.monotonic() - start >= 0.15, "idle dispatches returned at once (a spin)"
        if expects_eviction(self, ctx):
            assert a not in ctx, "the closed descriptor's target was not unregistered"
        return a

    def test_rule6_closed_fd_does_not_break_context(
        self, ctx: IDispatchContext, sockets: Sockets
    ) -> None:
        """A descriptor closed while registered: the others are served, no busy spin;
        if the target is unregistered, its error path got OSError(EBADF) once."""
        errors = ErrorRecorder()
        a = self._closed_while_registered(ctx, sockets, errors, keep_file_open=False)
        reports = [exc for target, exc in errors.calls if target is a]
        if a not in ctx:
            assert len(reports) == 1
            assert _is_ebadf(reports[0]), reports
        assert all(target is a for target, _ in errors.calls), errors.calls

    def test_rule6_closed_fd_default_policy(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The same with the default error policy: an unregistered target was logged
        with its EBADF and closed."""
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            a = self._closed_while_registered(ctx, sockets, None, keep_file_open=False)
        if a not in ctx:
            assert a.close_calls == 1
            logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
            assert any(_is_ebadf(exc) for exc in logged), caplog.text

    def test_rule6_closed_fd_with_live_duplicate(
        self, ctx: IDispatchContext, sockets: Sockets, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A descriptor closed while registered whose socket stays open (and readable)
        through another descriptor must not make the context spin either (default
        policy).  epoll, for one, keeps such a socket in its set after the close."""
        with caplog.at_level(logging.ERROR, logger="asycamore"):
            a = self._closed_while_registered(ctx, sockets, None, keep_file_open=True)
        if a not in ctx:
            assert a.close_calls == 1
