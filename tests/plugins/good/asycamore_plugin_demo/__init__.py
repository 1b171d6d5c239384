"""asycamore-plugin-demo: a third-party asycamore backend over :func:`select.poll`.

Written against asycamore's public contract only (nothing from ``asycamore.backends``),
as an out-of-tree plugin would be.  Its priority of 100 outranks every built-in backend,
so once installed it is the default.
"""

from __future__ import annotations

import errno
import logging
import math
import select
from typing import ClassVar, Self

from asycamore import Events, IDispatchTarget
from asycamore.dispatcher import ErrorHandler

__all__ = ["DemoDispatcher"]

_log = logging.getLogger("asycamore")

READ = int(Events.READ)
WRITE = int(Events.WRITE)
_TO_POLL = (0, select.POLLIN, select.POLLOUT, select.POLLIN | select.POLLOUT)
_FAILED = select.POLLERR | select.POLLHUP
_MAX_MS = 2**31 - 1


class _Registration:
    """One register() call; compared by identity to drop stale readiness."""

    __slots__ = ("events", "fd", "target")

    def __init__(self, target: IDispatchTarget, fd: int, events: int) -> None:
        self.target = target
        self.fd = fd
        self.events = events


class DemoDispatcher:
    """A dispatch context over :func:`select.poll`."""

    name: ClassVar[str] = "demo"
    priority: ClassVar[int] = 100

    @classmethod
    def is_available(cls) -> bool:
        """True where :func:`select.poll` exists."""
        return hasattr(select, "poll")

    def __init__(self) -> None:
        self._pollster = select.poll()
        self._by_fd: dict[int, _Registration] = {}
        self._by_target: dict[int, _Registration] = {}  # id(target): no hashing needed
        self._closed = False

    @staticmethod
    def _mask(events: int) -> int:
        if not isinstance(events, int) or events < 0 or events & ~(READ | WRITE):
            raise ValueError(f"invalid events: {events!r}")
        return int(events)

    def _lookup(self, target: IDispatchTarget) -> _Registration:
        try:
            return self._by_target[id(target)]
        except KeyError:
            raise KeyError(f"{target!r} is not registered") from None

    def register(self, target: IDispatchTarget, events: Events = Events.READ) -> None:
        """Start watching *target*."""
        if self._closed:
            raise ValueError("the dispatcher is closed")
        mask = self._mask(events)
        fd = target.fileno()
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"invalid file descriptor: {fd!r}")
        if id(target) in self._by_target or fd in self._by_fd:
            raise KeyError(f"{target!r} or fd {fd} is already registered")
        if mask:  # Events.NONE never reaches poll(), which reports hang-ups regardless
            self._pollster.register(fd, _TO_POLL[mask])
        registration = _Registration(target, fd, mask)
        self._by_fd[fd] = self._by_target[id(target)] = registration

    def modify(self, target: IDispatchTarget, events: Events) -> None:
        """Change the interest of a registered *target*."""
        mask = self._mask(events)
        registration = self._lookup(target)
        if mask:
            self._pollster.register(registration.fd, _TO_POLL[mask])  # adds or modifies
        elif registration.events:
            self._pollster.unregister(registration.fd)
        registration.events = mask

    def unregister(self, target: IDispatchTarget) -> None:
        """Stop watching *target* (poll keeps plain numbers: a closed fd is fine)."""
        registration = self._lookup(target)
        del self._by_target[id(target)]
        del self._by_fd[registration.fd]
        if registration.events and not self._closed:
            self._pollster.unregister(registration.fd)

    def dispatch_once(
        self, timeout: float | None = None, error_in_handler: ErrorHandler | None = None
    ) -> int:
        """Wait up to *timeout* seconds and call the ready handlers; return how many."""
        if self._closed:
            raise ValueError("the dispatcher is closed")
        if timeout is None or timeout == math.inf:
            ms = None
        elif timeout <= 0:
            ms = 0
        else:
            # Round up (0.4 ms must not become 0), within poll's C int of milliseconds:
            # a longer wait returns early, which "waits at most timeout" allows.
            ms = min(math.ceil(timeout * 1000), _MAX_MS)
        ready: list[tuple[_Registration, int]] = []
        for fd, revents in self._pollster.poll(ms):
            registration = self._by_fd.get(fd)
            if registration is None:
                continue
            if revents & select.POLLNVAL:
                events = -1
            elif revents & _FAILED:
                events = registration.events
            else:
                events = (READ if revents & select.POLLIN else 0) | (
                    WRITE if revents & select.POLLOUT else 0
                )
            ready.append((registration, events))
        calls = 0
        for registration, events in ready:
            if events == -1:
                self._evict(registration, error_in_handler)
                continue
            for bit in (READ, WRITE):
                if not events & bit or self._by_fd.get(registration.fd) is not registration:
                    continue
                if not registration.events & bit:
                    continue
                calls += 1
                target = registration.target
                try:
                    if bit == READ:
                        target.handle_read_event()
                    else:
                        target.handle_write_event()
                except Exception as exc:
                    self._failed(target, exc, error_in_handler)
        return calls

    def _evict(self, registration: _Registration, error_in_handler: ErrorHandler | None) -> None:
        if self._by_fd.get(registration.fd) is not registration:
            return
        self.unregister(registration.target)
        exc = OSError(errno.EBADF, f"fd {registration.fd} was closed while registered")
        self._failed(registration.target, exc, error_in_handler)

    def _failed(
        self, target: IDispatchTarget, exc: Exception, error_in_handler: ErrorHandler | None
    ) -> None:
        if error_in_handler is not None:
            error_in_handler(target, exc)
            return
        _log.error("error in a handler of %r", target, exc_info=exc)
        if target in self:
            self.unregister(target)
        close = getattr(target, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                _log.exception("error closing %r", target)

    def close(self) -> None:
        """Forget every target.  Idempotent."""
        self._closed = True
        self._by_fd.clear()
        self._by_target.clear()

    def __contains__(self, target: object) -> bool:
        return id(target) in self._by_target

    def __len__(self) -> int:
        return len(self._by_target)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
