"""`DispatchStatistics`: a snapshot of what a dispatch context has done.

A module of its own, imported on first use (``asycamore.DispatchStatistics``): the
dataclass machinery is not worth its import time to a program that never asks.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DispatchStatistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchStatistics:
    """What a dispatch context has done since it was created, as
    :meth:`DispatcherBase.statistics() <asycamore.backends.base.DispatcherBase.statistics>`
    returns it: a frozen snapshot, which later dispatches do not change.

    The counters are kept in every mode.  The two times and `slowest_handler` are
    measured in debug mode only (see :doc:`observing`): timing every round would cost
    more than the counters' budget, so outside debug mode they stay ``0.0`` and
    ``None``.
    """

    rounds: int
    """How many times ``dispatch_once`` waited for readiness (calls that raised before
    waiting -- on a closed context, say -- are not rounds)."""
    events: int
    """How many readiness reports the OS waits delivered: one per ready target per
    round, whether it then ran one handler, two (read and write) or none (a report gone
    stale, rule 4)."""
    handler_calls: int
    """How many times a handler (``handle_read_event``/``handle_write_event``) was
    called, those that raised included."""
    handler_errors: int
    """How many handler calls raised an :class:`Exception` (and so took the error path,
    rule 7)."""
    time_waiting: float
    """Seconds spent in the OS wait (debug mode only; ``0.0`` otherwise)."""
    time_dispatching: float
    """Seconds spent calling handlers, from the end of each wait to the end of its
    round (debug mode only; ``0.0`` otherwise)."""
    registered: int
    """How many targets are registered now."""
    slowest_handler: tuple[float, str, str] | None
    """``(seconds, repr(target), handler_name)`` of the slowest handler call debug mode
    has timed, ``handler_name`` being ``"handle_read_event"`` or
    ``"handle_write_event"``; ``None`` until debug mode times one."""
