"""asyncio and asycamore, both ways.

**asycamore inside asyncio.**  :func:`iterate` is :func:`asycamore.iterate` driven by the
running asyncio loop, and :func:`serve` runs a whole
:class:`~asycamore.servicemodel.Service` on it.  A round's dispatch happens once the
context has readiness or the round's timeout has passed; between rounds the loop runs
its other tasks.  The loop learns about readiness through
:class:`asycamore.nesting.Readiness`: the context's own ``fileno()`` (epoll, kqueue: no
thread), a helper thread that only waits (select, poll), or timed probes (a backend with
neither).  Handlers always run in the loop's thread, inside ``dispatch_once(0)``.

**asyncio on asycamore.**  :func:`new_event_loop`, :func:`run` and
:class:`EventLoopPolicy` make :class:`asyncio.SelectorEventLoop`\\ s whose selector is a
:class:`~asycamore.selector.DispatchSelector`: every asyncio program can run on any
installed backend, third-party plugins included.

Signals: inside asyncio the host loop owns signal handling and
:func:`signal.set_wakeup_fd`.  :func:`serve` installs no signal handler; stop the
service from the loop's own handler, for example
``loop.add_signal_handler(signal.SIGTERM, service.stop)``.

After :func:`os.fork`, asyncio loops and asycamore contexts made before the fork belong
to the parent: the child makes its own (a ``"thread"``-mode helper thread does not exist
in the child, and an epoll set is shared with the parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Callable, Coroutine, Iterable, Iterator, MutableMapping
from typing import Any, TypeVar

from .dispatcher import (
    DispatchCallback,
    ErrorHandler,
    IDispatchContext,
    begin_round,
    end_round,
    prepare_dispatchvars,
)
from .factory import list_backends
from .nesting import Readiness, probe_intervals, round_deadline, service_dispatchvars
from .selector import DispatchSelector
from .servicemodel import Service

__all__ = [
    "EventLoopPolicy",
    "iterate",
    "limit_loop_factories",
    "loop_factories",
    "new_event_loop",
    "run",
    "serve",
]

_T = TypeVar("_T")


class _Host:
    """One context hosted by the running asyncio loop: the waits between rounds.

    A wait is a future that the readiness descriptor, the round's deadline or
    :meth:`hurry` completes.  A busy round dispatches without waiting, so the waits --
    and the loop's reader on the descriptor -- only come in when the context is idle.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, dispatcher: IDispatchContext) -> None:
        self._loop = loop
        self._dispatcher = dispatcher
        self._readiness = Readiness(dispatcher)  # refuses a context hosted already
        self._fd = self._readiness.fileno()
        self._waiting: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf  # loop time the current round may wait until
        self.finished = False
        """Set by :meth:`finish`: the hosting ends without another dispatch."""
        # "fileno" mode watches the context's descriptor only while a round waits: it
        # stays readable while the context is busy, and a busy round never waits, so
        # keeping it watched would cost a no-op callback on every turn of the loop.
        # The helper thread's socket ("thread" mode) is only signalled during a wait.
        self._watch_per_wait = self._readiness.mode == "fileno"
        self._watched = False
        try:
            if self._fd is not None and not self._watch_per_wait:
                loop.add_reader(self._fd, self._on_readable)
                self._watched = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._watched:
            self._unwatch()
        self._fd = None
        self._readiness.close()

    # -- waiting ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done() and self._readiness.consume():
            waiting.set_result(True)

    def _on_deadline(self) -> None:
        self._timer = None
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(False)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when < math.inf:
            self._timer = self._loop.call_at(when, self._on_deadline)

    def _unwatch(self) -> None:
        self._watched = False
        # The loop may be closed already (shutdown in that order): nothing to remove.
        if self._fd is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                self._loop.remove_reader(self._fd)

    async def _wait(self, until: float) -> bool:
        """Wait for readiness (if there is a descriptor) until loop time *until*."""
        waiting = self._waiting = self._loop.create_future()
        self._set_timer(until)
        if self._fd is not None and not self._watched:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watched = True
        self._readiness.arm()
        ready = False
        try:
            ready = bool(await waiting)
        finally:
            self._waiting = None
            self._set_timer(math.inf)
            if not ready:
                self._readiness.disarm()
            if self._watch_per_wait and self._watched:
                self._unwatch()
        return ready

    def hurry(self, delay: float) -> None:
        """Something must be handled within *delay* seconds: a round waiting longer
        ends then (``-inf``: at once).  For :func:`serve`'s schedule hints."""
        when = -math.inf if delay == -math.inf else self._loop.time() + delay
        if when >= self._deadline:
            return
        self._deadline = when
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            if when <= self._loop.time():
                waiting.set_result(False)
            else:
                self._set_timer(when)

    def finish(self) -> None:
        """End the hosting now, without dispatching again (the context is gone)."""
        self.finished = True
        self.hurry(-math.inf)

    # -- one round ---------------------------------------------------------------------

    async def round(self, dispatchvars: MutableMapping[str, Any]) -> None:
        """Wait as ``dispatch_once(dispatchvars["timeout"])`` would, and dispatch."""
        loop = self._loop
        dispatcher = self._dispatcher
        self._deadline = round_deadline(dispatchvars["timeout"], loop.time())
        pauses = probe_intervals() if self._fd is None else None
        await asyncio.sleep(0)  # other tasks run between rounds
        # A dispatch that makes no handler call is invisible to the caller, so it does
        # not end the round (unless the timeout has passed).  That lets a round try
        # ``dispatch_once(0)`` before waiting -- when the context is busy it is ready
        # already, and waiting for the descriptor would cost a turn of the loop -- and
        # makes a stale readiness report harmless (asyncio may have collected it before
        # the previous round consumed the readiness).  In "probe" mode finding nothing
        # is the normal case.
        while not self.finished:
            if dispatcher.dispatch_once(0, dispatchvars["error_in_handler"]):
                return
            if loop.time() >= self._deadline:
                return
            if pauses is None:
                await self._wait(self._deadline)
            else:
                await self._wait(min(self._deadline, loop.time() + next(pauses)))


