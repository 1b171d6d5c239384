"""asycamore inside a Tk/Tcl main loop.

:func:`iterate` runs :func:`asycamore.iterate`'s rounds from Tk callbacks, and
:func:`serve` a whole :class:`~asycamore.servicemodel.Service`, so a Tk program (or a
plain Tcl interpreter, :func:`tkinter.Tcl`) serves asycamore targets while its own
events keep flowing.  Both return a :class:`Hosting` at once; the rounds run while
Tk's loop does (``mainloop()``, or ``dooneevent()`` for a Tcl interpreter).

How: the readiness descriptor of :class:`asycamore.nesting.Readiness` (the context's
own ``fileno()`` for epoll and kqueue; the helper thread's socket for select and poll)
is watched with ``createfilehandler``, and ``after`` gives each round its timeout (or,
for a backend with neither, the probe intervals).  Handlers run in Tk's thread, inside
``dispatch_once(0)``.  Between two rounds Tk runs its other events (the next round
starts from an ``after(0)``).

``createfilehandler`` exists on Unix only (Tk on Windows has no file events).  As in
every Tk program, call all of this from the thread that runs Tk's loop.
"""

from __future__ import annotations

import contextlib
import math
import time
import tkinter
from collections.abc import Callable, MutableMapping
from typing import Any

from .dispatcher import (
    DispatchCallback,
    ErrorHandler,
    IDispatchContext,
    begin_round,
    end_round,
    prepare_dispatchvars,
)
from .nesting import Readiness, probe_intervals, round_deadline, service_dispatchvars
from .servicemodel import Service

__all__ = ["Hosting", "iterate", "serve"]


def _ms(seconds: float) -> int:
    # Rounded up, as the backends round their timeouts (rule 3).
    return max(0, math.ceil(seconds * 1000))


class Hosting:
    """The rounds of one context, run by Tk callbacks (made by :func:`iterate` and
    :func:`serve`).

    When the loop ends -- ``count`` reached, :class:`StopIteration` from a callback,
    an exception, :meth:`cancel`, the service stopped -- :attr:`done` is set, the Tk
    handlers are removed and ``on_done(hosting)`` is called if it was given.  An
    exception is kept in :attr:`exception`; without *on_done* it is raised again from
    the Tk callback, which Tk reports (``report_callback_exception``).  *cleanup*, if
    given, is called once the loop has ended, before *on_done*.
    """

    def __init__(
        self,
        master: tkinter.Misc,
        dispatcher: IDispatchContext,
        dispatchvars: MutableMapping[str, Any],
        on_done: Callable[[Hosting], object] | None,
        cleanup: Callable[[], object] | None = None,
    ) -> None:
        self.master = master
        """The Tk (or Tcl) object whose loop runs the rounds."""
        self.dispatcher = dispatcher
        """The context."""
        self.dispatchvars = dispatchvars
        """The loop's state, as in :func:`asycamore.iterate`."""
        self.done = False
        """Whether the loop has ended."""
        self.exception: BaseException | None = None
        """What ended the loop, if it was an exception."""
        self._on_done = on_done
        self._cleanup = cleanup
        self._readiness = Readiness(dispatcher)  # refuses a context hosted already
        self._fd = self._readiness.fileno()
        self._after: str | None = None  # the pending after(): next round, deadline, probe
        self._waiting = False  # for the descriptor
        self._in_round = False  # between before_dispatch and after_dispatch
        self._deadline = math.inf
        self._pauses = probe_intervals()
        try:
            if self._fd is not None:
                master.tk.createfilehandler(self._fd, tkinter.READABLE, self._on_readable)
            self._later(0, self._begin)
        except BaseException:
            self._readiness.close()
            raise

    # -- Tk plumbing -------------------------------------------------------------------

    def _later(self, ms: int, step: Callable[[], None]) -> None:
        if self._after is not None:
            self.master.after_cancel(self._after)
        self._after = self.master.after(ms, self._step, step)

    def _step(self, step: Callable[[], None]) -> None:
        self._after = None
        self._guarded(step)

    def _guarded(self, step: Callable[[], None]) -> None:
        if self.done:
            return
        try:
            step()
        except BaseException as exc:
            self._finish(exc)

    def _on_readable(self, fd: int, mask: int) -> None:
        if self._waiting and self._readiness.consume():
            self._guarded(self._attempt)

    # -- the rounds (asycamore.iterate's, with the wait in Tk) ---------------------------

    def _begin(self) -> None:
        if not begin_round(self.dispatcher, self.dispatchvars):
            self._finish(None)
            return
        self._deadline = round_deadline(self.dispatchvars["timeout"], time.monotonic())
        self._pauses = probe_intervals()
        self._in_round = True
        self._later(0, self._attempt)  # other events first, then try to dispatch

    def _wait(self) -> None:
        self._waiting = True
        self._readiness.arm()
        if self._deadline < math.inf:
            self._later(_ms(self._deadline - time.monotonic()), self._attempt)

    def _attempt(self) -> None:
        # The round's first try, the descriptor was readable, the deadline passed or a
        # probe is due.  As in asycamore.aio, a dispatch without a handler call does not
        # end the round (unless the timeout has passed): a busy context is dispatched
        # without waiting, and a stale readiness report is harmless.
        if self._waiting:
            self._waiting = False
            self._readiness.disarm()
        calls = self.dispatcher.dispatch_once(0, self.dispatchvars["error_in_handler"])
        now = time.monotonic()
        if not calls and now < self._deadline:
            if self._fd is not None:
                self._wait()
            else:
                pause = min(next(self._pauses), self._deadline - now)
                self._later(_ms(pause), self._attempt)
            return
        self._in_round = False
        if not end_round(self.dispatcher, self.dispatchvars):
            self._finish(None)
            return
        self._later(0, self._begin)

    def hurry(self, delay: float) -> None:
        """Something must be handled within *delay* seconds (``-inf``: now): a round
        waiting longer ends then.  For :func:`serve`'s schedule hints."""
        if not self._in_round:
            return  # the next round's before_dispatch sees it
        when = time.monotonic() + max(delay, 0.0)
        if when >= self._deadline:
            return
        self._deadline = when
        if self._waiting or self._fd is None:
            self._later(_ms(delay) if delay > 0 else 0, self._attempt)

    # -- the end -----------------------------------------------------------------------

    def cancel(self) -> None:
        """End the loop now, between rounds or during a wait (the context stays usable)."""
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.exception = exc
        if self._after is not None:
            with contextlib.suppress(tkinter.TclError):
                self.master.after_cancel(self._after)
            self._after = None
        if self._fd is not None:
            with contextlib.suppress(tkinter.TclError):
                self.master.tk.deletefilehandler(self._fd)
        self._readiness.close()
        if self._cleanup is not None:
            self._cleanup()
        if self._on_done is not None:
            self._on_done(self)
        elif exc is not None:
            raise exc


