"""What a service needs of a loop: a dispatch context, scheduling, wake-up and signals.

:class:`ServiceLoop` is the half of :class:`~asycamore.servicemodel.Service` that knows
nothing of transports: it owns a dispatch context (from the factory, or the caller's),
a :class:`~asycamore.timers.Timers` heap, a :class:`~asycamore.timers.ReadyQueue` for
``call_soon``, a :class:`~asycamore.wakeup.Waker` for other threads and a
:class:`~asycamore.wakeup.SignalCatcher`, and runs them on :func:`~asycamore.iterate`:
its ``before_dispatch`` callback handles signals, runs queued callbacks and due timers,
and sets the timeout of the next dispatch from the nearest timer, so a dispatch blocks
when nothing is scheduled.  What a stop means -- which transports to wind down -- is
the subclass's (:meth:`ServiceLoop.stop`, :meth:`ServiceLoop.stop_complete`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Protocol, Self, runtime_checkable

from .debug import debug_enabled, warn_unclosed
from .dispatcher import (
    Events,
    IDispatchContext,
    IDispatchTarget,
    close_on_error,
    given_or_created,
    iterate,
)
from .timers import ReadyQueue, RepeatingTimer, TimerHandle, Timers
from .wakeup import DEFAULT_SIGNALS, SignalCatcher, Waker

__all__ = ["PacingClock", "ServiceLoop"]

_log = logging.getLogger("asycamore")


@runtime_checkable
class PacingClock(Protocol):
    """A clock that is not real time, and so also decides how long a loop blocks.

    A loop on such a clock (:class:`~asycamore.testing.MockClock` is one) asks it before
    each dispatch how long to wait in real seconds.
    """

    def __call__(self) -> float:
        """The current time on this clock, in seconds."""
        ...

    def real_timeout(self, timeout: float | None, activity: int | None) -> float | None:
        """How many real seconds a dispatch may block when the next timer is due in
        *timeout* seconds of this clock (``None``: no timer).  *activity* is a count
        that has grown whenever a handler ran (``None`` if the context cannot tell):
        an unchanged count between two calls means the loop was idle."""
        ...


class ServiceLoop:
    """A dispatch context with timers, ready callbacks, a wake-up socket and signal
    handling, run on :func:`~asycamore.iterate` (see the module docstring).

    The context is created with :func:`~asycamore.create_dispatcher` from *backend*
    (default: ``$ASYCAMORE_BACKEND`` or the best backend here), unless *dispatcher* is
    given; :meth:`close` closes it only if it was created here.  Every method must be
    called from the thread that runs the loop, except :meth:`call_soon_threadsafe`,
    :meth:`wakeup` and :meth:`stop`.

    *clock* (a zero-argument callable returning seconds; default
    :func:`time.monotonic`) is what the timers follow.  A :class:`PacingClock`, such as
    :class:`asycamore.testing.MockClock`, also decides how long each dispatch may block
    in real time, so a test's timers can run in no real time.

    *debug* (default: ``$ASYCAMORE_DEBUG`` or ``python -X dev``) turns on debug mode for
    the loop and the context it creates (see :doc:`/observing`): a loop garbage-collected
    without :meth:`close` then emits a :class:`ResourceWarning` saying where it was
    made.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        dispatcher: IDispatchContext | None = None,
        clock: Callable[[], float] | None = None,
        debug: bool | None = None,
    ) -> None:
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a str or None, not {backend!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable or None, not {clock!r}")
        if debug is not None and not isinstance(debug, bool):
            raise TypeError(f"debug must be a bool or None, not {debug!r}")
        dispatcher, self._owns_dispatcher = given_or_created(backend, dispatcher, debug)
        self.debug = debug_enabled(debug)
        """Whether debug mode is on (see :doc:`/observing`)."""
        self.dispatcher: IDispatchContext = dispatcher
        """The dispatch context."""
        self.timers = Timers(time.monotonic if clock is None else clock)
        """The :class:`~asycamore.timers.Timers` that run scheduled calls."""
        # A clock that is not real time (asycamore.testing.MockClock) also says how long
        # a dispatch may block in real time, and may jump once the loop is idle.
        self._paced_by: PacingClock | None = clock if isinstance(clock, PacingClock) else None
        self.dispatchvars: dict[str, Any] = {}
        """The ``dispatchvars`` of :meth:`serve_forever`'s :func:`~asycamore.iterate`."""
        self._ready = ReadyQueue()
        self._waker = Waker()
        try:
            dispatcher.register(self._waker, Events.READ)
        except BaseException:
            self._waker.close()
            raise
        self._thread_id: int | None = None
        self._running = False
        self._stopping = False
        self._signals = SignalCatcher(self._waker)
        self._on_schedule: Callable[[float], object] | None = None
        self._closed = False
        # Debug mode: a loop dropped without close() says where it was made.
        self._disarm_unclosed = warn_unclosed(self, type(self).__name__) if self.debug else None

    # -- scheduling ------------------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock: :func:`time.monotonic`, or the *clock* given."""
        return self.timers.clock()

    @property
    def clock(self) -> Callable[[], float]:
        """The clock everything the loop times follows (see :meth:`time`)."""
        return self.timers.clock

    def call_soon(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` before the next dispatch (in order of calls)."""
        handle = self._ready.append(callback, *args)
        if self._on_schedule is not None:
            self._on_schedule(-math.inf)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Like :meth:`call_soon`, from any thread: wakes the loop if it is blocked."""
        handle = self._ready.append(callback, *args)
        if threading.get_ident() != self._thread_id:
            self._waker.wake()
        elif self._on_schedule is not None:
            self._on_schedule(-math.inf)
        return handle

    def wakeup(self) -> None:
        """Wake a blocked dispatch (from any thread)."""
        self._waker.wake()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` after *delay* seconds; cancel with the handle."""
        return self.timers.call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` at *when* on the :meth:`time` clock."""
        return self.timers.call_at(when, callback, *args)

    def call_every(
        self, interval: float, callback: Callable[..., object], *args: Any
    ) -> RepeatingTimer:
        """Call ``callback(*args)`` every *interval* seconds, at a fixed rate.

        The first call is one interval from now; the schedule does not drift; after a
        stall at most one late call is made, then the schedule resumes (no catch-up
        burst).  ``cancel()`` on the returned :class:`~asycamore.timers.RepeatingTimer`
        stops it, also from inside the callback.  *interval* must be a positive finite
        number of seconds (:class:`ValueError`).
        """
        return self.timers.call_every(interval, callback, *args)

    # -- running -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the loop is running (:meth:`serve_forever`, or :meth:`serving`)."""
        return self._running

    @property
    def stopping(self) -> bool:
        """Whether a :meth:`stop` is in progress."""
        return self._stopping

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop (subclasses wind their work down first, for *timeout*)."""
        if self._running and not self._in_loop_thread():
            self.call_soon_threadsafe(self.stop, timeout)
            return
        self._stopping = True
        self._schedule_now()

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def stop_complete(self) -> bool:
        """Whether a stop in progress is complete, so the loop ends (subclasses)."""
        return True

    def abort_remaining(self, exc: BaseException) -> None:
        """A second signal during a stop: end what is left at once (subclasses)."""

    def before_dispatch(
        self, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
    ) -> None:
        """The loop's :func:`~asycamore.iterate` callback.

        Handles received signals, runs queued callbacks and due timers, ends the loop
        (:class:`StopIteration`) once a stop has completed or the loop was closed, and
        sets ``dispatchvars["timeout"]``: 0 if callbacks are queued, else the time to
        the next timer, else ``None`` (block).
        """
        if self._signals.pending:
            self._handle_signals()
        queued = self._ready.pending
        if queued:
            self._ready.run()
        # advance() only when something is scheduled: a call saved on most rounds, which
        # pays for the dispatch statistics (docs/benchmarks.rst).
        timeout = self.timers.advance() if self.timers.pending else None
        if (self._stopping and self.stop_complete()) or self._closed:
            # A close() from a callback or handler also ends the loop, before it would
            # dispatch on the closed context.
            raise StopIteration
        if queued:
            dispatchvars["timeout"] = 0
        elif timeout is None or self._paced_by is None:
            dispatchvars["timeout"] = timeout
        else:
            dispatchvars["timeout"] = self._paced_by.real_timeout(timeout, self._activity())

    def _activity(self) -> int | None:
        """A count that grows whenever a handler runs, if the context can tell."""
        statistics = getattr(self.dispatcher, "statistics", None)
        return None if statistics is None else int(statistics().handler_calls)

    def error_in_handler(self, target: IDispatchTarget, exc: Exception) -> None:
        """The loop's error policy for handlers that raise: the default one (rule 7)."""
        try:
            close_on_error(self.dispatcher, target, exc)
        except Exception:
            _log.exception("error while handling an error of %r", target)

    def run_once(self, timeout: float | None = 0) -> int:
        """Run callbacks and timers, then one dispatch of at most *timeout* seconds
        (less if a timer is due sooner; ``None``: until something happens).  Returns
        the number of handler calls."""
        self._check_open()
        dispatchvars: dict[str, Any] = {}
        try:
            self.before_dispatch(self.dispatcher, dispatchvars)
        except StopIteration:
            self._stopping = False
            return 0
        wait = dispatchvars["timeout"]
        if timeout is not None and (wait is None or timeout < wait):
            wait = timeout
        return self.dispatcher.dispatch_once(wait, self.error_in_handler)

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Run until :meth:`stop` completes.

        With *handle_signals* (and only in the main thread), SIGINT and SIGTERM start a
        graceful :meth:`stop` while this runs, and a second one aborts what is left;
        the previous handlers and wake-up fd are restored afterwards (see
        :meth:`signal_handling`).
        """
        with self.serving(), contextlib.ExitStack() as stack:
            if handle_signals:
                stack.enter_context(self.signal_handling())
            iterate(
                self.dispatcher,
                timeout=None,
                dispatchvars=self.dispatchvars,
                before_dispatch=self.before_dispatch,
                error_in_handler=self.error_in_handler,
            )

    @contextlib.contextmanager
    def serving(self, *, on_schedule: Callable[[float], object] | None = None) -> Iterator[None]:
        """A context manager: the loop runs in this thread while it is active.

        :meth:`serve_forever` runs :func:`~asycamore.iterate` inside it; a foreign main
        loop (:func:`asycamore.aio.serve`) drives :meth:`before_dispatch`,
        :meth:`error_in_handler` and the dispatcher inside it instead.  While active,
        :attr:`running` is true, :meth:`stop` and :meth:`call_soon_threadsafe` from other
        threads wake the dispatcher, and on exit a stop in progress is reset.

        *on_schedule* is for a loop that waits for the dispatcher's readiness with its own
        deadline: ``on_schedule(when)`` is called, in this thread, whenever something is
        scheduled that the next :meth:`before_dispatch` must handle by *when* on the
        :meth:`time` clock (``-inf``: at once) -- a queued callback, a timer, a stop or a
        close -- so that a wait the loop already started can be cut short.  (Inside a
        dispatch, or from other threads, nothing is missed: the next round, or the wake-up
        socket, sees it.)
        """
        self._check_open()
        if self._running:
            raise RuntimeError("the service is already running")
        self._running = True
        self._thread_id = threading.get_ident()
        self._on_schedule = on_schedule
        self.timers.on_schedule = on_schedule
        try:
            yield
        finally:
            self._on_schedule = None
            self.timers.on_schedule = None
            self._running = False
            self._thread_id = None
            self._stopping = False
            self.stop_reset()

    def stop_reset(self) -> None:
        """The loop stopped running: forget a stop in progress (subclasses)."""

    @contextlib.contextmanager
    def signal_handling(
        self, signals: Iterable[int] = DEFAULT_SIGNALS, *, ignore_afterwards: bool = False
    ) -> Iterator[None]:
        """A context manager: *signals* (SIGINT and SIGTERM) stop the loop while it is
        active; a second one aborts what is left.

        The handlers only note the signal; ``signal.set_wakeup_fd`` points at the
        wake-up socket so a blocked dispatch returns at once (see
        :class:`~asycamore.wakeup.SignalCatcher`, also for *ignore_afterwards*).  Does
        nothing outside the main thread.  :meth:`serve_forever` uses it; enter it
        yourself to cover set-up code that runs before (a signal that arrives then is
        handled when the loop runs), or to choose the signals.
        """
        with self._signals.installed(signals, ignore_afterwards=ignore_afterwards):
            yield

    def _handle_signals(self) -> None:
        pending = self._signals.pending
        while pending:
            signum = pending.pop(0)
            name = signal.Signals(signum).name
            if self._stopping:
                _log.info("%s received again: aborting the remaining connections", name)
                self.abort_remaining(ConnectionAbortedError(f"{name} received twice"))
            else:
                _log.info("%s received: stopping", name)
                self.stop()

    def _schedule_now(self) -> None:
        """Tell a foreign loop waiting with a deadline to run a round at once."""
        if self._on_schedule is not None:
            self._on_schedule(-math.inf)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the service is closed")

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the wake-up socket and the dispatch context if it was created here.
        Idempotent.  Called from a callback or handler while :meth:`serve_forever` runs,
        it also ends the loop after the current round."""
        if self._closed:
            return
        self._closed = True
        if self._disarm_unclosed is not None:
            self._disarm_unclosed()
        with contextlib.suppress(KeyError, ValueError):
            self.dispatcher.unregister(self._waker)
        # Closed from inside serve_forever, the signal handlers are still ours: the
        # wake-up fd must not outlive the socket (its number may be reused at once).
        self._signals.detach_waker()
        self._waker.close()
        if self._owns_dispatcher:
            self.dispatcher.close()
        self._schedule_now()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