@contextlib.contextmanager
def _hosting(dispatcher: IDispatchContext) -> Iterator[_Host]:
    host = _Host(asyncio.get_running_loop(), dispatcher)
    try:
        yield host
    finally:
        host.close()


async def _iterate(
    host: _Host, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
) -> None:
    # asycamore.iterate's rounds, with the wait moved out of dispatch_once into the loop.
    while begin_round(dispatcher, dispatchvars):
        await host.round(dispatchvars)
        if host.finished or not end_round(dispatcher, dispatchvars):
            return


async def iterate(
    dispatcher: IDispatchContext,
    timeout: float | None = 30.0,
    count: int = -1,
    dispatchvars: MutableMapping[str, Any] | None = None,
    before_dispatch: DispatchCallback | None = None,
    after_dispatch: DispatchCallback | None = None,
    error_in_handler: ErrorHandler | None = None,
) -> None:
    """:func:`asycamore.iterate`, driven by the running asyncio loop.

    The contract is :func:`asycamore.iterate`'s to the letter -- *dispatchvars* used in
    place, callbacks, ``count``, ``timeout`` and ``error_in_handler`` re-read every
    round, :class:`StopIteration` from a callback ends the loop normally -- except that
    a round's ``dispatch_once(timeout, error_in_handler)`` is split: the task waits
    (letting the loop run other tasks) until the context has readiness or *timeout*
    has passed (``None``: readiness only; ``<= 0``: just a turn of the loop), then
    calls ``dispatch_once(0, error_in_handler)`` in the loop's thread.

    Cancelling the awaiting task ends the loop between rounds (or during a wait) and
    leaves the context usable.  (As from any coroutine, a :class:`StopIteration` that
    escapes ``dispatch_once`` -- from an *error_in_handler* -- surfaces as
    :class:`RuntimeError`; from the callbacks it ends the loop, as documented.)

    A context can be hosted by one :func:`iterate` or :func:`serve` at a time
    (:class:`RuntimeError` otherwise, also for a handler that tries to start one on its
    own context).
    """
    dispatchvars = prepare_dispatchvars(
        dispatchvars, timeout, count, before_dispatch, after_dispatch, error_in_handler
    )
    with _hosting(dispatcher) as host:
        await _iterate(host, dispatcher, dispatchvars)


