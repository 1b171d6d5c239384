"""A :class:`selectors.BaseSelector` over any asycamore dispatch context.

:class:`DispatchSelector` lets code written for :mod:`selectors` -- first of all
:class:`asyncio.SelectorEventLoop` (see :func:`asycamore.aio.new_event_loop`) -- take its
readiness from an asycamore backend: a built-in one or any installed plugin.

Each registered file object becomes one small dispatch target whose handlers only note
the readiness; :meth:`DispatchSelector.select` is one ``dispatch_once`` that collects
those notes into ``selectors``' ``[(key, events)]``.  No user code runs inside the
context, so the contract's rules map onto ``selectors``' semantics directly:

- READ before WRITE for one target (rule 4) lets both land in one ``(key, events)``
  entry, as CPython's selectors report them (gh-110038).
- A descriptor closed while registered (rule 6) is, where the backend notices it (poll,
  select), reported ready for the events it was registered for, as
  :class:`selectors.PollSelector` reports ``POLLNVAL``: the caller's next operation on it
  fails with ``EBADF``.  The key stays in the map until the caller unregisters it.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator, Mapping
from typing import Any, Final

from typing_extensions import override

from .dispatcher import Events, IDispatchContext, IDispatchTarget, given_or_created

__all__ = ["DispatchSelector"]

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
# asycamore's Events and selectors' EVENT_* have the same values; the code relies on it.
assert int(Events.READ) == _READ and int(Events.WRITE) == _WRITE
# selectors mask -> Events, without building an IntFlag on every register/modify.
_EVENTS: Final = (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)
_LARGE_BATCH: Final = 1024
"""A dispatch with this many handler calls may have been cut short by the backend."""


def _fileobj_to_fd(fileobj: Any) -> int:
    """The descriptor of *fileobj* (an int or an object with ``fileno()``), as
    :mod:`selectors` finds it: ``ValueError`` for anything else or a negative number."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _Target:
    """The dispatch target of one registered file object: its handlers note readiness
    in the selector's list of ``(key, events)``."""

    __slots__ = ("fd", "key", "ready")

    def __init__(self, key: selectors.SelectorKey, ready: list[tuple[Any, int]]) -> None:
        self.fd = key.fd
        self.key = key
        self.ready = ready

    def fileno(self) -> int:
        return self.fd

    def handle_read_event(self) -> None:
        self.ready.append((self.key, _READ))

    def handle_write_event(self) -> None:
        ready = self.ready
        # Rule 4: this target's READ, if any, was noted just before: one entry.
        if ready and ready[-1][0] is self.key:
            ready[-1] = (self.key, _READ | _WRITE)
        else:
            ready.append((self.key, _WRITE))

    def __repr__(self) -> str:
        return f"<DispatchSelector target fd={self.fd}>"


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    """``get_map()``: file object -> key, iterating over the descriptors (as selectors)."""

    __slots__ = ("_selector",)

    def __init__(self, selector: DispatchSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._targets)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._selector._fd_of(fileobj)
        try:
            return self._selector._targets[fd].key
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._targets)


