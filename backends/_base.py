"""The state and dispatch logic every built-in backend shares.

A subclass only talks to its OS mechanism: it tells the kernel about interest changes
(`_kernel_add`, `_kernel_modify`, `_kernel_remove`) and collects readiness (`_poll`).
Everything the contract says about *when* a handler may run lives here, once.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable
from typing import ClassVar, Final, Self

from asycamore.dispatcher import ErrorHandler, Events, IDispatchTarget

__all__ = ["CLOSED", "MAX_WAIT", "READ", "WRITE", "DispatcherBase", "Registration", "ceil_timeout"]

_log = logging.getLogger("asycamore")

READ: Final = int(Events.READ)
WRITE: Final = int(Events.WRITE)
_ALL_EVENTS: Final = READ | WRITE
MAX_EVENTS_PER_WAIT: Final = 1024
"""The most readiness reports epoll/kqueue return per wait.

Their result array is allocated per call, so sizing it by every registered fd would make
an idle fd cost memory on each dispatch.  Both are level-triggered here: whatever does
not fit is reported again by the next wait.
"""
CLOSED: Final = 4
"""A pseudo-event `_poll` reports for a fd the OS says is closed (POLLNVAL, EBADF)."""


class Registration:
    """One target's registration: the descriptor it had at `register` and its interest.

    A new object is made by every `register`; `modify` changes ``events`` in place, and
    `unregister` (and closing the context) sets it to 0 for good.  So a readiness report
    that holds a `Registration` only has to look at ``events`` when its turn comes: a
    retired registration wants nothing, and a target that took over the descriptor
    number since has a registration of its own that the report does not hold.
    """

    __slots__ = ("events", "fd", "target")

    def __init__(self, target: IDispatchTarget, fd: int, events: int) -> None:
        self.target = target
        self.fd = fd
        self.events = events

    def __repr__(self) -> str:
        return f"Registration(fd={self.fd}, events={Events(self.events)!r}, {self.target!r})"


MAX_WAIT: Final = 2_000_000.0
"""The longest single wait, in seconds (about 23 days).