async def serve(service: Service) -> None:
    """Run *service* in the running asyncio loop until it stops.

    What :meth:`Service.serve_forever <asycamore.servicemodel.Service.serve_forever>`
    does, as an asyncio task: timers, callbacks (also
    :meth:`~asycamore.servicemodel.Service.call_soon_threadsafe` from other threads),
    idle timeouts, and a graceful :meth:`~asycamore.servicemodel.Service.stop` (from
    anywhere), after which this returns.  It also returns if the service is closed.

    Callbacks and timers scheduled from the loop's other tasks are seen at once: the
    service tells the waiting round to end sooner
    (:meth:`~asycamore.servicemodel.Service.serving`'s *on_schedule*).  No signal
    handler is installed: the asyncio loop owns signals (use
    ``loop.add_signal_handler(signal.SIGINT, service.stop)``).
    """
    dispatcher = service.dispatcher
    with _hosting(dispatcher) as host:

        def on_schedule(when: float) -> None:
            if service.closed:
                host.finish()
            else:
                host.hurry(-math.inf if when == -math.inf else when - service.time())

        with service.serving(on_schedule=on_schedule):
            await _iterate(host, dispatcher, service_dispatchvars(service))


# -- asyncio on asycamore ---------------------------------------------------------------


def new_event_loop(backend: str | None = None) -> asyncio.AbstractEventLoop:
    """A new :class:`asyncio.SelectorEventLoop` over a
    :class:`~asycamore.selector.DispatchSelector` of *backend* (default:
    ``$ASYCAMORE_BACKEND`` or the best backend here).  Closing the loop closes the
    context."""
    return asyncio.SelectorEventLoop(DispatchSelector(backend))


# The backends loop_factories() offers when the pytest plugin's --asycamore-backend
# narrowed them (None: every available one).
_factory_backends: tuple[str, ...] | None = None


def loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """One asyncio loop factory per available backend, keyed by the backend's name:
    ``factory()`` is :func:`new_event_loop` of that backend.

    What pytest-asyncio's ``pytest_asyncio_loop_factories`` hook returns, and what
    anyio's ``loop_factory`` option takes, to run asyncio tests on every asycamore
    backend (see :doc:`/testing`).  Narrowed by :func:`limit_loop_factories`, which the
    pytest plugin's ``--asycamore-backend`` calls.
    """
    names = _factory_backends
    if names is None:
        names = tuple(info.name for info in list_backends() if info.available)
    return {name: functools.partial(new_event_loop, name) for name in names}


def limit_loop_factories(names: Iterable[str] | None) -> None:
    """Make :func:`loop_factories` offer only the available backends among *names*
    (``None``: every available backend again)."""
    global _factory_backends
    if names is None:
        _factory_backends = None
        return
    available = {info.name for info in list_backends() if info.available}
    _factory_backends = tuple(dict.fromkeys(name for name in names if name in available))


def run(
    main: Coroutine[Any, Any, _T], *, backend: str | None = None, debug: bool | None = None
) -> _T:
    """Like :func:`asyncio.run`, on a loop from :func:`new_event_loop` (*backend*)."""

    def loop_factory() -> asyncio.AbstractEventLoop:
        return new_event_loop(backend)

    with asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An asyncio event-loop policy whose loops come from :func:`new_event_loop`.

    ``asyncio.set_event_loop_policy(asycamore.aio.EventLoopPolicy("poll"))`` makes
    :func:`asyncio.run` and :func:`asyncio.new_event_loop` use asycamore.  asyncio
    deprecates policies from Python 3.14: :func:`run` and :func:`new_event_loop` are the
    lasting API.
    """

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        """The backend name given to :func:`new_event_loop` (``None``: the default)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new loop from :func:`new_event_loop` (:attr:`backend`)."""
        return new_event_loop(self.backend)
