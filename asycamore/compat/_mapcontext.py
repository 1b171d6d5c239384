"""One asycamore dispatch context per asyncore map, kept in step with the map.

asyncore asks every dispatcher ``readable()`` and ``writable()`` on every pass, and the
standard library then hands the kernel the whole descriptor set again: a new
``select.poll`` object filled in Python, or three lists for ``select``.  Here the answers
are compared with those of the previous pass and only a change reaches the context
(``register`` / ``modify`` / ``unregister``), so with epoll an idle dispatcher costs its
two predicate calls and one comparison per pass, and the wait costs O(ready).

Urgent (out-of-band) data has no :class:`asycamore.Events` bit, so a second, private
readiness set watches it: an epoll instance asking only ``EPOLLPRI``, itself registered
for READ in the main context (epoll descriptors are pollable), so urgent data wakes a
blocked wait on any backend; the :class:`Policy` says which objects it is asked for.
Where there is no epoll, a ``select.poll`` set asking ``POLLPRI`` is polled without
blocking after each wait instead: urgent data is then noticed on the first pass that
something else, or the timeout, ends.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable, MutableMapping
from typing import Any, Final, NamedTuple

import asycamore
from asycamore import Events, IDispatchContext

__all__ = ["MapContext", "Policy", "context_for", "forget", "release"]

READ: Final = 1
WRITE: Final = 2
URGENT: Final = 4
"""Our own bit beside READ and WRITE: watch for urgent data (poll2's ``POLLPRI``)."""
_RW: Final = READ | WRITE
_EVENTS: Final = (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)
_PRI: Final = getattr(select, "EPOLLPRI", getattr(select, "POLLPRI", 2))
_MAX_URGENT_REPORTS: Final = 1024
_MAX_CONTEXTS: Final = 64
"""Contexts kept at once.  A map nobody polls any more but that still holds dispatchers
would otherwise keep its context (and a descriptor) forever; the oldest beyond this are
closed, and a map polled again just gets a fresh one."""


class Policy(NamedTuple):
    """What asyncore decides about the objects in a map (this module only dispatches)."""

    on_error: Callable[[Any, Exception], None]
    """``on_error(obj, exc)``: an exception from one of obj's handlers (being handled)."""
    handles_urgent: Callable[[Any], bool]
    """``handles_urgent(obj)``: whether urgent data should reach obj at all (asked once,
    when obj enters the context)."""


def _urgent_poller() -> Any:
    """The private set for urgent data: epoll when there is one (see the module docstring)."""
    return select.epoll() if hasattr(select, "epoll") else select.poll()


class Slot:
    """The dispatch target standing for one ``map[fd] = obj`` entry."""

    __slots__ = ("always", "fd", "map", "obj", "urgent", "wanted")

    def __init__(self, fd: int, obj: Any, map: MutableMapping[Any, Any]) -> None:
        self.fd = fd
        self.obj = obj
        self.map = map
        self.wanted = 0
        # True for a descriptor the backend refuses (epoll and regular files, EPERM):
        # select and poll call such files always ready, and so does this slot.
        self.always = False
        # Whether urgent data is watched for while the URGENT bit is wanted.
        self.urgent = False

    def fileno(self) -> int:
        """The map key: asyncore's maps are keyed by descriptor."""
        return self.fd

    # The map, not the slot, says who owns the descriptor now: an earlier handler in this
    # pass may have removed obj from the map, or another object may have taken its number.

    def handle_read_event(self) -> None:
        """Forward to ``obj.handle_read_event()`` while obj still holds the map entry."""
        current: Any = self.map.get(self.fd)
        if current is self.obj:
            current.handle_read_event()

    def handle_write_event(self) -> None:
        """Forward to ``obj.handle_write_event()`` while obj still holds the map entry."""
        current: Any = self.map.get(self.fd)
        if current is self.obj:
            current.handle_write_event()

    def handle_expt_event(self) -> None:
        """Forward to ``obj.handle_expt_event()`` while obj still holds the map entry."""
        current: Any = self.map.get(self.fd)
        if current is self.obj:
            current.handle_expt_event()

    def __repr__(self) -> str:
        return f"<asyncore map slot fd={self.fd} {self.obj!r}>"


class _UrgentWatcher:
    """The private set that reports urgent data (see the module docstring)."""

    def __init__(self, owner: MapContext) -> None:
        self._owner = owner
        self._poller = _urgent_poller()
        self._fds: set[int] = set()
        self._stale = False
        self.nested = hasattr(self._poller, "fileno")
        if self.nested:
            owner.ctx.register(self, Events.READ)

    def fileno(self) -> int:
        """The nested epoll descriptor, watched for READ by the main context."""
        fd: int = self._poller.fileno()
        return fd

    def add(self, fd: int) -> None:
        """Watch *fd* for urgent data."""
        try:
            self._poller.register(fd, _PRI)
        except OSError as exc:
            # EPERM: a file epoll cannot watch has no urgent data.  EBADF: the main
            # context reports the closed descriptor through its own path.
            if exc.errno in (errno.EPERM, errno.EBADF):
                return
            raise
        self._fds.add(fd)

    def discard(self, fd: int) -> None:
        """Stop watching *fd* (already closed or not)."""
        if fd not in self._fds:
            return
        self._fds.discard(fd)
        try:
            self._poller.unregister(fd)
        except OSError:
            # Closed first: the kernel dropped it, unless a dup keeps the file open
            # (epoll watches files, not numbers); then only a rebuild removes it.
            self._stale = True

    def handle_read_event(self) -> None:
        """The nested set is readable: handle what it reports, without blocking."""
        if self._stale:
            self._rebuild()
        self._dispatch(self._poller.poll(0, min(len(self._fds), _MAX_URGENT_REPORTS) or 1))

    def handle_write_event(self) -> None:
        """Never called: the main context watches the nested set for READ only."""

    def poll_now(self) -> None:
        """Without nesting: check for urgent data without blocking."""
        if self._fds:
            self._dispatch(self._poller.poll(0))

    def _dispatch(self, reports: list[tuple[int, int]]) -> None:
        owner = self._owner
        for fd, mask in reports:
            if fd not in self._fds:
                self._stale = True  # a file that outlived its descriptor (see discard)
                continue
            # Hang-ups and errors are reported for every watched descriptor; the main
            # context delivers those as READ, so only urgent data is handled here.
            slot = owner.slots.get(fd)
            if mask & _PRI and slot is not None and slot.wanted & URGENT:
                owner.call(slot, slot.handle_expt_event)

    def _rebuild(self) -> None:
        """Replace the nested set by one holding exactly the watched descriptors."""
        self._stale = False
        ctx = self._owner.ctx
        ctx.unregister(self)
        self._poller.close()
        self._poller = _urgent_poller()
        for fd in list(self._fds):
            self._fds.discard(fd)
            self.add(fd)
        ctx.register(self, Events.READ)

    def close(self) -> None:
        """Release the private set."""
        if self.nested:
            self._poller.close()


class MapContext:
    """An asycamore dispatch context mirroring one asyncore map.

    ``slots`` holds one :class:`Slot` per map key seen on the last pass, with the events
    it asked for; each pass of :meth:`run` brings the context up to date and dispatches
    once.
    """

    def __init__(self, map: MutableMapping[Any, Any], policy: Policy) -> None:
        self.map = map
        self.on_error = policy.on_error
        self._handles_urgent = policy.handles_urgent
        self.ctx: IDispatchContext = asycamore.create_dispatcher()
        self.slots: dict[Any, Slot] = {}
        self._always: dict[Any, Slot] = {}
        self._urgent: _UrgentWatcher | None = None
        self._error_in_handler = self._failed  # bound once, not on every pass
        self.closed = False

    def run(self, timeout: float | None, count: int | None) -> int | None:
        """Make up to *count* passes (None: no limit) while the map is not empty and this
        context is open; return the passes still to make (the loop's ``count``)."""
        map = self.map
        one_pass = self._pass
        if count is None:
            while map and not self.closed:
                one_pass(timeout)
            return None
        while count > 0 and map and not self.closed:
            one_pass(timeout)
            count -= 1
        return count

    def _pass(self, timeout: float | None) -> None:
        """One asyncore pass: ask every dispatcher, apply the changes, dispatch once."""
        map = self.map
        slots = self.slots
        # This loop is the cost of an idle dispatcher: locals, not globals, in it.
        get = slots.get
        read_urgent, write = READ | URGENT, WRITE
        # A copy, since readable() and writable() may add to or remove from the map; a
        # dict copy, not a list of pairs, so that no pair is allocated per dispatcher.
        for fd, obj in dict(map).items():
            want = read_urgent if obj.readable() else 0
            # accepting sockets are never asked to write, as in asyncore
            if obj.writable() and not obj.accepting:
                want |= write
            slot = get(fd)
            if slot is None or slot.obj is not obj:
                if slot is not None:  # the number was reused, or the entry replaced
                    self._remove(slot)
                self._add(fd, obj, want)
            elif slot.wanted != want:
                self._change(slot, want)
        # Every key now has a slot, so equal sizes mean equal key sets; otherwise some
        # entries were deleted from the map without del_channel (which forgets at once).
        if len(slots) != len(map):
            for fd in slots.keys() - map.keys():
                self._remove(slots[fd])
        always = self._always
        self.ctx.dispatch_once(0 if always else timeout, self._error_in_handler)
        urgent = self._urgent
        if urgent is not None and not urgent.nested:
            urgent.poll_now()
        if always:
            for slot in list(always.values()):
                if slot.wanted & READ:
                    self.call(slot, slot.handle_read_event)
                if slot.wanted & WRITE:
                    self.call(slot, slot.handle_write_event)

    def call(self, slot: Slot, handler: Callable[[], None]) -> None:
        """Run one of *slot*'s handlers with asyncore's error policy."""
        try:
            handler()
        except Exception as exc:
            self._failed(slot, exc)

    def forget(self, fd: Any) -> None:
        """The map entry for *fd* is gone: stop watching it now, before it is closed."""
        slot = self.slots.get(fd)
        if slot is not None:
            self._remove(slot)

    def close(self) -> None:
        """Release the context and the urgent-data set."""
        self.closed = True
        if self._urgent is not None:
            self._urgent.close()
        self.ctx.close()
        self.slots.clear()
        self._always.clear()

    # -- keeping the context in step ----------------------------------------------------

    def _add(self, fd: Any, obj: Any, want: int) -> None:
        slot = Slot(fd, obj, self.map)
        try:
            self.ctx.register(slot, _EVENTS[want & _RW])
        except OSError as exc:
            if exc.errno != errno.EPERM:
                # Closed but still in the map: poll2 reports POLLNVAL, so asyncore's
                # error policy sees EBADF and calls handle_close.
                self.on_error(obj, exc)
                return
            slot.always = True
            self._always[fd] = slot
        else:
            slot.urgent = self._handles_urgent(obj)
        slot.wanted = want if not slot.always else want & _RW
        self.slots[fd] = slot
        if slot.wanted & URGENT and slot.urgent:
            self._urgent_set().add(fd)

    def _change(self, slot: Slot, want: int) -> None:
        if slot.always:
            slot.wanted = want & _RW
            return
        diff = slot.wanted ^ want
        if diff & _RW:
            try:
                self.ctx.modify(slot, _EVENTS[want & _RW])
            except OSError as exc:
                self._remove(slot)
                self.on_error(slot.obj, exc)
                return
        if diff & URGENT and slot.urgent:
            if want & URGENT:
                self._urgent_set().add(slot.fd)
            else:
                self._urgent_set().discard(slot.fd)
        slot.wanted = want

    def _remove(self, slot: Slot) -> None:
        if self.slots.get(slot.fd) is slot:
            del self.slots[slot.fd]
        if slot.always:
            self._always.pop(slot.fd, None)
        elif slot in self.ctx:
            self.ctx.unregister(slot)
        if slot.wanted & URGENT and slot.urgent and self._urgent is not None:
            self._urgent.discard(slot.fd)
        slot.wanted = 0

    def _urgent_set(self) -> _UrgentWatcher:
        if self._urgent is None:
            self._urgent = _UrgentWatcher(self)
        return self._urgent

    def _failed(self, target: object, exc: Exception) -> None:
        """The context's ``error_in_handler``: asyncore's policy for the slot's object."""
        if not isinstance(target, Slot):
            raise exc  # the urgent-data watcher itself failed: a bug, not a handler's
        if not target.always and self.slots.get(target.fd) is target and target not in self.ctx:
            # The backend evicted it: its descriptor was closed while registered.  As
            # poll2 does for POLLNVAL, the object hears of it only if it is still mapped.
            self._remove(target)
            if self.map.get(target.fd) is not target.obj:
                return
        self.on_error(target.obj, exc)


_contexts: dict[int, MapContext] = {}
"""Keyed by ``id(map)``; each context holds its map, so the id cannot be reused."""


def context_for(map: MutableMapping[Any, Any], policy: Policy) -> MapContext:
    """The context for *map*, made on first use."""
    context = _contexts.get(id(map))
    if context is None:
        while len(_contexts) >= _MAX_CONTEXTS:
            release(next(iter(_contexts.values())).map)
        context = _contexts[id(map)] = MapContext(map, policy)
    return context


def _after_fork_in_child() -> None:
    # A forked child shares its parent's epoll sets: changing one would change the
    # parent's interest.  Close the child's descriptors (the parent's sets live on) and
    # let each map get a fresh context on its next pass.
    for context in list(_contexts.values()):
        release(context.map)


os.register_at_fork(after_in_child=_after_fork_in_child)


def forget(map: MutableMapping[Any, Any], fd: Any) -> None:
    """``del_channel`` removed *fd* from *map*: tell the map's context, if it has one."""
    context = _contexts.get(id(map))
    if context is not None:
        context.forget(fd)


def release(map: MutableMapping[Any, Any]) -> None:
    """Close and drop *map*'s context, if any (the map emptied, or close_all ran)."""
    context = _contexts.pop(id(map), None)
    if context is not None:
        context.close()
