"""The dispatch API: readiness events, the target and context protocols, and `iterate`.

A *dispatch target* is anything with a file descriptor and two handlers; a *dispatch
context* is a backend that watches targets' descriptors and calls those handlers when the
OS says they are ready.  `iterate` is the reference main loop built on a context; service
models and client programs run their own logic between dispatches through its
``before_dispatch`` / ``after_dispatch`` callbacks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol, Self, runtime_checkable

__all__ = [
    "DispatchCallback",
    "ErrorHandler",
    "Events",
    "IDispatchContext",
    "IDispatchTarget",
    "begin_round",
    "close_on_error",
    "end_round",
    "given_or_created",
    "iterate",
    "prepare_dispatchvars",
]


class Events(enum.IntFlag):
    """The readiness a target is interested in, or that a descriptor reports."""

    NONE = 0
    """No interest: the target stays registered but receives nothing, not even hang-ups."""
    READ = 1
    """The descriptor is readable (data, a pending connection, EOF or an error)."""
    WRITE = 2
    """The descriptor is writable (buffer space, a finished connect, or an error)."""


@runtime_checkable
class IDispatchTarget(Protocol):
    """The minimal state of a dispatch target: a descriptor and two event handlers."""

    def fileno(self) -> int:
        """Return the file descriptor the context should watch."""
        ...

    def handle_read_event(self) -> None:
        """Called when the descriptor is readable (or has hung up or failed)."""
        ...

    def handle_write_event(self) -> None:
        """Called when the descriptor is writable (or has hung up or failed)."""
        ...


ErrorHandler = Callable[[IDispatchTarget, Exception], object]
"""``error_in_handler(target, exc)``: called when a target's handler raises."""


@runtime_checkable
class IDispatchContext(Protocol):
    """A dispatch context: watches targets and calls their handlers when they are ready.

    Every backend, built-in or third-party, implements this protocol and obeys the rules
    of the :doc:`contract </concepts>`; :mod:`asycamore.testing` checks them.
    """

    # A read-only member, so that a backend's class attribute (``name: ClassVar[str]``,
    # as every backend has) satisfies it as well as an instance attribute does.
    @property
    def name(self) -> str:
        """The backend's name, for example ``"epoll"``."""
        ...

    def register(self, target: IDispatchTarget, events: Events = Events.READ) -> None:
        """Start watching *target* for *events*.

        Raises :class:`KeyError` if the target, or another target on the same descriptor,
        is already registered, and :class:`ValueError` for events outside
        ``READ | WRITE`` or a negative descriptor.
        """
        ...

    def modify(self, target: IDispatchTarget, events: Events) -> None:
        """Change the events a registered *target* is watched for (:class:`KeyError` if
        it is not registered)."""
        ...

    def unregister(self, target: IDispatchTarget) -> None:
        """Stop watching *target*; works even when its descriptor is already closed
        (:class:`KeyError` if it is not registered)."""
        ...

    def dispatch_once(
        self, timeout: float | None = None, error_in_handler: ErrorHandler | None = None
    ) -> int:
        """Wait up to *timeout* seconds for readiness and call the ready handlers.

        ``None`` blocks until something is ready, ``<= 0`` polls without blocking.
        Returns the number of handler calls made.
        """
        ...

    def close(self) -> None:
        """Release the OS resources of the context.  Idempotent."""
        ...

    def __contains__(self, target: object) -> bool:
        """Whether *target* is registered."""
        ...

    def __len__(self) -> int:
        """The number of registered targets."""
        ...

    def __enter__(self) -> Self:
        """Return the context itself."""
        ...

    def __exit__(self, *exc_info: object) -> None:
        """Close the context."""
        ...


