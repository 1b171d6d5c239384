"""`BackendConformance`: every rule group of the kit, in one pytest class."""

from __future__ import annotations

from .forking import ForkRules
from .handler_errors import HandlerErrorRules
from .lifecycle import LifecycleRules
from .model import ModelRules
from .ordering import OrderingRules
from .readiness import ReadinessRules
from .registration import RegistrationRules
from .statistics import StatisticsRules
from .support import DispatchHung, RecordingTarget, Sockets, deadline
from .timeouts import TimeoutRules

# The kit's building blocks are offered here too: asycamore.testing loads them all from
# this one module, on first use.
__all__ = ["BackendConformance", "DispatchHung", "RecordingTarget", "Sockets", "deadline"]


class BackendConformance(
    RegistrationRules,
    TimeoutRules,
    OrderingRules,
    ReadinessRules,
    HandlerErrorRules,
    LifecycleRules,
    ForkRules,
    ModelRules,
    StatisticsRules,
):
    """Subclass this in a test module to run every rule of the contract on a backend.

    Set :attr:`backend_class` to the backend class, or override the
    :meth:`backend_factory` fixture.  The tests are named after the rules of the
    contract (``test_rule1_...`` to ``test_rule7_...``), plus the life-cycle and
    protocol checks, and ``statistics()`` and debug mode where the backend has them
    (``test_statistics_...``, ``test_debug_mode_...``).  Rule 8 (the ``select``
    backend's descriptor limit) is specific to one backend and is not part of the kit.
    """