poll and epoll take a C ``int`` of milliseconds (at most about 24.8 days).  A longer
finite timeout waits this long and ``dispatch_once`` returns 0: it waits *at most* its
timeout, as the contract allows, instead of failing with ``OverflowError``.
"""


def ceil_timeout(timeout: float | None, resolution: float) -> float | None:
    """*timeout* in units of *resolution* seconds, rounded up; ``None`` stays ``None``.

    Rounding up matters: a 0.4 ms wait on a millisecond clock must wait 1 ms, not turn
    into a non-blocking poll that the caller's loop would repeat as a busy spin.
    Non-positive timeouts become 0 (poll without blocking); an infinite one becomes
    ``None`` (block); a finite one is capped at `MAX_WAIT`.  NaN raises ValueError.
    """
    # The common cases (block, poll) first: this runs on every dispatch.
    if timeout is None:
        return None
    if timeout <= 0:
        return 0
    if timeout > MAX_WAIT:
        return None if timeout == math.inf else math.ceil(MAX_WAIT / resolution)
    return math.ceil(timeout / resolution)


class DispatcherBase:
    """Shared base of the built-in backends (see the module docstring)."""

    name: ClassVar[str]
    priority: ClassVar[int]

    def __init__(self) -> None:
        self._by_fd: dict[int, Registration] = {}
        # Keyed by id(): targets need not be hashable, and the Registration keeps the
        # target alive, so its id cannot be reused while it is registered.
        self._by_target: dict[int, Registration] = {}
        self._closed = False
        self._interest_watcher: Callable[[], object] | None = None

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend's OS mechanism exists on this platform."""
        raise NotImplementedError

    # -- the OS mechanism, per subclass ------------------------------------------------

    def _kernel_add(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        raise NotImplementedError

    def _kernel_remove(self, fd: int, events: int) -> None:
        """Forget *fd*; must not fail because the descriptor was already closed."""
        raise NotImplementedError

    def _poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        """Wait for readiness; return ``(registration, events)`` pairs to dispatch."""
        raise NotImplementedError

    def _close_kernel(self) -> None:
        """Release the OS object, if any."""

    # -- registration ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"I/O operation on a closed {self.name} dispatcher")

    @staticmethod
    def _check_events(events: int) -> int:
        # Plain int arithmetic: IntFlag operators build enum members, a measurable cost
        # on the register/modify path of every connection.  A negative number has bits
        # outside READ|WRITE, so the one test refuses it too.
        mask = int(events) if isinstance(events, int) else -1
        if mask & ~_ALL_EVENTS:
            raise ValueError(f"invalid events: {events!r} (expected a combination of READ|WRITE)")
        return mask

    def _check_fd(self, fd: int) -> None:
        """Refuse a descriptor this mechanism cannot watch (override to add limits)."""
        if fd < 0:
            raise ValueError(f"invalid file descriptor: {fd}")

    def register(self, target: IDispatchTarget, events: Events = Events.READ) -> None:
        """Start watching *target* for *events* (see :class:`asycamore.IDispatchContext`)."""
        self._check_open()
        mask = self._check_events(events)
        fd = target.fileno()
        if not isinstance(fd, int):
            raise ValueError(f"fileno() returned {fd!r}, not an int")
        self._check_fd(fd)
        if id(target) in self._by_target:
            raise KeyError(f"{target!r} is already registered")
        if fd in self._by_fd:
            raise KeyError(f"fd {fd} is already registered by {self._by_fd[fd].target!r}")
        # Events.NONE never reaches the kernel: epoll and poll report hang-ups and errors
        # even for an empty interest set, and the contract says NONE receives nothing.
        if mask:
            self._kernel_add(fd, mask)
        registration = Registration(target, fd, mask)
        self._by_fd[fd] = registration
        self._by_target[id(target)] = registration
        if mask and self._interest_watcher is not None:
            self._interest_watcher()

    def modify(self, target: IDispatchTarget, events: Events) -> None:
        """Change the events *target* is watched for; no system call if nothing changes."""
        self._check_open()
        mask = self._check_events(events)
        registration = self._registration(target)
        old = registration.events
        if mask == old:
            return
        if not old:
            self._kernel_add(registration.fd, mask)
        elif not mask:
            self._kernel_remove(registration.fd, old)
        else:
            self._kernel_modify(registration.fd, old, mask)
        registration.events = mask
        if self._interest_watcher is not None:
            self._interest_watcher()

    def unregister(self, target: IDispatchTarget) -> None:
        """Stop watching *target*; works after its descriptor was closed."""
        registration = self._registration(target)
        del self._by_target[id(target)]
        del self._by_fd[registration.fd]
        events = registration.events
        # Retire it: readiness already collected for it is now stale (see Registration).
        registration.events = 0
        if events and not self._closed:
            self._kernel_remove(registration.fd, events)
            if self._interest_watcher is not None:
                self._interest_watcher()

    def _registration(self, target: IDispatchTarget) -> Registration:
        try:
            return self._by_target[id(target)]
        except KeyError:
            raise KeyError(f"{target!r} is not registered") from None

    def __contains__(self, target: object) -> bool:
        return id(target) in self._by_target

    def __len__(self) -> int:
        return len(self._by_target)

    # -- hosting in a foreign main loop ---------------------------------------------------
    #
    # epoll and kqueue hand a foreign loop one descriptor (fileno()) that the kernel keeps
    # readable while a registered descriptor is ready.  select and poll have no such
    # descriptor; these two methods let asycamore.nesting wait for them in a helper thread
    # over the same descriptors, and learn when to wait over a new set.

    def interest(self) -> dict[int, Events]:
        """A snapshot of what this context asks the OS about: ``{fd: events}``.

        Targets registered with ``Events.NONE`` are left out (they receive nothing).
        For :mod:`asycamore.nesting`, which waits over these descriptors in a helper
        thread when a context has no ``fileno()``.
        """
        return {fd: Events(r.events) for fd, r in self._by_fd.items() if r.events}

    def watch_interest(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` after every change to :meth:`interest` (``None``: stop).

        It runs in the thread that made the change, inside ``register``, ``modify`` or
        ``unregister``; it must not call back into the context.  One watcher at a time.
        """
        self._interest_watcher = callback

    # -- dispatch ------------------------------------------------------------------------

    def dispatch_once(
        self, timeout: float | None = None, error_in_handler: ErrorHandler | None = None
    ) -> int:
        """Wait up to *timeout* seconds, then call the ready handlers; return how many ran."""
        if self._closed:  # _check_open(), inlined: this runs on every dispatch
            self._check_open()
        return self._dispatch(self._poll(timeout), error_in_handler)

    def _dispatch(
        self, ready: list[tuple[Registration, int]], error_in_handler: ErrorHandler | None
    ) -> int:
        calls = 0
        for registration, events in ready:
            if events & CLOSED:
                self._evict_closed(registration, error_in_handler)
                continue
            # Re-check the interest before each handler: an earlier handler in this
            # round may have changed it, or unregistered the target (which zeroes it).
            if events & READ and registration.events & READ:
                calls += 1
                try:
                    registration.target.handle_read_event()
                except Exception as exc:
                    self._handler_failed(registration.target, exc, error_in_handler)
            if events & WRITE and registration.events & WRITE:
                calls += 1
                try:
                    registration.target.handle_write_event()
                except Exception as exc:
                    self._handler_failed(registration.target, exc, error_in_handler)
        return calls

    def _handler_failed(
        self, target: IDispatchTarget, exc: Exception, error_in_handler: ErrorHandler | None
    ) -> None:
        """Rule 7: the caller's error handler, or log, unregister and close."""
        if error_in_handler is not None:
            error_in_handler(target, exc)
            return
        _log.error("unhandled error in a handler of %r", target, exc_info=exc)
        if target in self:
            self.unregister(target)
        close = getattr(target, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                _log.exception("error closing %r after a handler error", target)

    def _evict_closed(
        self, registration: Registration, error_in_handler: ErrorHandler | None
    ) -> None:
        """Rule 6: unregister a target whose fd the OS reports as closed, report EBADF."""
        target = registration.target
        if self._by_fd.get(registration.fd) is not registration:
            return
        self.unregister(target)
        exc = OSError(errno.EBADF, f"fd {registration.fd} was closed while registered")
        self._handler_failed(target, exc, error_in_handler)

    # -- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the OS resources and forget every target.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for registration in self._by_fd.values():
            registration.events = 0
        self._by_fd.clear()
        self._by_target.clear()
        self._close_kernel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} targets"
        return f"<{type(self).__name__} {state}>"