class DispatchSelector(selectors.BaseSelector):
    """A :class:`selectors.BaseSelector` whose readiness comes from a dispatch context.

    The context is made by :func:`~asycamore.create_dispatcher` from *backend* (default:
    ``$ASYCAMORE_BACKEND`` or the best backend here) and closed by :meth:`close`; or it
    is *dispatcher*, which :meth:`close` leaves open (with this selector's registrations
    removed).  Exactly :mod:`selectors`' semantics otherwise.
    """

    def __init__(
        self, backend: str | None = None, *, dispatcher: IDispatchContext | None = None
    ) -> None:
        dispatcher, self._owns_dispatcher = given_or_created(backend, dispatcher)
        self.dispatcher: IDispatchContext = dispatcher
        """The dispatch context."""
        self._targets: dict[int, _Target] = {}
        self._ready: list[tuple[Any, int]] = []
        # Bound once: select() runs on every turn of an asyncio loop.
        self._dispatch_once = dispatcher.dispatch_once
        self._on_evicted = self._evicted
        self._map: _KeyMap | None = _KeyMap(self)

    def _fd_of(self, fileobj: Any) -> int:
        """*fileobj*'s descriptor; for one that no longer has one (closed), the
        descriptor it was registered with, found by identity (as selectors does)."""
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            for target in self._targets.values():
                if target.key.fileobj is fileobj:
                    return target.fd
            raise

    @override
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Register *fileobj* for *events*; return its :class:`~selectors.SelectorKey`."""
        if not events or events & ~(_READ | _WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        key = selectors.SelectorKey(fileobj, self._fd_of(fileobj), events, data)
        if key.fd in self._targets:
            raise KeyError(f"{fileobj!r} (FD {key.fd}) is already registered")
        target = _Target(key, self._ready)
        # The context may refuse the descriptor (select: FD_SETSIZE; epoll: a regular
        # file): nothing is recorded then.
        self.dispatcher.register(target, _EVENTS[events])
        self._targets[key.fd] = target
        return key

    @override
    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        """Unregister *fileobj* (also once it is closed); return its key."""
        try:
            target = self._targets.pop(self._fd_of(fileobj))
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        # Not in the context any more if the context evicted it as closed (rule 6).
        if target in self.dispatcher:
            self.dispatcher.unregister(target)
        return target.key

    @override
    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Change *fileobj*'s events and/or data; return the new key."""
        try:
            target = self._targets[self._fd_of(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        key = target.key
        if events != key.events:
            if not events or events & ~(_READ | _WRITE):
                raise ValueError(f"Invalid events: {events!r}")
            try:
                if target in self.dispatcher:
                    self.dispatcher.modify(target, _EVENTS[events])
                else:  # evicted as closed (rule 6): let the context decide again
                    self.dispatcher.register(target, _EVENTS[events])
            except BaseException:
                # As selectors does (bpo-30014): a failed modify leaves it unregistered.
                self.unregister(fileobj)
                raise
            key = key._replace(events=events, data=data)
        elif data is not key.data:
            key = key._replace(data=data)
        else:
            return key
        target.key = key
        return key

    @override
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait up to *timeout* seconds (``None``: block, ``<= 0``: poll) and return the
        ready ``(key, events)`` pairs."""
        # This runs once per turn of an asyncio loop: kept to the bone.
        ready = self._ready
        ready.clear()  # of a select that an exception (a signal handler's) cut short
        if self._dispatch_once(timeout, self._on_evicted) >= _LARGE_BATCH:
            self._collect_all()
        result = ready.copy()
        ready.clear()
        return result

    def _collect_all(self) -> None:
        """After a large batch: poll again until nothing new comes, one entry per key.

        A backend may cap the reports of one wait (epoll and kqueue: at
        _LARGE_BATCH, level-triggered, so the rest come next time); selectors reports
        every ready descriptor at once.  The kernel rotates its ready list, so polling
        again collects them all; a descriptor reported twice is merged.
        """
        ready = self._ready
        merged: dict[int, tuple[Any, int]] = {}

        def merge() -> None:
            for key, events in ready:
                earlier = merged.get(key.fd)
                merged[key.fd] = (key, events | earlier[1] if earlier else events)
            ready.clear()

        merge()
        while True:
            calls = self._dispatch_once(0, self._on_evicted)
            known = len(merged)
            merge()
            if calls < _LARGE_BATCH or len(merged) == known:
                break
        ready.extend(merged.values())

    def _evicted(self, target: IDispatchTarget, exc: Exception) -> None:
        # Our handlers never raise, so this is rule 6: the context found the descriptor
        # closed and unregistered it.  Report it ready, as PollSelector reports POLLNVAL.
        if isinstance(target, _Target) and self._targets.get(target.fd) is target:
            self._ready.append((target.key, target.key.events))

    @override
    def close(self) -> None:
        """Forget every key; close the context if this selector made it."""
        if self._map is None:
            return
        self._map = None
        targets = list(self._targets.values())
        self._targets.clear()
        if self._owns_dispatcher:
            self.dispatcher.close()
            return
        for target in targets:
            if target in self.dispatcher:
                self.dispatcher.unregister(target)

    @override
    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        """The key of *fileobj* (``KeyError`` if it is not registered)."""
        mapping = self.get_map()
        if mapping is None:
            raise RuntimeError("Selector is closed")
        try:
            return mapping[fileobj]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    @override
    def get_map(self) -> Mapping[Any, selectors.SelectorKey] | None:  # type: ignore[override]
        """file object -> key for the registered ones; ``None`` once closed."""
        return self._map

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{len(self._targets)} keys"
        return f"<DispatchSelector {self.dispatcher.name} {state}>"
