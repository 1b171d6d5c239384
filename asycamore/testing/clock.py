"""`MockClock`: a clock for tests, whose time moves only when the test says so.

A service on a mock clock (``Service(clock=MockClock())``) runs a 30-second idle timeout
in no real time: the test calls :meth:`MockClock.advance`, or lets the clock jump to
the next timer by itself once the loop has nothing else to do (``autojump_threshold``,
as trio's ``MockClock`` does).

This module imports neither pytest nor the conformance kit: library code and a user's
own helpers may use it.
"""

from __future__ import annotations

import math
import time

__all__ = ["MockClock"]


class MockClock:
    """A callable clock starting at 0.0 that moves only by :meth:`advance` or an
    autojump.

    *autojump_threshold* is how long, in real seconds, a loop on this clock must have
    been idle -- blocked with no handler run, waiting only for a timer -- before the
    clock jumps straight to that timer's deadline: ``0`` jumps as soon as the loop is
    idle, ``math.inf`` (the default) never, so that only :meth:`advance` moves time.
    The loop sees the jump as time passing: timers, :meth:`~asycamore.servicemodel.
    Service.call_every`, idle and stop timeouts fire as they would have, in order.

    Idleness is judged by the dispatch context's handler count
    (:meth:`~asycamore.backends.base.DispatcherBase.statistics`); on a context without
    ``statistics()`` only the real time waited is, so a jump could then come while
    readiness is still arriving.  Without an autojump a loop on this clock blocks for
    readiness only (it would otherwise wait for timers that real time never brings),
    so drive it with :meth:`~asycamore.servicemodel.Service.run_once` and
    :meth:`advance` from the loop's thread.
    """

    def __init__(self, autojump_threshold: float = math.inf) -> None:
        self._now = 0.0
        self._threshold = math.inf
        self.autojump_threshold = autojump_threshold
        # The idle wait under way: (activity, clock time) when it began, and the real
        # time it began at.  A jump needs both unchanged and the threshold waited.
        self._idle: tuple[int | None, float] | None = None
        self._idle_since = 0.0

    def __call__(self) -> float:
        """The current time on this clock, in seconds."""
        return self._now

    @property
    def autojump_threshold(self) -> float:
        """Real seconds of idleness after which the clock jumps to the next timer
        (``math.inf``: never; settable)."""
        return self._threshold

    @autojump_threshold.setter
    def autojump_threshold(self, seconds: float) -> None:
        self._threshold = _seconds(seconds, "autojump_threshold")
        self._idle = None

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* (``0`` is allowed; negative or NaN is a
        :class:`ValueError`).  Timers that come due run at the loop's next round."""
        self._now += _seconds(seconds, "seconds")

    def real_timeout(self, timeout: float | None, activity: int | None) -> float | None:
        """How long a loop may block in real time when its next timer is *timeout*
        clock seconds away (:class:`~asycamore.serviceloop.PacingClock`).

        With no timer, or with autojump off, the loop blocks for readiness only
        (``None``).  Otherwise it waits out what is left of the threshold; once the loop
        has been idle that long (*activity* and the clock unchanged), the clock jumps to
        the timer and the answer is ``0``, so the next round runs it.
        """
        if timeout is None or timeout <= 0 or self._threshold == math.inf:
            self._idle = None  # blocked for readiness, or a timer is due: not idle
            return None if timeout is None or timeout > 0 else timeout
        now = time.monotonic()
        state = (activity, self._now)
        if self._idle != state:
            # Idle from here on, if nothing happens during the wait handed out now.
            self._idle = state
            self._idle_since = now
            return self._threshold
        waited = now - self._idle_since
        if waited >= self._threshold:
            self._now += timeout
            self._idle = None
            return 0.0
        return self._threshold - waited

    def __repr__(self) -> str:
        return f"<MockClock time={self._now!r} autojump_threshold={self._threshold!r}>"


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be zero or more seconds, not {value!r}")
    return float(value)
