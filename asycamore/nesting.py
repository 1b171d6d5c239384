"""Waiting for a dispatch context's readiness from a foreign main loop.

A foreign loop (asyncio, Tk, GLib, Qt) can watch descriptors and run timers, but only
the context knows which of *its* descriptors are ready.  :class:`Readiness` gives the
foreign loop one descriptor to watch that becomes readable when the context has
readiness -- ``dispatch_once(0)`` would find a target ready -- so the loop can run a
round of :func:`~asycamore.iterate` then, in its own thread, and sleep otherwise.

There are three ways to get such a descriptor, tried in this order:

``"fileno"``
    The context has ``fileno()`` (epoll, kqueue): the kernel keeps that descriptor
    readable while any registered descriptor is ready.  No thread, no extra system call.

``"thread"``
    The context has ``interest()`` and ``watch_interest()`` (every built-in backend
    does; select and poll get here).  While the foreign loop waits (between
    :meth:`Readiness.arm` and the next :meth:`Readiness.disarm`), a helper thread
    blocks in :func:`select.poll` over a snapshot of the context's interest, taken in
    the loop's thread, and writes one byte to a socket pair when a descriptor is ready.
    The thread never calls the context and never runs a handler; it only *sees*
    readiness, so handlers run in the loop's thread, and an idle context costs a
    blocked thread and no CPU.  When the interest changes while the thread waits
    (another task of the foreign loop registers a target or asks to write), the
    context's watcher makes the thread give up its stale wait and the next
    :meth:`Readiness.consume` says "wait again" (``False``), after a fresh snapshot.

``"probe"``
    The context has neither (a third-party backend written against the bare protocol).
    Its readiness can then only be learned by ``dispatch_once(0)``, which also runs the
    handlers, so a host can only *probe* it from time to time: :attr:`Readiness.mode` is
    ``"probe"``, :meth:`fileno` is ``None``, and the host calls ``dispatch_once(0)`` at
    the intervals of :func:`probe_intervals` (1 ms, doubling up to 50 ms while nothing
    happens).  That costs a few wake-ups per second and up to 50 ms of latency: give
    such a backend a ``fileno()`` (or ``interest()``) to do better.

Why no thread runs ``dispatch_once`` itself: it would run the targets' handlers in that
thread, racing every other callback of the foreign loop.  The helper thread of
``"thread"`` mode waits over its own poll object, so it never touches the context's
state, and the context is usable again as soon as the host stops waiting.

The rest of a host's round is :func:`~asycamore.iterate`'s, in the steps of
:mod:`asycamore.dispatcher` (``begin_round``, ``end_round``); :func:`round_deadline`
and :func:`service_dispatchvars` are the other pieces every host needs.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import threading
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal

from .dispatcher import Events, IDispatchContext, prepare_dispatchvars

if TYPE_CHECKING:
    from .servicemodel import Service

__all__ = [
    "PROBE_MAX_INTERVAL",
    "Readiness",
    "probe_intervals",
    "round_deadline",
    "service_dispatchvars",
]

PROBE_MAX_INTERVAL: Final = 0.05
"""The longest pause between two probes of a ``"probe"``-mode context, in seconds."""

_POLLIN: Final = getattr(select, "POLLIN", 1)
_POLLOUT: Final = getattr(select, "POLLOUT", 4)
_TO_POLL: Final = (0, _POLLIN, _POLLOUT, _POLLIN | _POLLOUT)


# The contexts with an open Readiness (by id).  Two hosts of one context would dispatch
# it from two places, and a handler that starts a host on its own context would
# re-enter dispatch_once.
_hosted: set[int] = set()


def probe_intervals() -> Iterator[float]:
    """The pauses between probes of a ``"probe"``-mode context: 1 ms, doubling to
    :data:`PROBE_MAX_INTERVAL`, then that forever.  Start a new one after activity."""
    interval = 0.001
    while True:
        yield interval
        interval = min(interval * 2, PROBE_MAX_INTERVAL)


def round_deadline(timeout: float | None, now: float) -> float:
    """When a host's round ends if the context has no readiness: *timeout* seconds
    after *now*, on the host's clock.

    As ``dispatch_once(timeout)`` waits: ``inf`` for ``None`` (readiness only), *now*
    for ``timeout <= 0`` (one try, no wait), and :class:`ValueError` for NaN.
    """
    if timeout is None:
        return math.inf
    if math.isnan(timeout):
        raise ValueError("timeout is NaN")
    return now + max(timeout, 0.0)


def service_dispatchvars(service: Service) -> MutableMapping[str, Any]:
    """*service*'s ``dispatchvars``, set for a host's rounds as
    :meth:`~asycamore.servicemodel.Service.serve_forever` sets them for
    :func:`~asycamore.iterate` (no count, no timeout of its own: the service's
    ``before_dispatch`` sets each round's).

    Its ``before_dispatch`` also ends the loop, before it runs anything, when the
    service was closed between two rounds: a host runs other code there (its tasks, its
    callbacks), which may close the service.
    """

    def before_dispatch(
        dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
    ) -> None:
        if service.closed:
            raise StopIteration
        service.before_dispatch(dispatcher, dispatchvars)

    return prepare_dispatchvars(
        service.dispatchvars, None, -1, before_dispatch, None, service.error_in_handler
    )


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass


class Readiness:
    """One descriptor a foreign loop watches to learn when *dispatcher* is ready.

    Use it in the foreign loop's thread only:

    1. :meth:`arm` before the loop starts waiting for a round;
    2. when :meth:`fileno` is readable, :meth:`consume`: ``True`` means dispatch now
       (``dispatch_once(0)``); ``False`` means keep waiting (it has re-armed itself);
    3. :meth:`disarm` when the wait ends any other way (the round's timeout, a
       cancellation), before dispatching;
    4. :meth:`close` when done.  It leaves the context as it found it.

    A context has one :class:`Readiness` at a time (:class:`RuntimeError` otherwise):
    that is how every host refuses to host a context twice, or to be started from one
    of the context's own handlers.

    For a ``"fileno"`` context all but :meth:`fileno` are no-ops.
    """

    mode: Literal["fileno", "thread", "probe"]
    """How readiness is learned (see the module docstring)."""

    def __init__(self, dispatcher: IDispatchContext) -> None:
        if id(dispatcher) in _hosted:
            raise RuntimeError(
                f"{dispatcher!r} is already hosted by a foreign loop (asycamore.aio, "
                "asycamore.tk): one host at a time, and a handler may not start another "
                "on its own context"
            )
        self.dispatcher = dispatcher
        """The context watched."""
        self._waiter: _Waiter | None = None
        self._closed = False
        fileno = getattr(dispatcher, "fileno", None)
        if callable(fileno):
            self.mode = "fileno"
            self._fileno: int | None = int(fileno())
        elif callable(getattr(dispatcher, "interest", None)) and callable(
            getattr(dispatcher, "watch_interest", None)
        ):
            self.mode = "thread"
            self._waiter = _Waiter(dispatcher)
            self._fileno = self._waiter.fileno()
        else:
            self.mode = "probe"
            self._fileno = None
        _hosted.add(id(dispatcher))

    def fileno(self) -> int | None:
        """The descriptor to watch for reading, or ``None`` in ``"probe"`` mode."""
        return self._fileno

    def arm(self) -> None:
        """The host is about to wait for a round: start watching."""
        if self._waiter is not None:
            self._waiter.arm()

    def consume(self) -> bool:
        """:meth:`fileno` was readable: ``True`` to dispatch now, ``False`` to keep
        waiting (a stale wait was renewed)."""
        if self._waiter is None:
            return True
        return self._waiter.consume()

    def disarm(self) -> None:
        """The host stopped waiting without readiness (timeout, cancel)."""
        if self._waiter is not None:
            self._waiter.disarm()

    def close(self) -> None:
        """Stop the helper thread (joined) and close its sockets.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        _hosted.discard(id(self.dispatcher))

    def __enter__(self) -> Readiness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Readiness {self.mode} {self.dispatcher!r}>"


class _Waiter:
    """The helper thread of ``"thread"`` mode and its hand-over state.

    Every hand-over goes through ``_cond``.  ``_generation`` numbers the waits: the
    thread reports readiness only for the wait it was given, so a report that crosses a
    disarm or re-arm is dropped instead of starting a spurious round.
    """

    def __init__(self, dispatcher: IDispatchContext) -> None:
        self._dispatcher = dispatcher
        # The host watches _signal_r; the thread writes _signal_w.  _control_* interrupt
        # the thread's poll when its snapshot goes stale or the host stops waiting.
        self._signal_r, self._signal_w = socket.socketpair()
        self._control_r, self._control_w = socket.socketpair()
        for sock in (self._signal_r, self._signal_w, self._control_r, self._control_w):
            sock.setblocking(False)
        self._cond = threading.Condition()
        self._snapshot: dict[int, Events] | None = None  # a wait handed to the thread
        self._generation = 0
        self._polling = False  # the thread is inside poll()
        self._found = False  # readiness reported for the current generation
        self._armed = False
        self._stale = False  # the interest changed during this wait
        self._closing = False
        self._thread: threading.Thread | None = None
        dispatcher.watch_interest(self._interest_changed)  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return self._signal_r.fileno()

    def _interrupt(self) -> None:
        # Called with _cond held.  A full buffer means an interrupt is already pending.
        if self._polling:
            with contextlib.suppress(OSError):
                self._control_w.send(b"\0")

    def arm(self) -> None:
        snapshot = self._dispatcher.interest()  # type: ignore[attr-defined]
        with self._cond:
            self._generation += 1
            self._snapshot = snapshot
            self._armed = True
            self._stale = False
            self._found = False
            self._interrupt()
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"asycamore-readiness-{self._dispatcher.name}", daemon=True
            )
            self._thread.start()

    def disarm(self) -> None:
        with self._cond:
            self._generation += 1
            self._snapshot = None
            self._armed = False
            self._found = False
            self._interrupt()
        _drain(self._signal_r)

    def consume(self) -> bool:
        _drain(self._signal_r)
        with self._cond:
            found, self._found = self._found, False
            if found:
                self._armed = False
                return True
            stale = self._stale
        if stale or self._armed:
            self.arm()
        return False

    def _interest_changed(self) -> None:
        # In the host's thread, inside register/modify/unregister.  Only a wait in
        # progress can go stale; the snapshot is retaken once, by consume(), however many
        # changes a burst makes.
        if not self._armed or self._stale:
            return
        with self._cond:
            self._stale = True
            self._interrupt()
            if not self._polling:
                # The thread has not picked the wait up yet: it will poll the old
                # snapshot, so make that report at once.
                self._found = False
                self._signal()

    def _signal(self) -> None:
        with contextlib.suppress(OSError):
            self._signal_w.send(b"\0")

    def _run(self) -> None:
        control = self._control_r.fileno()
        while True:
            with self._cond:
                while self._snapshot is None and not self._closing:
                    self._cond.wait()
                snapshot = self._snapshot
                if self._closing or snapshot is None:
                    return
                self._snapshot = None
                generation = self._generation
                self._polling = True
            poller = select.poll()
            poller.register(control, _POLLIN)
            for fd, events in snapshot.items():
                poller.register(fd, _TO_POLL[events])
            reports = poller.poll()
            with self._cond:
                self._polling = False
                _drain(self._control_r)
                current = generation == self._generation and self._armed
                if current and any(fd != control for fd, _ in reports):
                    self._found = True
                    self._signal()
                elif current and self._stale:
                    self._signal()  # consume() renews the wait

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._generation += 1
            self._interrupt()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(Exception):
            self._dispatcher.watch_interest(None)  # type: ignore[attr-defined]
        for sock in (self._signal_r, self._signal_w, self._control_r, self._control_w):
            sock.close()
