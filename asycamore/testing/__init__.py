"""The conformance kit: every rule of the dispatch contract, as a pytest test class.

A backend author runs the whole kit against their backend with one import and a
three-line subclass in their own pytest suite::

    from asycamore.testing import BackendConformance

    from mypackage import MyDispatcher


    class TestMyDispatcher(BackendConformance):
        backend_class = MyDispatcher

pytest collects the ``test_*`` methods of the subclass (the base class itself is not
collected: its name does not start with ``Test``).  When the backend needs constructor
arguments, override the :meth:`BackendConformance.backend_factory` fixture instead of
setting ``backend_class``.

The kit uses real sockets only (socketpairs and TCP over the loopback interface), the
standard library and pytest; the optional randomized test also needs hypothesis and is
skipped without it.  It expects level-triggered readiness, as every rule is written for.
Tests that wait are bounded: a dispatch that should have returned but still blocks is
interrupted by a watchdog after a few seconds (on the main thread of a POSIX system).

The kit imports pytest, so it is loaded only when one of its names is first used:
importing this package (for :class:`MockClock`, or as the pytest plugin's parent) costs
next to nothing.

The kit is a package of rule groups, one module each (``registration``, ``timeouts``,
``ordering``, ``readiness``, ``handler_errors``, ``lifecycle``, ``forking``, ``model``), which
`BackendConformance` combines; the building blocks live in ``support``.  Import
everything from ``asycamore.testing`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asycamore.lazy import lazy_attributes

from .clock import MockClock

if TYPE_CHECKING:
    from .conformance import BackendConformance, DispatchHung, RecordingTarget, Sockets, deadline

__all__ = [
    "BackendConformance",
    "DispatchHung",
    "MockClock",
    "RecordingTarget",
    "Sockets",
    "deadline",
]

_KIT_NAMES = frozenset(__all__) - {"MockClock"}
__getattr__, __dir__ = lazy_attributes(globals(), _KIT_NAMES, "asycamore.testing.conformance")