def close_on_error(dispatcher: IDispatchContext, target: IDispatchTarget, exc: Exception) -> None:
    """The default error policy of rule 7, for a *target* whose handler raised *exc*.

    Logs the traceback on logger ``"asycamore"``, unregisters the target if it is still
    registered in *dispatcher* and calls its ``close()`` if it has one (an error there is
    logged too).  Backends apply it when ``dispatch_once`` gets no ``error_in_handler``;
    an ``error_in_handler`` of one's own can fall back on it.
    """
    # Imported here: this is an error path, and logging costs `import asycamore` 10 ms.
    import logging

    _log = logging.getLogger("asycamore")
    _log.error("unhandled error in a handler of %r", target, exc_info=exc)
    if target in dispatcher:
        dispatcher.unregister(target)
    close = getattr(target, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            _log.exception("error closing %r after a handler error", target)


DispatchCallback = Callable[[IDispatchContext, MutableMapping[str, Any]], object]
"""``before_dispatch(dispatcher, dispatchvars)`` / ``after_dispatch(...)``."""


def iterate(
    dispatcher: IDispatchContext,
    timeout: float | None = 30.0,
    count: int = -1,
    dispatchvars: MutableMapping[str, Any] | None = None,
    before_dispatch: DispatchCallback | None = None,
    after_dispatch: DispatchCallback | None = None,
    error_in_handler: ErrorHandler | None = None,
) -> None:
    """Run *dispatcher* in a loop: the reference main loop.

    *dispatchvars* is the loop's shared state: the caller's own mapping, mutated in place,
    or a new dict.  ``before_dispatch``, ``after_dispatch``, ``count``, ``timeout`` and
    ``error_in_handler`` are stored into it at the start and re-read from it every round,
    so a callback can replace or disable a callback, change the timeout, or set
    ``count = N`` to end the loop after *N* further dispatches.

    Each round:

    1. ``before_dispatch(dispatcher, dispatchvars)``, if set;
    2. if ``dispatchvars["count"] == 0``, stop (without dispatching);
    3. ``dispatcher.dispatch_once(timeout, error_in_handler)``;
    4. if ``count > 0``, decrement ``dispatchvars["count"]``;
    5. ``after_dispatch(dispatcher, dispatchvars)``, if set.

    A negative count loops forever.  :class:`StopIteration` raised by either callback ends
    the loop at once, normally; any other exception propagates.

    *count* must be an :class:`int` (an ``int`` subclass counts as its value), and so must
    every value a callback stores as ``dispatchvars["count"]``: anything else -- ``1.5``
    would never reach 0, NaN never compares, and ``True`` is no count anyone means --
    raises :class:`TypeError`, at the call (before anything runs or is stored) or at the
    round that reads it.
    """
    dispatchvars = prepare_dispatchvars(
        dispatchvars, timeout, count, before_dispatch, after_dispatch, error_in_handler
    )
    # The loop is begin_round, dispatch_once and end_round written out inline: it runs
    # once per dispatch, and built from those calls it cost 31 % more instructions per
    # dispatch of one event (15,335 against 11,688 in benchmarks/instructions.py).
    # tests/test_iterate.py holds both forms to one model.  Only the callbacks'
    # StopIteration is the documented stop signal; one escaping dispatch_once (from an
    # error_in_handler, say) is an ordinary error.  The callbacks are read by subscript,
    # not .get(): a method call less each, each round (200 instructions a dispatch); a
    # key a callback deleted still reads as None, as .get() in _run_callback reads it.
    while True:
        try:
            callback = dispatchvars["before_dispatch"]
        except KeyError:
            callback = None
        if callback is not None:
            try:
                callback(dispatcher, dispatchvars)
            except StopIteration:
                return
        count = dispatchvars["count"]
        if count.__class__ is not int:
            _check_count(count)
        if count == 0:
            return
        dispatcher.dispatch_once(dispatchvars["timeout"], dispatchvars["error_in_handler"])
        count = dispatchvars["count"]  # a handler may have changed it meanwhile
        if count.__class__ is not int:
            _check_count(count)
        if count > 0:
            dispatchvars["count"] = count - 1
        try:
            callback = dispatchvars["after_dispatch"]
        except KeyError:
            callback = None
        if callback is not None:
            try:
                callback(dispatcher, dispatchvars)
            except StopIteration:
                return


# -- iterate's steps, for a loop that cannot block in dispatch_once ------------------------
#
# A foreign main loop (asycamore.aio, asycamore.tk) waits in its own way between the two
# halves of a round, so it cannot call iterate; these are iterate's semantics in the
# pieces such a host needs.  A round is:
#
#     if begin_round(dispatcher, dispatchvars):
#         ... wait, then dispatch_once(..., dispatchvars["error_in_handler"]) ...
#         go_on = end_round(dispatcher, dispatchvars)


def prepare_dispatchvars(
    dispatchvars: MutableMapping[str, Any] | None,
    timeout: float | None,
    count: int,
    before_dispatch: DispatchCallback | None,
    after_dispatch: DispatchCallback | None,
    error_in_handler: ErrorHandler | None,
) -> MutableMapping[str, Any]:
    """The start of `iterate`: *dispatchvars* (a new dict if ``None``) with the loop's
    five keys stored in it, the caller's other keys kept.

    *count* is checked first, as `iterate` checks it (:class:`TypeError` before anything
    is stored).
    """
    _check_count(count)
    if dispatchvars is None:
        dispatchvars = {}
    dispatchvars["before_dispatch"] = before_dispatch
    dispatchvars["after_dispatch"] = after_dispatch
    dispatchvars["count"] = count
    dispatchvars["timeout"] = timeout
    dispatchvars["error_in_handler"] = error_in_handler
    return dispatchvars


def _run_callback(
    key: str, dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]
) -> bool:
    """Call ``dispatchvars[key]`` if it is set; ``False`` if it raised StopIteration."""
    callback = dispatchvars.get(key)
    if callback is not None:
        try:
            callback(dispatcher, dispatchvars)
        except StopIteration:
            return False
    return True


