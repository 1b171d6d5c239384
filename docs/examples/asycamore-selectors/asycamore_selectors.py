"""An example asycamore backend plugin over the standard library's :mod:`selectors`."""

from __future__ import annotations

import os
import selectors
from typing import ClassVar

from asycamore.backends.base import READ, WRITE, DispatcherBase, Registration, ceil_timeout

_IN, _OUT = selectors.EVENT_READ, selectors.EVENT_WRITE
_TO_SELECTORS = (0, _IN, _OUT, _IN | _OUT)  # indexed by READ|WRITE bits
_FROM_SELECTORS = {_IN: READ, _OUT: WRITE, _IN | _OUT: READ | WRITE}


def _file_identity(fd: int) -> tuple[int, int] | None:
    """Which open file *fd* refers to, or None if it is closed."""
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class SelectorsDispatcher(DispatcherBase):
    """Dispatch context over :class:`selectors.DefaultSelector`."""

    name: ClassVar[str] = "selectors"
    priority: ClassVar[int] = 5  # below every built-in: used only when asked for
    # selectors reports neither POLLNVAL nor EBADF as such; epoll and kqueue, the usual
    # DefaultSelector, drop a closed descriptor silently.
    reports_closed_fds: ClassVar[bool | None] = False
    # DefaultSelector is epoll or kqueue on most systems, whose kernel object a forked
    # child must not use: the base gives the child a new selector (kernel_reopen).
    rebuild_after_fork: ClassVar[bool] = True

    @classmethod
    def is_available(cls) -> bool:
        """Always true: selectors exists everywhere."""
        return True

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)  # debug mode comes with the base
        self._selector = selectors.DefaultSelector()
        self._files: dict[int, tuple[int, int] | None] = {}  # fd -> its file at add time

    def kernel_add(self, fd: int, events: int) -> None:
        """Add *fd* to the selector."""
        self._selector.register(fd, _TO_SELECTORS[events])
        self._files[fd] = _file_identity(fd)

    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        """Change what *fd* is selected for."""
        self._selector.modify(fd, _TO_SELECTORS[new])

    def kernel_remove(self, fd: int, events: int) -> None:
        """Drop *fd*, also when it was closed (rule 2), or even reused, meanwhile."""
        self._selector.unregister(fd)
        if _file_identity(fd) != self._files.pop(fd):
            # epoll and kqueue may still watch the old file, and report it on every call
            # if it is kept open elsewhere (rule 6): a new selector is the sure way.
            self.rebuild_kernel()

    def kernel_reopen(self) -> None:
        """A new, empty selector (rebuild_kernel then adds the registrations)."""
        self._selector.close()
        self._selector = selectors.DefaultSelector()
        self._files.clear()

    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        """One ``select()``; rule 3's rounding up comes from ceil_timeout."""
        ms = ceil_timeout(timeout, 1e-3)
        by_fd = self.registrations
        ready = self._selector.select(None if ms is None else ms / 1000)
        return [(by_fd[key.fd], _FROM_SELECTORS[mask]) for key, mask in ready]

    def kernel_close(self) -> None:
        """Close the selector."""
        self._selector.close()
