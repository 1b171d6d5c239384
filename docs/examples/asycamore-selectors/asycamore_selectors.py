"""An example asycamore backend plugin over the standard library's :mod:`selectors`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
from typing import ClassVar, Self

from asycamore import Events, IDispatchTarget
from asycamore.dispatcher import ErrorHandler

_log = logging.getLogger("asycamore")
_ALL = int(Events.READ | Events.WRITE)
_TO_SELECTORS = {
    Events.READ: selectors.EVENT_READ,
    Events.WRITE: selectors.EVENT_WRITE,
}
_MAX_WAIT = 2_000_000.0  # seconds, about 23 days: fits poll/epoll's int of milliseconds


class _Registration:
    """One ``register`` call: compared by identity to drop stale readiness (rule 4)."""

    def __init__(self, target: IDispatchTarget, fd: int, events: Events) -> None:
        self.target = target
        self.fd = fd
        self.events = events
        self.file = _file_identity(fd)  # which open file the descriptor referred to


def _file_identity(fd: int) -> tuple[int, int] | None:
    try:
        stat = os.fstat(fd)
    except OSError:
        return None  # closed
    return stat.st_dev, stat.st_ino


class SelectorsDispatcher:
    """Dispatch context over :class:`selectors.DefaultSelector`."""

    name: ClassVar[str] = "selectors"
    priority: ClassVar[int] = 5  # below every built-in: used only when asked for

    @classmethod
    def is_available(cls) -> bool:
        return True

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._by_target: dict[int, _Registration] = {}  # id(target) -> registration
        self._by_fd: dict[int, _Registration] = {}
        self._closed = False

    # -- registration (rules 1 and 2) ------------------------------------------------

    def register(self, target: IDispatchTarget, events: Events = Events.READ) -> None:
        events = self._checked(events)
        fd = target.fileno()
        if fd < 0:
            raise ValueError(f"invalid file descriptor: {fd}")
        if id(target) in self._by_target or fd in self._by_fd:
            raise KeyError(f"{target!r} or fd {fd} is already registered")
        registration = _Registration(target, fd, events)
        if events:  # Events.NONE stays out of the kernel: it must receive nothing
            self._selector.register(fd, self._mask(events), registration)
        self._by_target[id(target)] = self._by_fd[fd] = registration

    def modify(self, target: IDispatchTarget, events: Events) -> None:
        events = self._checked(events)
        registration = self._registration(target)
        if registration.events and events:
            self._selector.modify(registration.fd, self._mask(events), registration)
        elif events:
            self._selector.register(registration.fd, self._mask(events), registration)
        elif registration.events:
            self._selector.unregister(registration.fd)
        registration.events = events

    def unregister(self, target: IDispatchTarget) -> None:
        registration = self._registration(target)
        del self._by_target[id(target)], self._by_fd[registration.fd]
        if not registration.events:
            return
        if _file_identity(registration.fd) == registration.file:
            self._selector.unregister(registration.fd)
        else:
            # Rules 2 and 6: the descriptor was closed (or even reused) while registered.
            # epoll and kqueue may still watch the old file, and report it on every call
            # if it is kept open elsewhere; a new selector is the sure way to forget it.
            self._rebuild()

    def _rebuild(self) -> None:
        self._selector.close()
        self._selector = selectors.DefaultSelector()
        for registration in self._by_fd.values():
            if registration.events:
                # A descriptor that is closed too cannot be added: it gets no events.
                with contextlib.suppress(OSError):
                    self._selector.register(
                        registration.fd, self._mask(registration.events), registration
                    )

    # -- dispatch (rules 3 to 7) -------------------------------------------------------

    def dispatch_once(
        self, timeout: float | None = None, error_in_handler: ErrorHandler | None = None
    ) -> int:
        if timeout == math.inf:
            timeout = None  # wait forever
        elif timeout is not None and timeout > 0:
            # Rule 3: round up, never down to a busy 0; and cap what epoll/poll's C int of
            # milliseconds can hold (waiting *at most* the timeout is allowed).
            timeout = math.ceil(min(timeout, _MAX_WAIT) * 1000) / 1000
        ready = self._selector.select(timeout)
        calls = 0
        for key, mask in ready:
            registration: _Registration = key.data
            for event, handler in (
                (Events.READ, "handle_read_event"),
                (Events.WRITE, "handle_write_event"),
            ):
                # Rule 4: only a current registration that still wants this event.
                if not mask & _TO_SELECTORS[event]:
                    continue
                if self._by_fd.get(registration.fd) is not registration:
                    break
                if not registration.events & event:
                    continue
                calls += 1
                try:
                    getattr(registration.target, handler)()
                except Exception as exc:  # rule 7
                    self._failed(registration.target, exc, error_in_handler)
        return calls

    def _failed(
        self, target: IDispatchTarget, exc: Exception, error_in_handler: ErrorHandler | None
    ) -> None:
        if error_in_handler is not None:
            error_in_handler(target, exc)
            return
        _log.error("unhandled error in a handler of %r", target, exc_info=exc)
        if target in self:
            self.unregister(target)
        close = getattr(target, "close", None)
        if close is not None:
            close()

    # -- the rest of the protocol ----------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._selector.close()
            self._by_target.clear()
            self._by_fd.clear()

    def __contains__(self, target: object) -> bool:
        return id(target) in self._by_target

    def __len__(self) -> int:
        return len(self._by_target)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _checked(events: Events) -> Events:
        if not isinstance(events, int) or events < 0 or int(events) & ~_ALL:
            raise ValueError(f"invalid events: {events!r}")
        return Events(events)

    @staticmethod
    def _mask(events: Events) -> int:
        return sum(bit for event, bit in _TO_SELECTORS.items() if events & event)

    def _registration(self, target: IDispatchTarget) -> _Registration:
        try:
            return self._by_target[id(target)]
        except KeyError:
            raise KeyError(f"{target!r} is not registered") from None
