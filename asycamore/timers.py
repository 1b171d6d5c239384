"""Loop services that need no transport: a timer heap and a queue of ready callbacks.

:class:`Timers` schedules calls on a clock and tells a loop how long its next dispatch
may block; :class:`ReadyQueue` holds the ``call_soon`` callbacks that run before the
next dispatch.  :class:`asycamore.servicemodel.Service` runs one of each; a loop built
directly on :func:`~asycamore.iterate` can use :meth:`Timers.before_dispatch` as is, and
a foreign main loop (asyncio, Tk) can drive them from its own callbacks.

Everything here is single-threaded, except :meth:`ReadyQueue.append`, which may be
called from any thread (:class:`collections.deque` appends are atomic).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, MutableMapping
from typing import Any, Final

from .arguments import check_interval
from .dispatcher import IDispatchContext

__all__ = ["ReadyQueue", "RepeatingTimer", "TimerHandle", "Timers"]

_log = logging.getLogger("asycamore")
_isnan = math.isnan


class TimerHandle:
    """A scheduled call, returned by :meth:`Timers.call_at`, :meth:`Timers.call_later`
    and :meth:`ReadyQueue.append`."""

    __slots__ = ("_args", "_callback", "_timers", "cancelled", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        timers: Timers | None,
    ) -> None:
        self.when = when
        """The clock time the call is due at (0 for a ready callback)."""
        self.cancelled = False
        """Whether :meth:`cancel` was called."""
        self._callback: Callable[..., object] | None = callback
        self._args = args
        self._timers = timers

    def cancel(self) -> None:
        """Cancel the call if it has not run yet; harmless afterwards or twice."""
        if self.cancelled:
            return
        self.cancelled = True
        self._callback = None
        self._args = ()
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers._cancelled_one()

    def _run(self) -> None:
        callback = self._callback
        if callback is not None:
            args = self._args
            self._callback = None
            self._args = ()
            callback(*args)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<TimerHandle when={self.when:.3f}{state} {self._callback!r}>"


def _checked_time(value: float, what: str) -> float:
    """*value* as a float; ValueError for NaN or a non-number.

    A NaN deadline compares false with everything, so in a heap it would strand the due
    calls behind it and make every timeout computed from it NaN (which the backends
    refuse): it is refused here, where the caller can see whose mistake it is.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond a float (10**400): as good as infinite
        value = math.inf if value > 0 else -math.inf
    if math.isnan(value):
        raise ValueError(f"{what} must not be NaN")
    return value


