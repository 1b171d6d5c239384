"""After ``fork()``: a child's use of an inherited context never disturbs the parent's.

epoll's kernel set is shared by parent and child (and kqueue's is not inherited at all),
so a child that unregisters, modifies, or registers on an inherited context could remove
the parent's targets from the parent's set, or make the parent spin on a file of its
own.  These tests fork a real child while the parent keeps serving a socket pair, and
count the parent's handler calls.
"""

from __future__ import annotations

import os
import select
import signal
import time
import traceback

import pytest

from asycamore.dispatcher import IDispatchContext

from .kit import NONE, READ, READ_WRITE, KitBase
from .support import RecordingTarget, Sockets, deadline

__all__ = ["ForkRules"]

_ROUNDS = 40  # the parent's busy rounds, about half of them after the child is done
_CHILD_ALARM = 30  # seconds: a child stuck on a broken context is killed, not left behind


def _child(
    ctx: IDispatchContext, action: str, a: RecordingTarget, b: RecordingTarget, keep: Sockets
) -> None:
    """What the child does with the inherited context; raises if the context fails it.
    The child's own sockets go to *keep*, to stay open until the parent is done."""
    if action == "close":
        ctx.close()
        return
    if action == "modify":
        ctx.modify(a, READ_WRITE)
        ctx.modify(b, NONE)
        ctx.close()
        return
    # "unregister" and "register": give up the inherited targets, as a child that closes
    # what it inherited (leaving a `with` block through sys.exit, say) does.
    fd = b.fileno()
    ctx.unregister(a)
    ctx.unregister(b)
    if action == "unregister":
        ctx.close()
        return
    # "register": a socket of the child's own on b's descriptor number, readable and
    # never drained; the child's context must serve it (and only the child's).
    b.sock.close()
    mine, peer = keep.pair_at(fd)
    peer.send(b"child")
    c = RecordingTarget(mine, name="c", on_read=lambda me: None)
    ctx.register(c, READ)
    if ctx.dispatch_once(5.0) != 1 or c.log != [("c", "read")]:
        raise AssertionError(f"the child's own target was not served: {c.log}")


class ForkRules(KitBase):
    """After ``fork()`` the child's copy of a context is its own: what the child does with
    it (close, modify, unregister, register on an inherited number) leaves the parent's
    targets served, and the parent never spins on the child's files."""

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.parametrize("action", ["close", "modify", "unregister", "register"])
    def test_fork_child_leaves_the_parent_alone(
        self, ctx: IDispatchContext, sockets: Sockets, action: str
    ) -> None:
        """While the parent serves target a every round, a forked child uses the inherited
        context (*action*); the parent's a is served exactly once per round, its idle
        target b never, idle dispatches still wait, and the child's context works."""
        sock_a, peer_a = sockets.pair()
        sock_b, _ = sockets.pair()
        a = RecordingTarget(sock_a, name="a")
        b = RecordingTarget(sock_b, a.log, name="b")
        ctx.register(a, READ)
        ctx.register(b, READ)
        done_r, done_w = os.pipe()
        exit_r, exit_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage does not follow it
            status = 1
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(_CHILD_ALARM)
                os.close(done_r)
                os.close(exit_w)
                keep = Sockets()  # the child's own sockets, open until the parent is done
                _child(ctx, action, a, b, keep)
                os.write(done_w, b"ok")
                status = 0
                os.read(exit_r, 1)
            except BaseException:
                os.write(done_w, traceback.format_exc().encode())
            finally:
                os._exit(status)
        os.close(done_w)
        os.close(exit_r)
        child_said = b""
        try:
            with deadline(60, "the parent's dispatches while a child uses the context"):
                for round_ in range(1, _ROUNDS + 1):
                    peer_a.send(b"x")
                    assert ctx.dispatch_once(5.0) == 1, f"round {round_}: {a.log[-3:]}"
                    if not child_said and round_ < _ROUNDS // 2:
                        time.sleep(0.005)  # the child acts while the parent is busy
                    elif not child_said:
                        answered, _, _ = select.select([done_r], [], [], 10.0)
                        child_said = os.read(done_r, 65536) if answered else b"(no answer)"
                start = time.monotonic()
                idle_calls = sum(ctx.dispatch_once(0.05) for _ in range(4))
            idle = time.monotonic() - start
        finally:
            os.close(exit_w)
            _, wait_status = os.waitpid(pid, 0)
            os.close(done_r)
        assert child_said == b"ok", child_said.decode(errors="replace")
        assert os.waitstatus_to_exitcode(wait_status) == 0
        assert b.calls() == 0, f"the parent ran b's handler {b.calls()} times (a child's file)"
        assert a.calls("read") == _ROUNDS, f"a was served {a.calls('read')} of {_ROUNDS} times"
        assert idle_calls == 0
        assert idle >= 0.15, "idle dispatches returned at once (a spin)"
