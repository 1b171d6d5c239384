"""The epoll backend: what the conformance kit cannot see from outside.

epoll watches open files, not descriptor numbers: a socket whose descriptor was closed
while registered stays in the kernel set when another descriptor (a dup, a forked child)
keeps it open, and can then no longer be removed by its number.  The backend rebuilds its
set when that may have happened; these tests pin the consequences down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import asycamore
from asycamore import Events
from asycamore.testing import RecordingTarget, Sockets

pytestmark = pytest.mark.skipif(
    "epoll" not in {i.name for i in asycamore.list_backends() if i.available},
    reason="epoll is not available here",
)


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory = Sockets()
    yield factory
    factory.close_all()


@pytest.fixture
def ctx() -> Iterator[asycamore.IDispatchContext]:
    with asycamore.create_dispatcher("epoll") as context:
        yield context


def _closed_but_alive(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> tuple[RecordingTarget, int]:
    """Register A, keep its socket open through a dup, make it readable, close A's
    descriptor and unregister A.  Returns A and its old descriptor number."""
    sock, peer = sockets.pair()
    old = RecordingTarget(sock, name="old")
    ctx.register(old, Events.READ)
    fd = sock.fileno()
    sockets.adopt_fd(os.dup(fd))
    peer.send(b"still readable through the dup")
    sock.close()
    ctx.unregister(old)
    return old, fd


def test_newcomer_on_the_old_number_gets_nothing_of_the_old_socket(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    old, fd = _closed_but_alive(ctx, sockets)
    sock, peer = sockets.pair_at(fd)
    newcomer = RecordingTarget(sock, name="new")
    ctx.register(newcomer, Events.READ)
    start = time.monotonic()
    for _ in range(3):
        assert ctx.dispatch_once(0.05) == 0
    assert time.monotonic() - start >= 0.12
    assert newcomer.log == []
    peer.send(b"x")
    assert ctx.dispatch_once(1.0) == 1
    assert newcomer.log == [("new", "read")]
    assert old.log == []


def test_idle_context_does_not_spin_after_such_a_close(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    _closed_but_alive(ctx, sockets)
    start = time.monotonic()
    for _ in range(4):
        assert ctx.dispatch_once(0.05) == 0
    assert time.monotonic() - start >= 0.15


def test_rebuild_keeps_fileno_and_close_on_exec(
    ctx: asycamore.IDispatchContext, sockets: Sockets
) -> None:
    number = ctx.fileno()  # type: ignore[attr-defined]
    assert not os.get_inheritable(number)
    others = [RecordingTarget(sockets.pair()[0], name=f"o{i}") for i in range(3)]
    for other in others:
        ctx.register(other, Events.WRITE)
    _closed_but_alive(ctx, sockets)
    assert ctx.dispatch_once(0) == 3  # the rebuild happened; the others are all there
    assert ctx.fileno() == number  # type: ignore[attr-defined]
    assert not os.get_inheritable(number)


def test_events_none_never_reaches_the_kernel(
    ctx: asycamore.IDispatchContext, tmp_path: Path
) -> None:
    """epoll refuses regular files (EPERM): registering one with NONE works, since NONE
    is never handed to epoll; asking for READ then fails and changes nothing."""
    path = tmp_path / "regular"
    path.write_bytes(b"")
    with path.open("rb") as file:

        class FileTarget:
            def fileno(self) -> int:
                return file.fileno()

            def handle_read_event(self) -> None:
                raise AssertionError("never")

            def handle_write_event(self) -> None:
                raise AssertionError("never")

        target = FileTarget()
        ctx.register(target, Events.NONE)
        assert target in ctx
        with pytest.raises(PermissionError):
            ctx.modify(target, Events.READ)
        assert target in ctx
        assert ctx.dispatch_once(0) == 0
        ctx.modify(target, Events.NONE)
        ctx.unregister(target)
        with pytest.raises(PermissionError):
            ctx.register(target, Events.READ)
        assert target not in ctx
        assert len(ctx) == 0


def test_fileno_is_the_epoll_descriptor(ctx: asycamore.IDispatchContext) -> None:
    number = ctx.fileno()  # type: ignore[attr-defined]
    assert os.readlink(f"/proc/self/fd/{number}") == "anon_inode:[eventpoll]"
