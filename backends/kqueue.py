"""The BSD/macOS ``kqueue`` backend: O(1) in the number of idle descriptors.

kqueue watches (descriptor, filter) pairs: a target's READ and WRITE interest are two
separate knotes (``EVFILT_READ``, ``EVFILT_WRITE``), added and deleted one by one as the
interest changes.
"""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import override
else:  # the same marker, without importing typing_extensions (see base.override)
    from .base import override

from .base import MAX_EVENTS_PER_WAIT, READ, WRITE, DispatcherBase, Registration, ceil_timeout

__all__ = ["KqueueDispatcher"]

# typeshed declares kqueue only for BSD and macOS; going through Any keeps this module
# type-checkable on Linux, where the class must still exist (is_available() says False).
_select: Any = select

_FILTERS = ((READ, "KQ_FILTER_READ"), (WRITE, "KQ_FILTER_WRITE"))
_GONE = frozenset({errno.EBADF, errno.ENOENT})
# kqueue objects a forked child inherited and must never close (see kernel_reopen).
_INHERITED_KQUEUES: list[Any] = []


class KqueueDispatcher(DispatcherBase):
    """Dispatch context over :func:`select.kqueue` (macOS, FreeBSD, OpenBSD, NetBSD).

    ``EV_EOF`` (the peer hung up) and ``EV_ERROR`` are reported as readiness for every
    interest the target registered.  A descriptor closed while registered loses its
    knotes in the kernel, so its target simply stops receiving events.

    A kqueue is not inherited by a child created with ``fork()``: the child's first use
    of the context makes a new kqueue holding the child's registrations (see
    ``rebuild_after_fork``), with a new descriptor number: in a child, take `fileno`
    after that first use.
    """

    name: ClassVar[str] = "kqueue"
    priority: ClassVar[int] = 40
    reports_closed_fds: ClassVar[bool | None] = False
    rebuild_after_fork: ClassVar[bool] = True  # a kqueue is not inherited by fork()

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)
        self._kqueue = _select.kqueue()
        self._kqueue_pid = os.getpid()  # the process the kqueue belongs to
        self._filter_read: int = _select.KQ_FILTER_READ
        self._filter_write: int = _select.KQ_FILTER_WRITE
        # Both flags mean "the peer or the descriptor failed": rule 5 readiness.
        self._failed_flags: int = _select.KQ_EV_EOF | _select.KQ_EV_ERROR
        self._knotes = 0  # the number of filters in the kernel, to size the result list

    @override
    @classmethod
    def is_available(cls) -> bool:
        """True where :func:`select.kqueue` exists (macOS and the BSDs)."""
        return hasattr(_select, "kqueue")

    def fileno(self) -> int:
        """The kqueue descriptor, for nesting this context in another loop."""
        return int(self._kqueue.fileno())

    def _change(self, fd: int, events: int, flags: int) -> None:
        changes = [
            _select.kevent(fd, getattr(_select, filter_name), flags)
            for bit, filter_name in _FILTERS
            if events & bit
        ]
        if changes:
            self._kqueue.control(changes, 0, 0)

    @override
    def kernel_add(self, fd: int, events: int) -> None:
        self._change(fd, events, _select.KQ_EV_ADD)
        self._knotes += bin(events).count("1")

    @override
    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        self.kernel_remove(fd, old & ~new)
        self.kernel_add(fd, new & ~old)

    @override
    def kernel_remove(self, fd: int, events: int) -> None:
        self._knotes -= bin(events).count("1")
        # One filter at a time: when the fd is already closed the kernel has dropped its
        # knotes, and a failed delete must not keep the other filter in the kernel.
        for bit, _ in _FILTERS:
            if events & bit:
                try:
                    self._change(fd, bit, _select.KQ_EV_DELETE)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise

    @override
    def kernel_reopen(self) -> None:
        inherited, self._kqueue = self._kqueue, _select.kqueue()
        self._knotes = 0
        if self._kqueue_pid == os.getpid():
            inherited.close()
        elif not inherited.closed:
            # In a forked child the old descriptor number is not a kqueue (it was not
            # inherited) and may name another file by now: closing it would close that.
            # CPython 3.12.1+ marks such objects closed; before, keep it from ever being
            # finalized (one small object per context and fork).
            _INHERITED_KQUEUES.append(inherited)
        self._kqueue_pid = os.getpid()

    @override
    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        ns = ceil_timeout(timeout, 1e-9)
        kevents = self._kqueue.control(
            None, min(max(self._knotes, 1), MAX_EVENTS_PER_WAIT), None if ns is None else ns * 1e-9
        )
        by_fd = self.registrations
        ready: dict[int, int] = {}
        for kevent in kevents:
            fd = kevent.ident
            registration = by_fd.get(fd)
            if registration is None:
                continue
            if kevent.flags & self._failed_flags:
                events = registration.events
            elif kevent.filter == self._filter_read:
                events = READ
            elif kevent.filter == self._filter_write:
                events = WRITE
            else:
                continue
            ready[fd] = ready.get(fd, 0) | events
        return [(by_fd[fd], events) for fd, events in ready.items()]

    @override
    def kernel_close(self) -> None:
        self._kqueue.close()