class Timers:
    """A timer heap with lazy cancellation, for loops built on :func:`~asycamore.iterate`.

    :meth:`call_later` / :meth:`call_at` schedule a call; :meth:`run_due` runs the calls
    that are due and :meth:`timeout` says how long the next dispatch may block.  The
    :meth:`before_dispatch` method does both and can be passed to
    :func:`~asycamore.iterate` as is::

        timers = Timers()
        iterate(dispatcher, timeout=None, before_dispatch=timers.before_dispatch)

    A cancelled call stays in the heap until it comes to the top or until cancelled
    calls make up most of the heap, when the heap is rebuilt: cancelling is O(1).
    An exception raised by a call is logged on logger ``"asycamore"`` and does not stop
    the other calls.  A delay or time that is NaN or not a number raises
    :class:`ValueError`; an infinite one is accepted and never comes due.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """The clock, :func:`time.monotonic` by default."""
        self._heap: list[tuple[float, int, TimerHandle]] = []
        # The same list, typed read-only: a loop tests it before every dispatch, where
        # advance() would be a call.  So the heap is only ever changed in place.
        self.pending: Final[Collection[tuple[float, int, TimerHandle]]] = self._heap
        """The scheduled entries, live and read-only: ``if timers.pending:`` is the cheap
        test for scheduled calls (cancelled ones included until they are dropped)."""
        self._seq = itertools.count()
        self._cancelled = 0
        self.fired = 0
        """How many scheduled calls have been made (a repeating timer's, each time)."""
        self.on_schedule: Callable[[float], object] | None = None
        """Called with the due time of every new call, if set: a foreign main loop that
        waits with a deadline of its own learns to wait less (see
        :meth:`asycamore.servicemodel.Service.serving`)."""

    def time(self) -> float:
        """The current time on this heap's clock."""
        return self.clock()

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` once the clock reaches *when*."""
        if type(when) is not float or _isnan(when):  # the common case in one test
            when = _checked_time(when, "the time")
        handle = TimerHandle(when, callback, args, self)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if self.on_schedule is not None:
            self.on_schedule(when)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` after *delay* seconds."""
        if type(delay) is not float or _isnan(delay):
            delay = _checked_time(delay, "the delay")
        return self.call_at(self.clock() + delay, callback, *args)

    def call_every(
        self, interval: float, callback: Callable[..., object], *args: Any
    ) -> RepeatingTimer:
        """Call ``callback(*args)`` every *interval* seconds, the first call one
        interval from now, until the returned timer is cancelled (see
        :class:`RepeatingTimer`).  *interval* must be a positive finite number
        (:class:`ValueError`)."""
        return RepeatingTimer(self, check_interval(interval), callback, args)

    def __len__(self) -> int:
        """The number of scheduled calls that are not cancelled."""
        return len(self._heap) - self._cancelled

    def scheduled(self) -> list[TimerHandle]:
        """The scheduled calls that are not cancelled, soonest first (a snapshot)."""
        return [handle for _, _, handle in sorted(self._heap) if not handle.cancelled]

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 64 and self._cancelled * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].cancelled]  # see pending
            heapq.heapify(heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The clock time of the earliest pending call, or ``None`` if there is none."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def timeout(self, now: float | None = None) -> float | None:
        """Seconds until the earliest pending call (0 if it is due), ``None`` if none."""
        if not self._heap:  # a service asks before every dispatch, mostly with no timers
            return None
        deadline = self.next_deadline()
        if deadline is None:
            return None
        if now is None:
            now = self.clock()
        return max(deadline - now, 0.0)

    def run_due(self, now: float | None = None) -> int:
        """Run the calls due at *now* (default: the clock); return how many ran.

        Calls scheduled while they run are left for the next round, even if they are
        already due, so a call that re-schedules itself cannot starve the loop.
        """
        heap = self._heap
        if not heap:
            return 0
        if now is None:
            now = self.clock()
        if heap[0][0] > now:
            return 0
        due: list[TimerHandle] = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
                continue
            handle._timers = None
            due.append(handle)
        ran = 0
        for handle in due:
            if handle.cancelled:  # by a call before it in this batch
                continue
            ran += 1
            try:
                handle._run()
            except Exception:
                _log.exception("error in timer callback %r", handle)
        self.fired += ran
        return ran

    def advance(self) -> float | None:
        """:meth:`run_due`, then return :meth:`timeout`: a loop's timer step in one call.

        With nothing scheduled (a loop's usual case) it returns ``None`` at once.
        """
        if not self._heap:
            return None
        self.run_due()
        return self.timeout()

    def before_dispatch(
        self, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
    ) -> None:
        """An :func:`~asycamore.iterate` callback: run due calls, set the next timeout."""
        dispatchvars["timeout"] = self.advance()


class RepeatingTimer:
    """A call repeated at a fixed rate, made by :meth:`Timers.call_every`.

    The *k*-th call is due at ``start + k * interval``: each due time is computed from
    the schedule, not from when the previous call ran, so lateness never accumulates
    (no drift).  After a stall longer than an interval -- a slow callback, a blocked
    loop -- the missed calls are not made up in a burst: one late call is made, and the
    next is the first due time of the schedule still ahead.  :meth:`cancel` stops it,
    from inside the callback too; an exception from the callback is logged and does
    not stop it.
    """

    __slots__ = ("_args", "_callback", "_handle", "_timers", "cancelled", "interval", "when")

    def __init__(
        self,
        timers: Timers,
        interval: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        self.interval = interval
        """Seconds between calls."""
        self.cancelled = False
        """Whether :meth:`cancel` was called."""
        self._timers = timers
        self._callback = callback
        self._args = args
        self.when = timers.clock() + interval
        """The clock time the next call is due at."""
        self._handle = timers.call_at(self.when, self._fire)

    def _fire(self) -> None:
        try:
            self._callback(*self._args)
        finally:
            if not self.cancelled:
                now = self._timers.clock()
                interval = self.interval
                due = self.when + interval
                if due <= now:
                    # Stalled past one or more due times: skip them (no burst).
                    due += interval * (math.floor((now - due) / interval) + 1)
                self.when = due
                self._handle = self._timers.call_at(due, self._fire)

    def cancel(self) -> None:
        """Stop the calls; harmless twice or from inside the callback."""
        if not self.cancelled:
            self.cancelled = True
            self._handle.cancel()
            self._args = ()

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else f" next={self.when:.3f}"
        return f"<RepeatingTimer every {self.interval} s{state} {self._callback!r}>"


class ReadyQueue:
    """Callbacks to run before the next dispatch, in the order they were queued.

    :meth:`append` may be called from any thread; :meth:`run` only from the loop's.
    """

    __slots__ = ("_queue", "pending")

    def __init__(self) -> None:
        self._queue: collections.deque[TimerHandle] = collections.deque()
        # The same deque, typed read-only: a loop tests it before every dispatch, and
        # ``len()`` through a Python ``__len__`` would be a call each time.
        self.pending: Final[Collection[TimerHandle]] = self._queue
        """The queued handles, live and read-only: ``if queue.pending:`` is the cheap
        test for queued callbacks (cancelled ones included until they are run)."""

    def append(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Queue ``callback(*args)``; the handle can cancel it."""
        handle = TimerHandle(0.0, callback, args, None)
        self._queue.append(handle)
        return handle

    def __len__(self) -> int:
        """How many callbacks are queued (cancelled ones included until they are run)."""
        return len(self._queue)

    def run(self) -> int:
        """Run the callbacks queued so far; return how many were taken off the queue.

        Those queued while they run wait for the next call, so a callback that queues
        itself cannot starve the loop.  An exception is logged on logger
        ``"asycamore"`` and does not stop the others.
        """
        queue = self._queue
        count = len(queue)
        for _ in range(count):
            handle = queue.popleft()
            try:
                handle._run()
            except Exception:
                _log.exception("error in callback %r", handle)
        return count
