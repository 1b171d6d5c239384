"""The base class for backend authors: the registration state and the dispatch rules, once.

A backend subclasses `DispatcherBase` and only talks to its OS mechanism, through seven
hook methods that the base calls (in the manner of :class:`selectors.BaseSelector`'s
subclasses, configured by class attributes):

================================  =====================================================
``kernel_add(fd, events)``        start watching *fd* for *events* (never 0)
``kernel_modify(fd, old, new)``   change a watched *fd*'s interest (both non-zero)
``kernel_remove(fd, events)``     stop watching *fd*; must not fail because it was
                                  already closed
``kernel_poll(timeout)``          wait, then return ``(registration, events)`` pairs
``kernel_close()``                release the OS object (optional)
``kernel_reopen()``               replace the OS object by an empty one (optional; needed
                                  by `DispatcherBase.rebuild_kernel`, and so by
                                  ``rebuild_after_fork``)
``check_fd(fd)``                  refuse a descriptor the mechanism cannot watch
                                  (optional: the base refuses negative ones and
                                  ones beyond a C ``int``)
================================  =====================================================

Class attributes say what the mechanism is: `DispatcherBase.reports_closed_fds` (rule 6)
and `DispatcherBase.rebuild_after_fork` (whether a forked child must get a kernel object
of its own).

Everything the contract says about *when* a handler may run -- the interest re-checked
before each call, stale reports dropped (rule 4), the closed-descriptor eviction (rule 6)
and the error policy (rule 7) -- lives in the base, so a backend cannot get it subtly
wrong.  ``events`` in the hooks are plain ints made of `READ` and `WRITE`;
``kernel_poll`` may also report `CLOSED` for a descriptor the OS says is closed.

The base keeps the hot path as short as a hand-written loop: ``dispatch_once`` is one
state test, the hook ``kernel_poll``, and a loop over its result; the hooks read the live
`DispatcherBase.registrations` mapping directly (no view object in between).

Every backend on the base also gets `DispatcherBase.statistics` and debug mode (the
``debug`` constructor argument; see :doc:`observing`) without a line of its own.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Self, TypeVar

from asycamore.debug import debug_enabled, warn_unclosed
from asycamore.dispatcher import ErrorHandler, Events, IDispatchTarget, close_on_error
from asycamore.statistics import DispatchStatistics

__all__ = [
    "CLOSED",
    "MAX_EVENTS_PER_WAIT",
    "MAX_WAIT",
    "READ",
    "WRITE",
    "DispatcherBase",
    "Registration",
    "ceil_timeout",
]


READ: Final = int(Events.READ)
"""`Events.READ <asycamore.Events.READ>` as a plain int, for the hooks' arithmetic."""
WRITE: Final = int(Events.WRITE)
"""`Events.WRITE <asycamore.Events.WRITE>` as a plain int."""
_ALL_EVENTS: Final = READ | WRITE
# The masks of the four Events members: register() and modify() look a member up here
# (every connection passes one) and leave anything else to _check_events.
_MASK_OF_MEMBER: Final = {
    member: int(member)
    for member in (Events.NONE, Events.READ, Events.WRITE, Events.READ | Events.WRITE)
}
MAX_EVENTS_PER_WAIT: Final = 1024
"""The most readiness reports a backend should ask its OS for per wait.

epoll's and kqueue's result arrays are allocated per call, so sizing them by every
registered fd would make an idle fd cost memory on each dispatch.  With level-triggered
readiness whatever does not fit is reported again by the next wait.
"""
CLOSED: Final = 4
"""A pseudo-event ``kernel_poll`` reports for a fd the OS says is closed (POLLNVAL, EBADF).

The base then unregisters the target and gives its error path ``OSError(EBADF)``
(rule 6).  Report it alone, not combined with `READ` or `WRITE`.
"""


