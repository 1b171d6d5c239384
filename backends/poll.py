"""The POSIX ``poll`` backend: no descriptor limit, O(registered) per dispatch in the kernel."""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from typing_extensions import override
else:  # the same marker, without importing typing_extensions (see base.override)
    from .base import override

from .base import CLOSED, READ, WRITE, DispatcherBase, Registration, ceil_timeout

__all__ = ["PollDispatcher"]

_POLLIN = getattr(select, "POLLIN", 0x001)
_POLLOUT = getattr(select, "POLLOUT", 0x004)
_POLLNVAL = getattr(select, "POLLNVAL", 0x020)

# POLLPRI is deliberately left out: urgent data that the handler's recv() does not
# consume would be reported again on every call, a busy loop.
_TO_POLL = (0, _POLLIN, _POLLOUT, _POLLIN | _POLLOUT)
# Reported mask -> events, for the masks a healthy descriptor gets: one lookup per
# report.  Any other mask holds POLLNVAL (closed: rule 6) or POLLERR/POLLHUP, the only
# bits poll adds to those asked for (readiness for every interest: rule 5).
_EVENTS_OF_MASK = {_POLLIN: READ, _POLLOUT: WRITE, _POLLIN | _POLLOUT: READ | WRITE}


class PollDispatcher(DispatcherBase):
    """Dispatch context over :func:`select.poll`.

    The poll set is kept between dispatches and changed only when interest changes; the
    kernel still scans every registered descriptor on each call.  A descriptor closed
    while registered is reported as ``POLLNVAL``: its target is unregistered and its error
    path gets ``OSError(EBADF)``.
    """

    name: ClassVar[str] = "poll"
    priority: ClassVar[int] = 20
    reports_closed_fds: ClassVar[bool | None] = True

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)
        self._pollster = select.poll()

    @override
    @classmethod
    def is_available(cls) -> bool:
        """True where :func:`select.poll` exists (every POSIX system)."""
        return hasattr(select, "poll")

    @override
    def kernel_add(self, fd: int, events: int) -> None:
        self._pollster.register(fd, _TO_POLL[events])

    @override
    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        self._pollster.modify(fd, _TO_POLL[new])

    @override
    def kernel_remove(self, fd: int, events: int) -> None:
        # poll keeps plain numbers in user space: unregistering a closed fd is fine.
        self._pollster.unregister(fd)

    @override
    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        ms = ceil_timeout(timeout, 1e-3)
        ready = self._pollster.poll(ms)
        by_fd = self.registrations
        result = []
        for fd, mask in ready:
            registration = by_fd.get(fd)
            if registration is None:
                continue
            events = _EVENTS_OF_MASK.get(mask)
            if events is None:  # see _EVENTS_OF_MASK
                events = CLOSED if mask & _POLLNVAL else registration.events
            result.append((registration, events))
        return result
