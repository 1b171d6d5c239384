"""What the conformance kit's rule groups share: the configuration and fixtures of
`KitBase`, and the small targets and helpers their tests use.

Internal to :mod:`asycamore.testing`: plugin tests use the names it exports.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any, ClassVar, TypeVar

import pytest

from asycamore.dispatcher import Events, IDispatchContext, IDispatchTarget

from .support import CHUNK, RecordingTarget, Sockets, deadline

READ = Events.READ
WRITE = Events.WRITE
NONE = Events.NONE
READ_WRITE = Events.READ | Events.WRITE

_MAX_SENDS = 4096  # a bound, so a broken backend fails rather than hangs

_E = TypeVar("_E", bound=Exception)


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


def registered_target(
    ctx: IDispatchContext, sockets: Sockets, events: Events, **options: Any
) -> tuple[RecordingTarget, socket.socket]:
    """A target over a new socket pair (*options* as :class:`RecordingTarget`'s),
    registered in *ctx* for *events*; and the pair's other socket, its peer."""
    sock, peer = sockets.pair()
    target = RecordingTarget(sock, **options)
    ctx.register(target, events)
    return target, peer


def assert_served(ctx: IDispatchContext, target: RecordingTarget, peer: socket.socket) -> None:
    """A byte from *peer* makes the next dispatch call *target*'s read handler, and no
    other handler: *target*'s registration is intact and the context healthy."""
    peer.send(b"x")
    with deadline(10):
        assert ctx.dispatch_once(5.0) == 1
    assert target.log == [(target.name, "read")]


def assert_refused(
    ctx: IDispatchContext, target: object, events: Events, error: type[_E]
) -> pytest.ExceptionInfo[_E]:
    """``register(target, events)`` raises *error* and keeps nothing (rule 1)."""
    with pytest.raises(error) as info:
        ctx.register(target, events)  # type: ignore[arg-type]
    assert target not in ctx
    assert len(ctx) == 0
    return info


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


def bare_target(
    fileno: Callable[[], object],
    *,
    lacking: Collection[str] = (),
    on_read: Callable[[], object] | None = None,
) -> Any:
    """An object with a target's three methods and nothing else (no ``close``), less
    those named in *lacking*.

    Its ``fileno()`` returns what *fileno* returns (pass ``sock.fileno``, or
    ``lambda: -7``); its read handler calls *on_read*.  A handler given nothing to do
    fails the test if it runs.
    """

    def handler(self: object) -> None:
        raise AssertionError("a handler that the test never expected to run ran")

    methods = {
        "fileno": lambda self: fileno(),
        "handle_read_event": handler if on_read is None else lambda self: on_read(),
        "handle_write_event": handler,
    }
    namespace = {name: method for name, method in methods.items() if name not in lacking}
    return type("BareTarget", (), namespace)()