def iterate(
    master: tkinter.Misc,
    dispatcher: IDispatchContext,
    timeout: float | None = 30.0,
    count: int = -1,
    dispatchvars: MutableMapping[str, Any] | None = None,
    before_dispatch: DispatchCallback | None = None,
    after_dispatch: DispatchCallback | None = None,
    error_in_handler: ErrorHandler | None = None,
    *,
    on_done: Callable[[Hosting], object] | None = None,
) -> Hosting:
    """Start :func:`asycamore.iterate`'s loop on *dispatcher* in *master*'s Tk loop.

    The arguments after *master* are :func:`asycamore.iterate`'s, with its contract,
    except that a round's dispatch waits in Tk: it happens once the context has
    readiness or *timeout* has passed (``None``: readiness only), as
    ``dispatch_once(0)``.  Returns at once; see :class:`Hosting` for the end.
    """
    dispatchvars = prepare_dispatchvars(
        dispatchvars, timeout, count, before_dispatch, after_dispatch, error_in_handler
    )
    return Hosting(master, dispatcher, dispatchvars, on_done)


def serve(
    master: tkinter.Misc,
    service: Service,
    *,
    on_done: Callable[[Hosting], object] | None = None,
) -> Hosting:
    """Run *service* in *master*'s Tk loop until it stops (or is closed).

    Like :func:`asycamore.aio.serve`: timers, callbacks, idle timeouts and a graceful
    :meth:`~asycamore.servicemodel.Service.stop`, then the :class:`Hosting` is done.
    No signal handler is installed.
    """
    serving = contextlib.ExitStack()
    hosting: Hosting | None = None

    def on_schedule(when: float) -> None:
        if hosting is None:
            return
        if service.closed:
            hosting.cancel()
        else:
            hosting.hurry(-math.inf if when == -math.inf else when - service.time())

    serving.enter_context(service.serving(on_schedule=on_schedule))
    try:
        dispatchvars = service_dispatchvars(service)
        hosting = Hosting(master, service.dispatcher, dispatchvars, on_done, serving.close)
    except BaseException:
        serving.close()
        raise
    return hosting
