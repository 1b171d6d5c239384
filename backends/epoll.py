"""The Linux ``epoll`` backend: O(1) in the number of idle descriptors."""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from typing_extensions import override
else:  # the same marker, without importing typing_extensions (see base.override)
    from .base import override

from .base import MAX_EVENTS_PER_WAIT, READ, WRITE, DispatcherBase, Registration, ceil_timeout

__all__ = ["EpollDispatcher"]

_EPOLLIN = getattr(select, "EPOLLIN", 0x001)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0x004)
# Interest (READ|WRITE bits) -> epoll mask.
_TO_EPOLL = (0, _EPOLLIN, _EPOLLOUT, _EPOLLIN | _EPOLLOUT)
# Reported mask -> events, for the masks a healthy descriptor gets: one lookup per
# report.  Any other mask holds EPOLLERR or EPOLLHUP, the only bits epoll adds to those
# asked for; the contract turns them into readiness for every interest (rule 5).
_EVENTS_OF_MASK = {_EPOLLIN: READ, _EPOLLOUT: WRITE, _EPOLLIN | _EPOLLOUT: READ | WRITE}
_GONE = frozenset({errno.EBADF, errno.ENOENT})


class EpollDispatcher(DispatcherBase):
    """Dispatch context over :func:`select.epoll` (Linux).

    Level-triggered.  The kernel set changes only when a target's interest changes, and a
    dispatch costs O(ready), not O(registered).  A descriptor closed while registered is
    dropped by the kernel silently, so its target simply stops receiving events.

    Except when another descriptor still holds the same socket open (a ``dup``, a forked
    child): epoll watches open files, not numbers, so the socket stays in the set after
    the close and can no longer be removed by its number.  When a removal finds the
    descriptor already gone, or the kernel reports a descriptor no target has, the set is
    rebuilt from the registrations before the next wait (under the same descriptor
    number), so such a socket cannot make the context spin or reach a newcomer that
    took over its number.  Unregister before closing to keep every dispatch O(ready).

    After ``fork()`` parent and child share the one kernel set: a child's
    ``epoll_ctl`` would remove the parent's targets or add files of its own under the
    parent's numbers.  So the child never calls it on the inherited set: its first use
    of the context makes a set of its own, holding the child's registrations, under the
    same descriptor number (see ``rebuild_after_fork``).
    """

    name: ClassVar[str] = "epoll"
    priority: ClassVar[int] = 30
    reports_closed_fds: ClassVar[bool | None] = False
    rebuild_after_fork: ClassVar[bool] = True  # the set is shared with a forked child

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)
        self._epoll = select.epoll()
        # True when the kernel set may hold a file no registration accounts for.
        self._stale = False

    @override
    @classmethod
    def is_available(cls) -> bool:
        """True where :func:`select.epoll` exists (Linux)."""
        return hasattr(select, "epoll")

    def fileno(self) -> int:
        """The epoll descriptor, for nesting this context in another loop."""
        return self._epoll.fileno()

    @override
    def kernel_add(self, fd: int, events: int) -> None:
        self._epoll.register(fd, _TO_EPOLL[events])

    @override
    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        self._epoll.modify(fd, _TO_EPOLL[new])

    @override
    def kernel_remove(self, fd: int, events: int) -> None:
        try:
            self._epoll.unregister(fd)
        except OSError as exc:
            # The descriptor was closed before being unregistered (EBADF, or ENOENT when
            # its number has been reused by a file the set never knew).  The kernel has
            # dropped it from the set, unless another descriptor keeps its file open.
            if exc.errno not in _GONE:
                raise
            self._stale = True

    @override
    def kernel_reopen(self) -> None:
        self._stale = False
        fresh = select.epoll()
        try:
            # Keep the descriptor number fileno() gave out.  This closes only this
            # process's descriptor of the old set: after a fork, the parent's set lives on.
            os.dup2(fresh.fileno(), self._epoll.fileno(), inheritable=False)
        finally:
            fresh.close()

    @override
    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        if self._stale:
            self.rebuild_kernel()
        # epoll takes seconds but waits in whole milliseconds; -1 blocks.  Blocking and
        # polling, a service's usual two, skip the rounding call (this runs per dispatch).
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            ms = ceil_timeout(timeout, 1e-3)
            wait = -1.0 if ms is None else ms * 1e-3
        by_fd = self.registrations
        max_events = len(by_fd)
        if not 0 < max_events <= MAX_EVENTS_PER_WAIT:  # no min(): a call per dispatch
            max_events = MAX_EVENTS_PER_WAIT if max_events else 1
        ready = self._epoll.poll(wait, max_events)
        result: list[tuple[Registration, int]] = []
        append = result.append
        for fd, mask in ready:
            registration = by_fd.get(fd)
            if registration is None or not registration.events:
                # A file the set should not hold (see the class docstring).
                self._stale = True
                continue
            if mask == _EPOLLIN:  # by far the most common report: no table lookup
                append((registration, READ))
                continue
            events = _EVENTS_OF_MASK.get(mask)
            if events is None:
                # EPOLLERR or EPOLLHUP (perhaps with IN/OUT): see _EVENTS_OF_MASK.
                events = registration.events
            append((registration, events))
        return result

    @override
    def kernel_close(self) -> None:
        self._epoll.close()
