"""asycamore-plugin-demo: a third-party asycamore backend over :func:`select.poll`.

Written as an out-of-tree plugin is: against asycamore's public API only, here the
public base class :mod:`asycamore.backends.base`, which brings the registration state,
the dispatch loop and the error policy; this module only talks to ``poll``.  Its
priority of 100 outranks every built-in backend, so once installed it is the default.
"""

from __future__ import annotations

import select
from typing import ClassVar

from asycamore.backends.base import CLOSED, READ, WRITE, DispatcherBase, Registration, ceil_timeout

__all__ = ["DemoDispatcher"]

_TO_POLL = (0, select.POLLIN, select.POLLOUT, select.POLLIN | select.POLLOUT)
_FAILED = select.POLLERR | select.POLLHUP


class DemoDispatcher(DispatcherBase):
    """A dispatch context over :func:`select.poll`."""

    name: ClassVar[str] = "demo"
    priority: ClassVar[int] = 100
    reports_closed_fds: ClassVar[bool | None] = True  # POLLNVAL

    @classmethod
    def is_available(cls) -> bool:
        """True where :func:`select.poll` exists."""
        return hasattr(select, "poll")

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)
        self._pollster = select.poll()

    def kernel_add(self, fd: int, events: int) -> None:
        """Add *fd* to the poll set."""
        self._pollster.register(fd, _TO_POLL[events])

    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        """Change what *fd* is polled for."""
        self._pollster.modify(fd, _TO_POLL[new])

    def kernel_remove(self, fd: int, events: int) -> None:
        """Drop *fd* (poll keeps plain numbers: a closed fd is fine)."""
        self._pollster.unregister(fd)

    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        """One ``poll()``, its reports translated for the base."""
        ready = []
        for fd, revents in self._pollster.poll(ceil_timeout(timeout, 1e-3)):
            registration = self.registrations.get(fd)
            if registration is None:
                continue
            if revents & select.POLLNVAL:
                ready.append((registration, CLOSED))
            elif revents & _FAILED:
                ready.append((registration, registration.events))
            else:
                readable = READ if revents & select.POLLIN else 0
                ready.append((registration, readable | (WRITE if revents & select.POLLOUT else 0)))
        return ready