def _current_count(dispatchvars: MutableMapping[str, Any]) -> int:
    count: int = dispatchvars["count"]
    if count.__class__ is not int:
        _check_count(count)
    return count


def begin_round(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> bool:
    """Steps 1 and 2 of an `iterate` round: ``before_dispatch``, then whether to dispatch.

    ``False`` ends the loop: the callback raised :class:`StopIteration`, or
    ``dispatchvars["count"]`` is 0.  (:class:`TypeError` for a count that is not an
    int, as in `iterate`.)
    """
    return _run_callback("before_dispatch", dispatcher, dispatchvars) and (
        _current_count(dispatchvars) != 0
    )


def end_round(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> bool:
    """Steps 4 and 5 of an `iterate` round, after its dispatch: the count goes down
    (if positive), then ``after_dispatch``; ``False`` if that raised StopIteration."""
    count = _current_count(dispatchvars)
    if count > 0:
        dispatchvars["count"] = count - 1
    return _run_callback("after_dispatch", dispatcher, dispatchvars)


def _check_count(count: object) -> None:
    """Refuse a loop count that is not an int, or is a bool (see `iterate`)."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int (negative: loop forever), not {count!r}")


def given_or_created(
    backend: str | None, dispatcher: IDispatchContext | None, debug: bool | None = None
) -> tuple[IDispatchContext, bool]:
    """``(context, owned)``: *dispatcher* if given (the caller's, not ours to close),
    else a new one from :func:`~asycamore.create_dispatcher` for *backend* (ours), in
    debug mode if *debug* says so (``None``: as the environment says).

    For the classes that take ``backend=`` or ``dispatcher=``; the factory, with its
    metadata scan, is imported only when a context must be made.
    """
    if dispatcher is not None:
        return dispatcher, False
    from .factory import create_dispatcher

    if debug is None:
        return create_dispatcher(backend), True
    return create_dispatcher(backend, debug=debug), True
