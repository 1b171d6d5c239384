"""The kqueue backend, tested over a MODEL of kqueue -- not over the kernel.

kqueue exists only on macOS and the BSDs, and these tests run on Linux too.  So this
module contains an in-test model of kqueue's documented semantics (kqueue(2) of
FreeBSD/macOS, and CPython's ``select.kqueue`` wrapper), substitutes it for the
module-level ``_select`` of ``asycamore.backends.kqueue`` (monkeypatch), and runs the
whole conformance kit against ``KqueueDispatcher`` over it.  Passing here shows that the
backend uses kqueue the way kqueue is documented to work; it does not show that a real
kernel behaves like the model.  On a BSD or macOS machine, tests/test_conformance.py runs
the kit against the real kqueue as well.

What the model keeps faithfully:

- knotes keyed by ``(ident, filter)``; ``EV_ADD`` adds or updates one, ``EV_DELETE``
  removes one; deleting a missing knote fails with ``ENOENT``; adding or deleting on a
  descriptor that is not open fails with ``EBADF``;
- closing a descriptor removes its knotes (the model notices the close at its next call:
  the descriptor is gone, or its number now names another file), whatever other
  descriptors still refer to the same socket;
- ``EVFILT_READ`` / ``EVFILT_WRITE`` are level-triggered and computed from the real socket
  at each call (a zero-timeout ``poll`` of the real descriptor, with ``POLLRDHUP``):
  ``EV_EOF`` is set when the peer has shut down (read filter) or the socket can send no
  more (write filter); ``data`` is the byte count readable (``FIONREAD``) or the free send
  space;
- ``control(changelist, maxevents, timeout)``: changes applied in order; a failing change
  raises ``OSError`` when there is no room in the event list, else it is returned as an
  ``EV_ERROR`` event (``data`` = errno) and the call returns at once; ``timeout=None``
  blocks, ``0`` polls, a negative timeout or ``maxevents`` raises ``ValueError`` (as
  CPython does); at most ``maxevents`` events, the delivered ones requeued at the tail;
- ``kevent`` objects with ``ident``, ``filter``, ``flags``, ``fflags``, ``data``, ``udata``.
- the queue is not inherited by a child created with ``fork(2)``: in a child, ``control``
  fails with ``EBADF``, and closing the object would close whatever descriptor has taken
  its number since (CPython 3.11 does not mark an inherited kqueue object closed; the
  model raises AssertionError instead of closing).

What it leaves out: other filters, ``EV_ENABLE``/``EV_DISABLE``/``EV_ONESHOT``/``EV_CLEAR``
(they raise ``NotImplementedError``, so the backend cannot silently rely on them),
``fflags`` error codes, low-water marks, and non-socket descriptors beyond what ``poll``
says about them.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import termios
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from asycamore import Events
from asycamore.backends import kqueue as kqueue_backend
from asycamore.testing import BackendConformance, RecordingTarget, Sockets

pytestmark = pytest.mark.skipif(
    not hasattr(select, "poll") or not hasattr(select, "POLLRDHUP"),
    reason="the model computes readiness with Linux's poll(POLLRDHUP)",
)

# The constants of FreeBSD/macOS <sys/event.h>.
KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000
_UNMODELLED_FLAGS = KQ_EV_ENABLE | KQ_EV_DISABLE | KQ_EV_ONESHOT | KQ_EV_CLEAR
_ACTION_FLAGS = KQ_EV_ADD | KQ_EV_DELETE | KQ_EV_ENABLE | KQ_EV_DISABLE

_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_EOF_READ = _POLLRDHUP | select.POLLHUP | select.POLLERR
_EOF_WRITE = select.POLLHUP | select.POLLERR


class ModelKevent:
    """``select.kevent``: one change or one returned event."""

    def __init__(
        self,
        ident: Any,
        filter: int = KQ_FILTER_READ,
        flags: int = KQ_EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: int = 0,
    ) -> None:
        # Like CPython, an object with fileno() is accepted as the ident.
        self.ident = int(ident.fileno() if hasattr(ident, "fileno") else ident)
        self.filter = filter
        self.flags = flags
        self.fflags = fflags
        self.data = data
        self.udata = udata

    def __repr__(self) -> str:
        return (
            f"<kevent ident={self.ident} filter={self.filter} flags={self.flags:#x} "
            f"fflags={self.fflags:#x} data={self.data}>"
        )


class _Knote:
    def __init__(self, fd: int, filter_: int, flags: int, udata: int) -> None:
        self.fd = fd
        self.filter = filter_
        self.flags = flags
        self.udata = udata
        self.file = _file_identity(fd)


def _file_identity(fd: int) -> tuple[int, int]:
    """The open file behind *fd*; OSError(EBADF) if the descriptor is not open."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _ioctl_int(fd: int, request: int) -> int:
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError:
        return 0
    return buf[0]


