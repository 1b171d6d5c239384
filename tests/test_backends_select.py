"""The select backend: rule 8 (descriptors at or above FD_SETSIZE) and its EBADF path."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator

import pytest

import asycamore
from asycamore import Events
from asycamore.backends.select import FD_SETSIZE
from asycamore.testing import RecordingTarget, Sockets


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory = Sockets()
    yield factory
    factory.close_all()


@contextlib.contextmanager
def _descriptor_limit(at_least: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE to *at_least* for the duration, if it is lower."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            pytest.skip(f"the hard descriptor limit ({hard}) is below {at_least}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _free_fd_from(start: int) -> int:
    for fd in range(start, start + 64):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return fd
    raise AssertionError(f"no free descriptor in {start}..{start + 63}")


def _socket_at(sockets: Sockets, fd: int) -> tuple[socket.socket, socket.socket]:
    """A socketpair whose first socket has descriptor number *fd*."""
    sock, peer = sockets.pair()
    os.dup2(sock.fileno(), fd)
    sock.close()
    moved = sockets.adopt(socket.socket(fileno=fd))
    moved.setblocking(False)
    return moved, peer


def test_fd_setsize() -> None:
    assert FD_SETSIZE == 1024


@pytest.mark.parametrize("events", [Events.READ, Events.WRITE, Events.NONE])
def test_rule8_refuses_fd_at_or_above_fd_setsize(sockets: Sockets, events: Events) -> None:
    with _descriptor_limit(FD_SETSIZE + 64):
        sock, _ = _socket_at(sockets, _free_fd_from(FD_SETSIZE))
        assert sock.fileno() >= FD_SETSIZE
        target = RecordingTarget(sock)
        with asycamore.create_dispatcher("select") as ctx:
            with pytest.raises(ValueError) as info:
                ctx.register(target, events)
            message = str(info.value)
            assert "poll" in message or "epoll" in message
            assert str(FD_SETSIZE) in message
            assert target not in ctx
            assert len(ctx) == 0


def test_rule8_accepts_the_last_fd_below_fd_setsize(sockets: Sockets) -> None:
    """FD_SETSIZE - 1 is still fine, and really served."""
    with _descriptor_limit(FD_SETSIZE + 64):
        fd = FD_SETSIZE - 1
        with contextlib.suppress(OSError):
            os.fstat(fd)
            pytest.skip(f"descriptor {fd} is in use")
        sock, peer = _socket_at(sockets, fd)
        target = RecordingTarget(sock)
        with asycamore.create_dispatcher("select") as ctx:
            ctx.register(target, Events.READ)
            peer.send(b"x")
            assert ctx.dispatch_once(1.0) == 1
        assert target.log == [("target", "read")]


@pytest.mark.parametrize("name", ["poll", "epoll"])
def test_the_suggested_backends_have_no_such_limit(sockets: Sockets, name: str) -> None:
    if name not in {i.name for i in asycamore.list_backends() if i.available}:
        pytest.skip(f"{name} is not available here")
    with _descriptor_limit(FD_SETSIZE + 64):
        sock, peer = _socket_at(sockets, _free_fd_from(FD_SETSIZE))
        target = RecordingTarget(sock)
        with asycamore.create_dispatcher(name) as ctx:
            ctx.register(target, Events.READ)
            peer.send(b"x")
            assert ctx.dispatch_once(1.0) == 1
        assert target.log == [("target", "read")]


def test_ebadf_evicts_only_the_closed_descriptors(sockets: Sockets) -> None:
    """select() fails as a whole on a closed descriptor: every closed one is evicted and
    reported, the open ones stay registered and are served on the next dispatch."""
    errors: list[tuple[object, Exception]] = []
    pairs = [sockets.pair() for _ in range(4)]
    targets = [RecordingTarget(sock, name=f"t{i}") for i, (sock, _) in enumerate(pairs)]
    with asycamore.create_dispatcher("select") as ctx:
        for target in targets:
            ctx.register(target, Events.READ)
        for index in (0, 2):
            targets[index].sock.close()
        for index in (1, 3):
            pairs[index][1].send(b"x")
        ctx.dispatch_once(0.5, lambda target, exc: errors.append((target, exc)))
        assert {id(target) for target, _ in errors} == {id(targets[0]), id(targets[2])}
        assert all(isinstance(e, OSError) and e.errno == errno.EBADF for _, e in errors)
        assert len(ctx) == 2
        assert targets[1] in ctx
        assert targets[3] in ctx
        assert ctx.dispatch_once(0.5) == 2
        assert sorted(targets[1].log + targets[3].log) == [("t1", "read"), ("t3", "read")]


def test_select_is_available_and_the_last_resort() -> None:
    infos = {i.name: i for i in asycamore.list_backends() if i.origin == "built-in"}
    assert infos["select"].available
    assert infos["select"].priority == min(info.priority for info in infos.values())
