"""What the conformance kit's rule groups share: the configuration and fixtures of
`KitBase`, and the small targets and helpers their tests use.

Internal to :mod:`asycamore.testing`: plugin tests use the names it exports.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from asycamore.dispatcher import Events, IDispatchContext, IDispatchTarget

from .support import CHUNK, RecordingTarget, Sockets

READ = Events.READ
WRITE = Events.WRITE
NONE = Events.NONE
READ_WRITE = Events.READ | Events.WRITE

_MAX_SENDS = 4096  # a bound, so a broken backend fails rather than hangs


class KitBase:
    """The configuration and fixtures every rule group uses (see `BackendConformance`)."""

    backend_class: ClassVar[type[Any] | None] = None
    """The backend class under test; it is constructed without arguments."""

    closed_fd_detection: ClassVar[bool | None] = None
    """Whether the backend detects a descriptor closed while registered (rule 6).

    By default (``None``) the kit reads the backend class's own ``reports_closed_fds``
    attribute (see :attr:`asycamore.backends.base.DispatcherBase.reports_closed_fds`);
    set this only to override it, for a class that does not say.  ``True`` (poll,
    select): the kit requires that the target is unregistered and its error path gets
    ``OSError(EBADF)``.  ``False`` or ``None``: only that the other targets keep being
    served and the context does not spin; if the backend does unregister the target, its
    error path must still have received ``EBADF``.
    """

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def backend_factory(self) -> Callable[[], IDispatchContext]:
        """A callable returning a new dispatch context; by default ``backend_class()``.

        Skips the test when the class says it is not available here.
        """
        cls = self.backend_class
        if cls is None:
            pytest.fail(
                f"{type(self).__name__}: set backend_class or override the backend_factory fixture"
            )
        if not cls.is_available():
            pytest.skip(f"backend {cls.__qualname__} is not available on this platform")
        return cls

    @pytest.fixture
    def ctx(self, backend_factory: Callable[[], IDispatchContext]) -> Iterator[IDispatchContext]:
        """A new dispatch context, closed after the test."""
        context = backend_factory()
        try:
            yield context
        finally:
            context.close()

    @pytest.fixture
    def sockets(self) -> Iterator[Sockets]:
        """A :class:`Sockets` factory whose sockets are closed after the test."""
        factory = Sockets()
        try:
            yield factory
        finally:
            factory.close_all()


def expects_eviction(kit: KitBase, ctx: IDispatchContext) -> bool:
    """Whether rule 6 requires *ctx* to unregister a closed descriptor's target: the test
    class's ``closed_fd_detection`` if set, else the backend class's ``reports_closed_fds``."""
    if kit.closed_fd_detection is not None:
        return kit.closed_fd_detection
    return getattr(type(ctx), "reports_closed_fds", None) is True


def ready_target(
    sockets: Sockets, log: list[tuple[str, str]] | None = None, name: str = "target"
) -> tuple[RecordingTarget, socket.socket]:
    """A target with one byte waiting to be read, and its peer."""
    sock, peer = sockets.pair()
    peer.send(b"x")
    return RecordingTarget(sock, log, name), peer


def fill_send_buffer(sock: socket.socket) -> int:
    """Send until the kernel refuses more; return the number of bytes sent."""
    sent = 0
    chunk = b"x" * CHUNK
    for _ in range(_MAX_SENDS):
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            break
    else:  # pragma: no cover - a send buffer of more than 256 MiB
        raise AssertionError("could not fill the send buffer")
    # The precondition of the tests that use this: the socket is now not writable.
    assert select.select([], [sock], [], 0)[1] == [], "the socket is still writable"
    return sent


def later(delay: float, action: Callable[[], object]) -> threading.Timer:
    """Run *action* in *delay* seconds, on a daemon thread (join the returned timer)."""
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer


class ErrorRecorder:
    """An ``error_in_handler`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[IDispatchTarget, Exception]] = []

    def __call__(self, target: IDispatchTarget, exc: Exception) -> None:
        self.calls.append((target, exc))


class UnhashableTarget(RecordingTarget):
    """A target that compares equal to every other one and cannot be hashed."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return True


class FixedFdTarget:
    """A target whose fileno() returns a fixed number (never registered successfully)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def handle_read_event(self) -> None:
        raise AssertionError("never called")

    def handle_write_event(self) -> None:
        raise AssertionError("never called")


class NoCloseTarget:
    """A target without a ``close`` method, whose read handler raises."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        self.reads += 1
        raise RuntimeError("no close here")

    def handle_write_event(self) -> None:
        pass
