"""The portable ``select`` backend: descriptors below ``FD_SETSIZE`` only."""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from typing_extensions import override
else:  # the same marker, without importing typing_extensions (see base.override)
    from .base import override

from .base import CLOSED, READ, WRITE, DispatcherBase, Registration, ceil_timeout

__all__ = ["FD_SETSIZE", "SelectDispatcher"]

FD_SETSIZE = 1024
"""select(2) cannot watch a descriptor at or above this number (glibc, macOS, BSD)."""


class SelectDispatcher(DispatcherBase):
    """Dispatch context over :func:`select.select`.

    The reader and writer sets are kept between dispatches and changed only when
    interest changes.  ``select`` fails as a whole (``EBADF``) when one descriptor was
    closed while registered: the culprits are found, unregistered and reported to their
    error path with ``OSError(EBADF)``, and the others are served on the next dispatch.
    """

    name: ClassVar[str] = "select"
    priority: ClassVar[int] = 10
    reports_closed_fds: ClassVar[bool | None] = True

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)
        self._readers: set[int] = set()
        self._writers: set[int] = set()

    @override
    @classmethod
    def is_available(cls) -> bool:
        """Always true: every platform has select."""
        return True

    @override
    def check_fd(self, fd: int) -> None:
        # First, so that every fd at or above the limit gets the message naming the
        # backends without it (rule 8), even one beyond what any backend takes.
        if fd >= FD_SETSIZE:
            raise ValueError(
                f"fd {fd} is at or above FD_SETSIZE ({FD_SETSIZE}), which the select backend "
                "cannot watch; use the poll or epoll backend"
            )
        super().check_fd(fd)

    @override
    def kernel_add(self, fd: int, events: int) -> None:
        if events & READ:
            self._readers.add(fd)
        if events & WRITE:
            self._writers.add(fd)

    @override
    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        self.kernel_remove(fd, old)
        self.kernel_add(fd, new)

    @override
    def kernel_remove(self, fd: int, events: int) -> None:
        self._readers.discard(fd)
        self._writers.discard(fd)

    @override
    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        us = ceil_timeout(timeout, 1e-6)
        try:
            readable, writable, _ = select.select(
                self._readers, self._writers, (), None if us is None else us * 1e-6
            )
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return self._closed_registrations()
        by_fd = self.registrations
        ready: dict[int, int] = dict.fromkeys(readable, READ)
        for fd in writable:
            ready[fd] = ready.get(fd, 0) | WRITE
        # select reports an error or hang-up as readable and/or writable, which the
        # handlers' next recv/send turns into the error, so rule 5 needs nothing more.
        return [(by_fd[fd], events) for fd, events in ready.items() if fd in by_fd]

    def _closed_registrations(self) -> list[tuple[Registration, int]]:
        """The registrations whose descriptors are closed, marked for eviction."""
        closed = []
        for fd in self._readers | self._writers:
            try:
                os.fstat(fd)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    closed.append((self.registrations[fd], CLOSED))
        return closed