class Registration:
    """One target's registration: the descriptor it had at `register` and its interest.

    A new object is made by every ``register``; ``modify`` changes ``events`` in place,
    and ``unregister`` (and closing the context) sets it to 0 for good.  So a readiness
    report that holds a `Registration` only has to look at ``events`` when its turn
    comes: a retired registration wants nothing, and a target that took over the
    descriptor number since has a registration of its own that the report does not hold.
    Backends read these objects and never change them.
    """

    __slots__ = ("events", "fd", "target")

    def __init__(self, target: IDispatchTarget, fd: int, events: int) -> None:
        self.target = target
        """The registered target."""
        self.fd = fd
        """Its descriptor at ``register`` time (the key in ``registrations``)."""
        self.events = events
        """Its current interest, a combination of `READ` and `WRITE`; 0 once retired."""

    def __repr__(self) -> str:
        return f"Registration(fd={self.fd}, events={Events(self.events)!r}, {self.target!r})"


_F = TypeVar("_F", bound=Any)


def override(method: _F) -> _F:
    """``typing.override`` at run time, for the built-in backends on Python 3.11.

    The decorator is a marker for the type checker (which sees
    ``typing_extensions.override``); at run time it only sets ``__override__``.
    Importing typing_extensions for that would cost every server 1.5 MiB at start-up.
    """
    with contextlib.suppress(AttributeError, TypeError):
        method.__override__ = True
    return method


_MAX_FD: Final = 2**31 - 1
"""The largest descriptor number there can be: the OS interfaces take a C ``int``."""

_TARGET_METHODS: Final = ("fileno", "handle_read_event", "handle_write_event")
"""What ``register`` requires of a target (`asycamore.IDispatchTarget`)."""
# How many target classes a context remembers as checked.  A program has a handful; a
# bound keeps a program that makes a class per connection from growing the set forever
# (past it, a class is checked again at each register: correct, only slower).
_MAX_CHECKED_CLASSES: Final = 64

# The bits of DispatcherBase._state.  dispatch_once tests the whole word once, so the
# common case (open, in its own process, not already dispatching) costs one test.
_CLOSED: Final = 1
_INHERITED: Final = 2  # forked since the kernel object was made, not rebuilt yet
_DISPATCHING: Final = 4
_UNUSABLE: Final = _CLOSED | _INHERITED  # what register/modify must settle first

MAX_WAIT: Final = 2_000_000.0
"""The longest single wait, in seconds (about 23 days).

poll and epoll take a C ``int`` of milliseconds (at most about 24.8 days).  A longer
finite timeout waits this long and ``dispatch_once`` returns 0: it waits *at most* its
timeout, as the contract allows, instead of failing with ``OverflowError``.
"""


def ceil_timeout(timeout: float | None, resolution: float) -> float | None:
    """*timeout* in units of *resolution* seconds, rounded up; ``None`` stays ``None``.

    Rounding up matters: a 0.4 ms wait on a millisecond clock must wait 1 ms, not turn
    into a non-blocking poll that the caller's loop would repeat as a busy spin (rule 3).
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


def _thread_checked(
    context: weakref.ref[DispatcherBase], name: str, method: Callable[..., Any]
) -> Callable[..., Any]:
    """Debug mode's *name* on a context: its thread check, then *method* (a function
    of the class), holding the context weakly."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        self = context()
        assert self is not None  # reachable only through the context itself
        self._check_thread(name)
        return method(self, *args, **kwargs)

    checked.__name__ = checked.__qualname__ = name
    checked.__doc__ = method.__doc__
    return checked


_FORK_SENSITIVE: weakref.WeakSet[DispatcherBase] = weakref.WeakSet()
"""The open contexts whose class has ``rebuild_after_fork``: flagged in a forked child."""