def _send_space(fd: int) -> int:
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return 0
    return max(0, size - _ioctl_int(fd, termios.TIOCOUTQ))


class ModelKqueue:
    """``select.kqueue`` over the model (see the module docstring)."""

    def __init__(self) -> None:
        # A real descriptor, so fileno() and close() release something real.
        self._fd, self._other = os.pipe()
        self._closed = False
        self._pid = os.getpid()  # the process whose queue this is (see fork above)
        self.knotes: dict[tuple[int, int], _Knote] = {}  # in queue order
        self.control_calls = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def close(self) -> None:
        if not self._closed:
            if os.getpid() != self._pid:
                raise AssertionError("closed a kqueue inherited across fork(2)")
            self._closed = True
            os.close(self._fd)
            os.close(self._other)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed kqueue object")

    def control(
        self,
        changelist: Iterable[ModelKevent] | None,
        maxevents: int,
        timeout: float | None = None,
    ) -> list[ModelKevent]:
        self._check_open()
        if os.getpid() != self._pid:
            raise OSError(errno.EBADF, "Bad file descriptor (a kqueue is not inherited)")
        self.control_calls += 1
        if maxevents < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {maxevents}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be positive or None")
        self._forget_closed()
        errors: list[ModelKevent] = []
        for change in changelist or ():
            try:
                self._apply(change)
            except OSError as exc:
                if len(errors) >= maxevents:
                    raise  # no room in the event list: kevent() returns -1
                errors.append(
                    ModelKevent(
                        change.ident, change.filter, KQ_EV_ERROR, 0, exc.errno or 0, change.udata
                    )
                )
        if errors:
            return errors  # kevent() returns the errors at once, without waiting
        if maxevents == 0:
            return []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = self._collect(maxevents)
            if ready:
                return ready
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._wait(remaining)
            self._forget_closed()

    def _apply(self, change: ModelKevent) -> None:
        if change.flags & _UNMODELLED_FLAGS:
            raise NotImplementedError(f"the model does not implement {change!r}")
        if change.filter not in (KQ_FILTER_READ, KQ_FILTER_WRITE):
            raise NotImplementedError(f"the model has no filter {change.filter}")
        _file_identity(change.ident)  # EBADF for a descriptor that is not open
        key = (change.ident, change.filter)
        if change.flags & KQ_EV_ADD:
            knote = self.knotes.get(key)
            if knote is None:
                self.knotes[key] = _Knote(change.ident, change.filter, change.flags, change.udata)
            else:
                knote.flags, knote.udata = change.flags, change.udata
        elif change.flags & KQ_EV_DELETE:
            if key not in self.knotes:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            del self.knotes[key]
        else:
            raise NotImplementedError(f"the model does not implement {change!r}")

    def _forget_closed(self) -> None:
        """Drop the knotes of descriptors closed since the last call (close(2) does)."""
        for key, knote in list(self.knotes.items()):
            try:
                same_file = _file_identity(knote.fd) == knote.file
            except OSError:
                same_file = False
            if not same_file:
                del self.knotes[key]

    @staticmethod
    def _poll_mask(fd: int) -> int:
        pollster = select.poll()
        pollster.register(fd, select.POLLIN | select.POLLOUT | _POLLRDHUP)
        result = pollster.poll(0)
        return result[0][1] if result else 0

    def _collect(self, maxevents: int) -> list[ModelKevent]:
        ready: list[ModelKevent] = []
        for key, knote in list(self.knotes.items()):
            if len(ready) >= maxevents:
                break
            mask = self._poll_mask(knote.fd)
            if knote.filter == KQ_FILTER_READ:
                if not mask & (select.POLLIN | _EOF_READ):
                    continue
                eof = bool(mask & _EOF_READ)
                data = _ioctl_int(knote.fd, termios.FIONREAD)
            else:
                if not mask & (select.POLLOUT | _EOF_WRITE):
                    continue
                eof = bool(mask & _EOF_WRITE)
                data = _send_space(knote.fd)
            flags = (knote.flags & ~_ACTION_FLAGS) | (KQ_EV_EOF if eof else 0)
            ready.append(ModelKevent(knote.fd, knote.filter, flags, 0, data, knote.udata))
            # Level-triggered knotes go back to the tail of the active queue.
            self.knotes[key] = self.knotes.pop(key)
        return ready

    def _wait(self, remaining: float | None) -> None:
        """Sleep until a knote's descriptor may have changed, or *remaining* is over."""
        pollster = select.poll()
        for knote in self.knotes.values():
            interest = select.POLLIN | _POLLRDHUP
            if knote.filter == KQ_FILTER_WRITE:
                interest = select.POLLOUT
            with contextlib.suppress(OSError):
                pollster.register(knote.fd, interest)
        # At most 50 ms per round, so closes are noticed; ms, rounded up like kevent's ns.
        step = 0.05 if remaining is None else min(remaining, 0.05)
        pollster.poll(max(1, -(-step * 1000 // 1)))


def make_model() -> types.SimpleNamespace:
    """A stand-in for the ``select`` module as far as the kqueue backend uses it."""
    return types.SimpleNamespace(
        kqueue=ModelKqueue,
        kevent=ModelKevent,
        KQ_FILTER_READ=KQ_FILTER_READ,
        KQ_FILTER_WRITE=KQ_FILTER_WRITE,
        KQ_EV_ADD=KQ_EV_ADD,
        KQ_EV_DELETE=KQ_EV_DELETE,
        KQ_EV_ENABLE=KQ_EV_ENABLE,
        KQ_EV_DISABLE=KQ_EV_DISABLE,
        KQ_EV_ONESHOT=KQ_EV_ONESHOT,
        KQ_EV_CLEAR=KQ_EV_CLEAR,
        KQ_EV_ERROR=KQ_EV_ERROR,
        KQ_EV_EOF=KQ_EV_EOF,
    )


@pytest.fixture
def kqueue_model(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Substitute the model for the kqueue backend's ``select`` module."""
    model = make_model()
    monkeypatch.setattr(kqueue_backend, "_select", model)
    return model


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory = Sockets()
    yield factory
    factory.close_all()


def test_kqueue_is_unavailable_without_kqueue() -> None:
    """Without the model (and on Linux) the backend says it cannot run."""
    assert kqueue_backend.KqueueDispatcher.is_available() is hasattr(select, "kqueue")


# -- the conformance kit over the model ---------------------------------------------------


class TestKqueueOverModel(BackendConformance):
    """The whole conformance kit, against KqueueDispatcher over the kqueue model."""

    @pytest.fixture
    def backend_factory(
        self, kqueue_model: types.SimpleNamespace
    ) -> Callable[[], kqueue_backend.KqueueDispatcher]:
        assert kqueue_backend.KqueueDispatcher.is_available()
        return kqueue_backend.KqueueDispatcher


# -- the model's own semantics (so that the kit above means something) --------------------


def _kev(ident: int | socket.socket, filter_: int, flags: int) -> ModelKevent:
    return ModelKevent(ident, filter_, flags)


def test_model_delete_missing_knote_is_enoent(sockets: Sockets) -> None:
    kq = ModelKqueue()
    sock, _ = sockets.pair()
    with pytest.raises(OSError) as info:
        kq.control([_kev(sock.fileno(), KQ_FILTER_READ, KQ_EV_DELETE)], 0, 0)
    assert info.value.errno == errno.ENOENT
    kq.control([_kev(sock.fileno(), KQ_FILTER_READ, KQ_EV_ADD)], 0, 0)
    with pytest.raises(OSError) as info:
        kq.control([_kev(sock.fileno(), KQ_FILTER_WRITE, KQ_EV_DELETE)], 0, 0)
    assert info.value.errno == errno.ENOENT
    kq.control([_kev(sock.fileno(), KQ_FILTER_READ, KQ_EV_DELETE)], 0, 0)
    assert kq.knotes == {}
    kq.close()


def test_model_closed_descriptor_loses_knotes(sockets: Sockets) -> None:
    kq = ModelKqueue()
    sock, peer = sockets.pair()
    fd = sock.fileno()
    keep = sockets.adopt_fd(os.dup(fd))  # another descriptor does not keep the knotes
    kq.control([_kev(fd, KQ_FILTER_READ, KQ_EV_ADD), _kev(fd, KQ_FILTER_WRITE, KQ_EV_ADD)], 0, 0)
    peer.send(b"x")
    sock.close()
    assert kq.control(None, 4, 0) == []
    assert kq.knotes == {}
    for flags in (KQ_EV_DELETE, KQ_EV_ADD):
        with pytest.raises(OSError) as info:
            kq.control([_kev(fd, KQ_FILTER_READ, flags)], 0, 0)
        assert info.value.errno == errno.EBADF
    # The number reused by another socket: the old knotes stay gone (ENOENT).
    os.dup2(keep, fd)
    sockets.adopt_fd(fd)
    with pytest.raises(OSError) as info:
        kq.control([_kev(fd, KQ_FILTER_READ, KQ_EV_DELETE)], 0, 0)
    assert info.value.errno == errno.ENOENT
    kq.close()


def test_model_errors_go_to_the_event_list_when_there_is_room(sockets: Sockets) -> None:
    kq = ModelKqueue()
    sock, _ = sockets.pair()
    events = kq.control([_kev(sock.fileno(), KQ_FILTER_READ, KQ_EV_DELETE)], 1, None)
    assert len(events) == 1
    assert events[0].flags & KQ_EV_ERROR
    assert events[0].data == errno.ENOENT
    kq.close()


def test_model_level_triggered_readiness_and_eof(sockets: Sockets) -> None:
    kq = ModelKqueue()
    sock, peer = sockets.pair()
    fd = sock.fileno()
    kq.control([_kev(sock, KQ_FILTER_READ, KQ_EV_ADD)], 0, 0)
    assert kq.control(None, 4, 0) == []
    peer.send(b"abc")
    for _ in range(2):  # level-triggered: reported until drained
        (event,) = kq.control(None, 4, 0)
        assert (event.ident, event.filter, event.data) == (fd, KQ_FILTER_READ, 3)
        assert not event.flags & KQ_EV_EOF
    sock.recv(10)
    assert kq.control(None, 4, 0) == []
    peer.close()
    (event,) = kq.control(None, 4, 0)
    assert event.flags & KQ_EV_EOF
    kq.control([_kev(fd, KQ_FILTER_WRITE, KQ_EV_ADD)], 0, 0)
    events = kq.control(None, 4, 0)
    assert {(e.filter, bool(e.flags & KQ_EV_EOF)) for e in events} == {
        (KQ_FILTER_READ, True),
        (KQ_FILTER_WRITE, True),
    }
    kq.close()


def test_model_maxevents_and_fair_queue(sockets: Sockets) -> None:
    kq = ModelKqueue()
    fds = []
    for _ in range(3):
        sock, _ = sockets.pair()
        fds.append(sock.fileno())
        kq.control([_kev(sock.fileno(), KQ_FILTER_WRITE, KQ_EV_ADD)], 0, 0)
    seen = [event.ident for _ in range(3) for event in kq.control(None, 1, 0)]
    assert sorted(seen) == sorted(fds)
    kq.close()


def test_model_timeouts(sockets: Sockets) -> None:
    kq = ModelKqueue()
    sock, _ = sockets.pair()
    kq.control([_kev(sock.fileno(), KQ_FILTER_READ, KQ_EV_ADD)], 0, 0)
    with pytest.raises(ValueError):
        kq.control(None, 1, -1)
    with pytest.raises(ValueError):
        kq.control(None, -1, 0)
    start = time.monotonic()
    assert kq.control(None, 1, 0.05) == []
    assert time.monotonic() - start >= 0.045
    kq.close()
    kq.close()
    with pytest.raises(ValueError):
        kq.control(None, 1, 0)


# -- how the backend drives kqueue ---------------------------------------------------------


def _filters(model_kq: ModelKqueue, fd: int) -> set[int]:
    return {filter_ for (ident, filter_) in model_kq.knotes if ident == fd}


def test_backend_keeps_one_knote_per_interest(
    kqueue_model: types.SimpleNamespace, sockets: Sockets
) -> None:
    """READ and WRITE are separate knotes, added and deleted as the interest changes;
    Events.NONE leaves nothing in the kernel."""
    ctx = kqueue_backend.KqueueDispatcher()
    kq: ModelKqueue = ctx._kqueue
    sock, _ = sockets.pair()
    fd = sock.fileno()
    target = RecordingTarget(sock)
    ctx.register(target, Events.NONE)
    assert _filters(kq, fd) == set()
    for events, expected in [
        (Events.READ, {KQ_FILTER_READ}),
        (Events.READ | Events.WRITE, {KQ_FILTER_READ, KQ_FILTER_WRITE}),
        (Events.WRITE, {KQ_FILTER_WRITE}),
        (Events.NONE, set()),
        (Events.WRITE, {KQ_FILTER_WRITE}),
    ]:
        ctx.modify(target, events)
        assert _filters(kq, fd) == expected
    ctx.unregister(target)
    assert kq.knotes == {}
    ctx.close()
    assert kq.closed
    ctx.close()


def test_backend_unregister_after_close_with_both_filters(
    kqueue_model: types.SimpleNamespace, sockets: Sockets
) -> None:
    """After a close the kernel has dropped both knotes; unregister must not fail, and a
    failed delete of one filter must not leave the other one behind."""
    ctx = kqueue_backend.KqueueDispatcher()
    kq: ModelKqueue = ctx._kqueue
    sock_a, _ = sockets.pair()
    sock_b, _ = sockets.pair()
    a = RecordingTarget(sock_a, name="a")
    b = RecordingTarget(sock_b, name="b")
    ctx.register(a, Events.READ | Events.WRITE)
    ctx.register(b, Events.READ | Events.WRITE)
    fd_b = sock_b.fileno()
    sock_a.close()
    ctx.unregister(a)
    # Only one of b's knotes is gone (deleted behind the backend's back): the other must
    # still be deleted by unregister.
    kq.control([_kev(fd_b, KQ_FILTER_READ, KQ_EV_DELETE)], 0, 0)
    ctx.unregister(b)
    assert kq.knotes == {}
    ctx.close()


def test_backend_timeouts_never_negative(
    kqueue_model: types.SimpleNamespace, sockets: Sockets
) -> None:
    """dispatch_once with a negative timeout polls: the model (like CPython's kqueue)
    refuses a negative timeout, so the backend must pass 0."""
    with kqueue_backend.KqueueDispatcher() as ctx:
        sock, _ = sockets.pair()
        ctx.register(RecordingTarget(sock), Events.READ)
        assert ctx.dispatch_once(-5) == 0
        assert ctx.dispatch_once(0) == 0
