"""asycamore: one small, fast dispatch API over the OS readiness mechanisms.

The dispatch API (:class:`Events`, :class:`IDispatchTarget`, :class:`IDispatchContext`,
:func:`iterate`) and the backend errors are imported eagerly; the factory
(:func:`create_dispatcher`, :func:`best_backend`, :func:`list_backends`,
:class:`BackendInfo`) is imported on first use, so ``import asycamore`` scans no entry
points and loads no backend; so is :class:`DispatchStatistics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dispatcher import Events, IDispatchContext, IDispatchTarget, iterate
from .errors import BackendError, BackendLoadError, BackendNotFound, BackendUnavailable
from .lazy import lazy_attributes

if TYPE_CHECKING:
    from .factory import BackendInfo, best_backend, create_dispatcher, list_backends
    from .statistics import DispatchStatistics

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendInfo",
    "BackendLoadError",
    "BackendNotFound",
    "BackendUnavailable",
    "DispatchStatistics",
    "Events",
    "IDispatchContext",
    "IDispatchTarget",
    "__version__",
    "best_backend",
    "create_dispatcher",
    "iterate",
    "list_backends",
]

_LAZY_FACTORY_NAMES = frozenset(
    {"BackendInfo", "best_backend", "create_dispatcher", "list_backends"}
)


# The factory reads the installed distributions' metadata on first discovery: keep it
# off the import path of programs that never ask for a backend by discovery.  The
# statistics snapshot needs dataclasses, which only the factory imports otherwise.
_factory_getattr, _factory_dir = lazy_attributes(
    globals(), _LAZY_FACTORY_NAMES, "asycamore.factory"
)
_statistics_getattr, _ = lazy_attributes(globals(), {"DispatchStatistics"}, "asycamore.statistics")


def __getattr__(name: str) -> object:
    if name == "DispatchStatistics":
        return _statistics_getattr(name)
    return _factory_getattr(name)


def __dir__() -> list[str]:
    return sorted({*_factory_dir(), "DispatchStatistics"})