def _flag_inherited_contexts() -> None:
    """``os.register_at_fork(after_in_child=...)``: mark what the child inherited.

    Only a flag, set before any of the child's code runs: the work (a new kernel object)
    is left to the context's first use, as libev's ``EVFLAG_FORKCHECK`` does, so a child
    that never touches a context (``subprocess`` with ``preexec_fn``, say) pays nothing.
    A flag, not a ``getpid()`` per dispatch: that is a system call, on the hot path.
    """
    for context in _FORK_SENSITIVE:
        context._state |= _INHERITED


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_flag_inherited_contexts)


class DispatcherBase:
    """The base of a backend: implements `asycamore.IDispatchContext` over the hooks.

    A subclass sets the class attributes `name` and `priority` (and, where they apply,
    `reports_closed_fds`), defines the classmethod `is_available`, creates its OS
    object in ``__init__`` after calling ``super().__init__()``, and implements the
    ``kernel_*`` hooks.  Its constructor must work without arguments (the factory passes
    ``create_dispatcher``'s keyword options, if any); one that takes
    ``debug: bool | None = None`` and passes it on to ``super().__init__(debug=debug)``
    offers debug mode to ``create_dispatcher(name, debug=...)`` (a subclass without an
    ``__init__`` of its own has it already).

    The hooks are called only in these situations, so they need no checks of their own:
    ``kernel_add``/``kernel_modify``/``kernel_remove`` for a *fd* whose interest really
    changes and is non-zero on the side that names it (``Events.NONE`` never reaches the
    kernel: epoll and poll would still report hang-ups); ``kernel_remove`` also after the
    descriptor was closed (it must then succeed, rule 2); none of them once the context
    is closed, or on a kernel object inherited across ``fork()`` (see
    `rebuild_after_fork`); ``kernel_poll`` with the caller's *timeout* (round it with
    `ceil_timeout`), never re-entered; ``kernel_close`` once.  A hook may raise
    ``OSError`` for a descriptor the OS refuses (``register`` then keeps nothing).
    """

    name: ClassVar[str]
    """The backend's name, the same as its entry point's name."""
    priority: ClassVar[int]
    """Higher is preferred when nobody names a backend (the built-ins use 10 to 40)."""
    reports_closed_fds: ClassVar[bool | None] = None
    """Whether the mechanism reports a descriptor closed while registered (rule 6).

    ``True``: it does (poll's ``POLLNVAL``, select's ``EBADF``), ``kernel_poll`` reports
    `CLOSED` for it, and the target is unregistered with ``OSError(EBADF)`` on its error
    path.  ``False``: the kernel drops it silently (epoll, kqueue) and the target just
    receives no more events.  ``None``: it depends (on the platform, say).  The
    conformance kit (:mod:`asycamore.testing`) reads it to know what rule 6 requires.
    """
    rebuild_after_fork: ClassVar[bool] = False
    """Whether a forked child must not use the kernel object it inherited.

    ``True`` for a mechanism whose OS object is not the child's own after ``fork()``:
    epoll's set is *shared* with the parent (a child's ``epoll_ctl`` would change the
    parent's set), and a kqueue is not inherited at all.  A child's first
    ``register``, ``modify`` or ``dispatch_once`` on an inherited context then calls
    `rebuild_kernel` (``kernel_reopen`` must not change the inherited object; closing
    the child's own descriptor of it is allowed); ``unregister`` only updates the
    registrations, and ``close`` calls ``kernel_reopen`` before ``kernel_close``.  The
    inherited object is never changed.  ``False`` (poll, select): the state lives in the
    process's own memory, so the child's copy is already independent.  Forks are seen
    through :func:`os.register_at_fork`, so a ``fork(2)`` made from C, bypassing
    :func:`os.fork`, is not.
    """

    slow_handler_threshold: float = 0.1
    """In debug mode, a handler call longer than this many seconds logs a warning.

    Set it on a context (``ctx.slow_handler_threshold = 0.02``) or on a subclass."""

    def __init__(self, *, debug: bool | None = None) -> None:
        """Create the context; *debug* turns debug mode on or off (``None``: as
        `asycamore.debug.debug_enabled` decides, from ``ASYCAMORE_DEBUG`` and
        ``python -X dev``).

        Debug mode times every round and handler call, warns of slow handlers (see
        `slow_handler_threshold`), refuses calls from a thread other than the
        dispatching one, and warns (:class:`ResourceWarning`) when the context is
        garbage-collected without `close`, naming the line that created it.
        """
        # Whether this backend extends check_fd: register() calls it only then, and makes
        # the base's range test itself otherwise (a call saved on every register).
        self._extends_check_fd = type(self).check_fd is not DispatcherBase.check_fd
        self._by_fd: dict[int, Registration] = {}
        # The same dict, typed read-only for the subclasses: a view object (a
        # MappingProxyType) would cost about 70 ns per lookup, per reported event.
        self.registrations: Final[Mapping[int, Registration]] = self._by_fd
        """The current registrations by descriptor, live; ``kernel_poll`` looks its
        reports up here.  Read-only: only the base changes it."""
        # Keyed by id(): targets need not be hashable, and the Registration keeps the
        # target alive, so its id cannot be reused while it is registered.
        self._by_target: dict[int, Registration] = {}
        # The target classes whose instances register() has found complete (see
        # _check_target): one set lookup per register instead of three getattr() calls.
        self._target_classes: set[type] = set()
        self._state = 0  # _CLOSED | _INHERITED | _DISPATCHING bits
        self._interest_watcher: Callable[[], object] | None = None
        # The counters of statistics(), in the form dispatch_once updates cheapest (see
        # there): rounds as a float, events and handler calls as their excess over rounds.
        self._rounds = 0.0
        self._extra_events = self._extra_calls = self._handler_errors = 0
        self._time_waiting = self._time_dispatching = 0.0
        self._slowest_handler: tuple[float, str, str] | None = None
        self._disarm_unclosed: Callable[[], object] | None = None
        if self.rebuild_after_fork:
            _FORK_SENSITIVE.add(self)
        if debug_enabled(debug):
            self._enter_debug_mode()

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend's OS mechanism exists on this platform."""
        raise NotImplementedError

    # -- the OS mechanism: the hooks a subclass implements --------------------------------

    def kernel_add(self, fd: int, events: int) -> None:
        """Start watching *fd* for *events* (`READ`, `WRITE` or both)."""
        raise NotImplementedError

    def kernel_modify(self, fd: int, old: int, new: int) -> None:
        """Change the interest of a watched *fd* from *old* to *new* (both non-zero)."""
        raise NotImplementedError

    def kernel_remove(self, fd: int, events: int) -> None:
        """Stop watching *fd* (watched for *events*).

        Must not fail because the descriptor was already closed, or its number reused by
        a file the mechanism never saw (``EBADF``, ``ENOENT``).
        """
        raise NotImplementedError

    def kernel_poll(self, timeout: float | None) -> list[tuple[Registration, int]]:
        """Wait up to *timeout* seconds (``None``: block; ``<= 0``: do not wait) for
        readiness; return the ``(registration, events)`` pairs to dispatch.

        Look each ready fd up in `registrations` (skip one that is not there) and report
        what the OS says as `READ`/`WRITE` bits -- an error or hang-up as the
        registration's whole interest (rule 5) -- or `CLOSED`.  At most one pair per
        registration.  The base drops what has gone stale by the time its turn comes.
        """
        raise NotImplementedError

    def kernel_close(self) -> None:
        """Release the OS object, if any (called once, by `close`)."""

    def kernel_reopen(self) -> None:
        """Replace the OS object by a new, empty one (for `rebuild_kernel`).

        Must not change the old object through the OS (after a fork it may be the
        parent's); closing this process's own descriptor for it is fine.
        """
        raise NotImplementedError

    def check_fd(self, fd: int) -> None:
        """Refuse, with ``ValueError``, a descriptor this mechanism cannot watch.

        Called by ``register`` with an ``int`` (never a ``bool``).  The base refuses
        negative numbers and numbers beyond a C ``int`` (which the OS interfaces would
        refuse with ``OverflowError``, or not at all for ``Events.NONE``); extend it
        (calling ``super().check_fd(fd)``) to add a limit of your own.
        """
        if not 0 <= fd <= _MAX_FD:
            raise ValueError(f"invalid file descriptor: {fd} (not in 0..{_MAX_FD})")

    def rebuild_kernel(self) -> None:
        """Replace the OS object by one holding exactly the current registrations.

        For a mechanism that may keep watching a file no registration accounts for
        (epoll keeps a socket closed while registered if another descriptor holds it
        open): ``kernel_reopen``, then ``kernel_add`` for each registration with an
        interest.  A descriptor closed while registered is left out, as the kernel would
        have dropped it.
        """
        self.kernel_reopen()
        for fd, registration in self._by_fd.items():
            if registration.events:
                try:
                    self.kernel_add(fd, registration.events)
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise

    # -- registration ---------------------------------------------------------------------

    def _settle(self) -> None:
        """The slow path of the entry points: refuse a closed context; give a forked
        child a kernel object of its own before it first uses an inherited one."""
        if self._state & _CLOSED:
            raise ValueError(f"I/O operation on a closed {self.name} dispatcher")
        if self._state & _INHERITED:
            self.rebuild_kernel()
            # Only now: if the rebuild failed, the next use must not reach the parent's.
            self._state &= ~_INHERITED

    def _check_target(self, target: object) -> None:
        """Refuse a *target* without the three methods; remember a class that has them.

        Only a class that defines all three itself is remembered: an instance given
        them one by one (a mock, say) is checked at every ``register``.
        """
        missing = [name for name in _TARGET_METHODS if not callable(getattr(target, name, None))]
        if missing:
            raise TypeError(
                "register() needs a dispatch target with fileno(), handle_read_event() and "
                f"handle_write_event(): target {target!r} has no {', '.join(missing)}"
            )
        cls = type(target)
        if len(self._target_classes) < _MAX_CHECKED_CLASSES and all(
            callable(getattr(cls, name, None)) for name in _TARGET_METHODS
        ):
            self._target_classes.add(cls)

    @staticmethod
    def _check_events(events: int) -> int:
        # Plain int arithmetic: IntFlag operators build enum members, a measurable cost
        # on the register/modify path of every connection.  A negative number has bits
        # outside READ|WRITE, so the one test refuses it too.
        mask = int(events) if isinstance(events, int) else -1
        if mask & ~_ALL_EVENTS:
            raise ValueError(f"invalid events: {events!r} (expected a combination of READ|WRITE)")
        return mask

    def register(self, target: IDispatchTarget, events: Events = Events.READ) -> None:
        """Start watching *target* for *events* (see :class:`asycamore.IDispatchContext`).

        :class:`TypeError` if *target* lacks ``fileno``, ``handle_read_event`` or
        ``handle_write_event`` (the message names what it lacks): found here, not at the
        first event, where it would cost a traceback per event far from the mistake.
        """
        if self._state & _UNUSABLE:
            self._settle()
        if type(target) not in self._target_classes:
            self._check_target(target)
        if events.__class__ is Events:
            mask = _MASK_OF_MEMBER[events]
        else:
            mask = self._check_events(events)
        fd = target.fileno()
        if fd.__class__ is not int:
            # A bool is an int, but True is no descriptor anyone means (CPython 3.12
            # deprecates it as one); an int subclass (IntEnum) is taken as its value.
            if isinstance(fd, bool) or not isinstance(fd, int):
                raise ValueError(f"fileno() returned {fd!r}, not a descriptor number")
            fd = int(fd)
        if self._extends_check_fd or not 0 <= fd <= _MAX_FD:
            self.check_fd(fd)
        if id(target) in self._by_target:
            raise KeyError(f"{target!r} is already registered")
        if fd in self._by_fd:
            raise KeyError(f"fd {fd} is already registered by {self._by_fd[fd].target!r}")
        # Events.NONE never reaches the kernel: epoll and poll report hang-ups and errors
        # even for an empty interest set, and the contract says NONE receives nothing.
        if mask:
            self.kernel_add(fd, mask)
        registration = Registration(target, fd, mask)
        self._by_fd[fd] = registration
        self._by_target[id(target)] = registration
        if mask and self._interest_watcher is not None:
            self._interest_watcher()

    def modify(self, target: IDispatchTarget, events: Events) -> None:
        """Change the events *target* is watched for; no system call if nothing changes."""
        if self._state & _UNUSABLE:
            self._settle()
        mask = self._check_events(events)
        registration = self._registration(target)
        old = registration.events
        if mask == old:
            return
        if not old:
            self.kernel_add(registration.fd, mask)
        elif not mask:
            self.kernel_remove(registration.fd, old)
        else:
            self.kernel_modify(registration.fd, old, mask)
        registration.events = mask
        if self._interest_watcher is not None:
            self._interest_watcher()

    def unregister(self, target: IDispatchTarget) -> None:
        """Stop watching *target*; works after its descriptor was closed."""
        # _registration(), inlined: every connection comes through here once.
        registration = self._by_target.pop(id(target), None)
        if registration is None:
            raise KeyError(f"{target!r} is not registered")
        del self._by_fd[registration.fd]
        events = registration.events
        # Retire it: readiness already collected for it is now stale (see Registration).
        registration.events = 0
        # Closed: the kernel object is gone.  Inherited across a fork: it may be the
        # parent's, and the rebuild at the next use starts from the registrations anyway.
        if events and not self._state & _UNUSABLE:
            self.kernel_remove(registration.fd, events)
            if self._interest_watcher is not None:
                self._interest_watcher()

    def _registration(self, target: IDispatchTarget) -> Registration:
        try:
            return self._by_target[id(target)]
        except KeyError:
            raise KeyError(f"{target!r} is not registered") from None

    def __contains__(self, target: object) -> bool:
        """Whether *target* is registered."""
        return id(target) in self._by_target

    def __len__(self) -> int:
        """The number of registered targets."""
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
        """Wait up to *timeout* seconds, then call the ready handlers; return how many ran.

        Not re-entrant: called from one of this context's handlers (or from another
        thread while it dispatches) it raises :class:`RuntimeError`.  Raised inside a
        handler, that error takes the handler's error path (rule 7) like any other.
        """
        if self._state:  # one test on the hot path: closed, forked, or re-entered
            self._settle_dispatch()
        self._state = _DISPATCHING
        # The loop over the reports is written here, not in a method of its own: this runs
        # once per dispatch, and a call is a sizeable part of a dispatch of one event.
        try:
            calls = 0
            # The reports that called no handler, less those that called two: the round's
            # events are calls + unmatched, counted only off the common path, so that
            # path needs no len() of the reports (the counters below).
            unmatched = 0
            for registration, events in self.kernel_poll(timeout):
                # Re-check the interest before each handler: an earlier handler in this
                # round may have changed it, or unregistered the target (which zeroes it).
                # READ first: the common report is tested once, CLOSED (alone) last.
                if events & READ:
                    if registration.events & READ:
                        calls += 1
                        try:
                            registration.target.handle_read_event()
                        except Exception as exc:
                            self._handler_failed(registration.target, exc, error_in_handler)
                        if not events & WRITE:
                            continue
                        unmatched -= 1  # READ and WRITE: a second call may follow
                    elif not events & WRITE:
                        unmatched += 1  # stale (rule 4)
                        continue
                elif not events & WRITE:
                    unmatched += 1
                    if events & CLOSED:
                        self._evict_closed(registration, error_in_handler)
                    continue
                if registration.events & WRITE:
                    calls += 1
                    try:
                        registration.target.handle_write_event()
                    except Exception as exc:
                        self._handler_failed(registration.target, exc, error_in_handler)
                else:
                    unmatched += 1
            # statistics(), once per round, within +1 % of a dispatch without them
            # (docs/benchmarks.rst).  An int add allocates its result (some 300
            # instructions); a float add of 1.0 takes it from the float free list, so
            # rounds is a float (exact up to 2**53 rounds, centuries of dispatching).
            # Events and handler calls are kept as their excess over rounds, which the
            # usual round of a busy loop -- one report, one handler call -- leaves as is.
            self._rounds += 1.0
            if calls != 1 or unmatched:
                self._extra_events += calls + unmatched - 1
                self._extra_calls += calls - 1
            return calls
        finally:
            # Only this bit (set above): a handler may have closed the context, or forked.
            self._state ^= _DISPATCHING

    def _settle_dispatch(self) -> None:
        """``dispatch_once``'s slow path: refuse re-entry, then `_settle`."""
        if self._state & _DISPATCHING:
            raise RuntimeError(
                f"dispatch_once() called while this {self.name} context is already "
                "dispatching (from one of its handlers, or another thread): return "
                "from the handler and let the running dispatch go on"
            )
        self._settle()

    def _handler_failed(
        self, target: IDispatchTarget, exc: Exception, error_in_handler: ErrorHandler | None
    ) -> None:
        """A handler raised *exc*: count it, then `_error_path`."""
        self._handler_errors += 1
        self._error_path(target, exc, error_in_handler)

    def _error_path(
        self, target: IDispatchTarget, exc: Exception, error_in_handler: ErrorHandler | None
    ) -> None:
        """Rule 7: the caller's error handler, or log, unregister and close."""
        if error_in_handler is not None:
            error_in_handler(target, exc)
        else:
            close_on_error(self, target, exc)

    def _evict_closed(
        self, registration: Registration, error_in_handler: ErrorHandler | None
    ) -> None:
        """Rule 6: unregister a target whose fd the OS reports as closed, report EBADF."""
        target = registration.target
        if self._by_fd.get(registration.fd) is not registration:
            return
        self.unregister(target)
        exc = OSError(errno.EBADF, f"fd {registration.fd} was closed while registered")
        self._error_path(target, exc, error_in_handler)

    # -- observing ------------------------------------------------------------------------

    def statistics(self) -> DispatchStatistics:
        """A snapshot of what this context has done since it was created.

        The counts are kept in every mode; the times and the slowest handler call only
        in debug mode (see :class:`~asycamore.DispatchStatistics`).
        """
        rounds = int(self._rounds)
        return DispatchStatistics(
            rounds=rounds,
            events=rounds + self._extra_events,
            handler_calls=rounds + self._extra_calls,
            handler_errors=self._handler_errors,
            time_waiting=self._time_waiting,
            time_dispatching=self._time_dispatching,
            registered=len(self._by_target),
            slowest_handler=self._slowest_handler,
        )

    # -- debug mode -----------------------------------------------------------------------
    #
    # Nothing here runs outside debug mode: entering it puts thread-checked entry points
    # on the instance, in front of the class's methods, so the plain methods stay as
    # they are.

    def _enter_debug_mode(self) -> None:
        # The thread that dispatches, or last dispatched; None until the first dispatch.
        self._dispatch_thread: threading.Thread | None = None
        cls = type(self)
        # Weakly: a bound method kept on its own instance would be a reference cycle, and
        # an unclosed context would wait for the cyclic collector to be warned of.
        me = weakref.ref(self)
        for name, method in (
            ("register", cls.register),
            ("modify", cls.modify),
            ("unregister", cls.unregister),
            ("dispatch_once", cls._dispatch_timed),
        ):
            setattr(self, name, _thread_checked(me, name, method))
        self._disarm_unclosed = warn_unclosed(self, f"{self.name} dispatch context")

    def _check_thread(self, method: str) -> None:
        """Debug mode: refuse a call of *method* from a thread other than the
        dispatching one (or, between dispatches, the one that last dispatched)."""
        owner = self._dispatch_thread
        current = threading.current_thread()
        if owner is not None and owner is not current:
            raise RuntimeError(
                f"{method}() called from thread {current.name!r} (ident {current.ident}), "
                f"but this {self.name} context is dispatched by thread {owner.name!r} "
                f"(ident {owner.ident}): call it from that thread (debug mode)"
            )

    def _dispatch_timed(
        self, timeout: float | None = None, error_in_handler: ErrorHandler | None = None
    ) -> int:
        """``dispatch_once`` in debug mode (behind the thread check): the same rules,
        with a clock read around the wait and each handler call timed (`_call_timed`)."""
        if self._state:
            self._settle_dispatch()
        self._dispatch_thread = threading.current_thread()
        self._state = _DISPATCHING
        clock = time.perf_counter
        try:
            calls = 0
            started = clock()
            reports = self.kernel_poll(timeout)
            polled = clock()
            for registration, events in reports:
                if events & CLOSED:
                    self._evict_closed(registration, error_in_handler)
                    continue
                if events & READ and registration.events & READ:
                    calls += 1
                    self._call_timed(registration.target, "handle_read_event", error_in_handler)
                if events & WRITE and registration.events & WRITE:
                    calls += 1
                    self._call_timed(registration.target, "handle_write_event", error_in_handler)
            self._rounds += 1.0  # the counters as dispatch_once keeps them
            self._extra_events += len(reports) - 1
            self._extra_calls += calls - 1
            self._time_waiting += polled - started
            self._time_dispatching += clock() - polled
            return calls
        finally:
            self._state ^= _DISPATCHING

    def _call_timed(
        self, target: IDispatchTarget, handler: str, error_in_handler: ErrorHandler | None
    ) -> None:
        """Call *target*'s *handler*; time it (`_timed`), then take the error path if it
        raised."""
        started = time.perf_counter()
        try:
            getattr(target, handler)()
        except Exception as exc:
            self._timed(target, handler, time.perf_counter() - started)
            self._handler_failed(target, exc, error_in_handler)
        else:
            self._timed(target, handler, time.perf_counter() - started)

    def _timed(self, target: IDispatchTarget, handler: str, seconds: float) -> None:
        """Keep the slowest handler call; warn of one over `slow_handler_threshold`."""
        if self._slowest_handler is None or seconds > self._slowest_handler[0]:
            self._slowest_handler = (seconds, repr(target), handler)
        if seconds > self.slow_handler_threshold:
            # Imported here, as close_on_error does: logging costs start-up time.
            import logging

            logging.getLogger("asycamore").warning(
                "slow handler: %s of %r took %.3f s (slow_handler_threshold %s s); "
                "nothing else was dispatched meanwhile",
                handler,
                target,
                seconds,
                self.slow_handler_threshold,
            )

    # -- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the OS resources and forget every target.  Idempotent."""
        state = self._state
        if state & _CLOSED:
            return
        self._state = state | _CLOSED
        _FORK_SENSITIVE.discard(self)
        if self._disarm_unclosed is not None:
            self._disarm_unclosed()
        for registration in self._by_fd.values():
            registration.events = 0
        self._by_fd.clear()
        self._by_target.clear()
        if state & _INHERITED:
            self.kernel_reopen()  # let go of what may be the parent's without changing it
        self.kernel_close()

    def __enter__(self) -> Self:
        """Return the context itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the context."""
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._state & _CLOSED else f"{len(self)} targets"
        return f"<{type(self).__name__} {state}>"
