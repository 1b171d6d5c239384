"""Discovering backends through entry points and choosing one.

Every backend, the built-in ones included, reaches asycamore only through the entry-point
group ``asycamore.backends``; the core never imports a backend by name.  Discovery is lazy
(nothing is scanned at ``import asycamore``) and cached for the life of the process.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from .dispatcher import IDispatchContext
from .errors import BackendLoadError, BackendNotFound, BackendUnavailable

if TYPE_CHECKING:
    import stevedore

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "BackendInfo",
    "backend_class",
    "best_backend",
    "create_dispatcher",
    "list_backends",
]

ENTRY_POINT_GROUP = "asycamore.backends"
"""The entry-point group every backend is registered under."""

ENV_VAR = "ASYCAMORE_BACKEND"
"""Environment variable holding a comma-separated backend preference list."""

BUILTIN_ORIGIN = "built-in"

_log = logging.getLogger("asycamore")

# What a backend class must provide: IDispatchContext's members, plus priority and
# is_available() for the factory.
_REQUIRED_CLASS_ATTRIBUTES = (
    "name",
    "priority",
    "is_available",
    "register",
    "modify",
    "unregister",
    "dispatch_once",
    "close",
    "__contains__",
    "__len__",
    "__enter__",
    "__exit__",
)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What is known about one installed backend."""

    name: str
    """The entry point's name, which is the backend's name."""
    available: bool
    """Whether the backend loaded and can run on this machine."""
    priority: int
    """Higher is preferred when no backend is named (0 when the plugin failed to load)."""
    reason: str | None
    """Why it is not available or failed to load; ``None`` when it is available."""
    origin: str
    """``"built-in"``, or the plugin's distribution as ``"name version"``."""
    entry_point: str
    """The entry point's value, ``"module:attribute"``."""
    loaded: bool
    """False when the plugin failed to import or is not a backend class."""


@dataclasses.dataclass(frozen=True)
class _Backend:
    info: BackendInfo
    cls: type[IDispatchContext] | None
    error: BaseException | None


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return "unknown"
    if dist.name == "asycamore":
        return BUILTIN_ORIGIN
    return f"{dist.name} {dist.version}"


def _check_backend_class(obj: object) -> type[IDispatchContext]:
    """Return *obj* if it is a backend class, else raise TypeError saying what is missing."""
    if not isinstance(obj, type):
        raise TypeError(f"{obj!r} is not a class")
    missing = [attr for attr in _REQUIRED_CLASS_ATTRIBUTES if not hasattr(obj, attr)]
    if missing:
        raise TypeError(f"{obj.__qualname__} does not implement {', '.join(missing)}")
    if not isinstance(obj.priority, int):  # type: ignore[attr-defined]
        raise TypeError(f"{obj.__qualname__}.priority is not an int")
    return obj


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The group's entry points, one per backend name.

    When two distributions claim the same name, a built-in keeps it (a stale or broken
    plugin must never take a built-in away); between plugins, the first on ``sys.path``
    wins.  Either way a warning names the one ignored.
    """
    # Read straight from importlib.metadata rather than stevedore's on-disk entry-point
    # cache: that cache can serve a stale list after a reinstall (it hashes directory
    # mtimes as 32-bit floats), and its entries lose the distribution we report as origin.
    # entry_points() already keeps one distribution per normalized name.
    chosen: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        current = chosen.get(entry_point.name)
        if current is None:
            chosen[entry_point.name] = entry_point
            continue
        kept, ignored = current, entry_point
        if _origin(entry_point) == BUILTIN_ORIGIN and _origin(current) != BUILTIN_ORIGIN:
            kept, ignored = entry_point, current
            chosen[entry_point.name] = kept
        _log.warning(
            "backend %r is installed twice; using %s (%s), ignoring %s (%s)",
            kept.name,
            kept.value,
            _origin(kept),
            ignored.value,
            _origin(ignored),
        )
    return list(chosen.values())


def _load(
    entry_points: list[importlib.metadata.EntryPoint],
) -> tuple[stevedore.ExtensionManager[Any], dict[str, BaseException]]:
    """Load *entry_points* with stevedore; return the manager and the failures by name."""
    import stevedore

    class _Manager(stevedore.ExtensionManager[Any]):
        def list_entry_points(self) -> list[importlib.metadata.EntryPoint]:
            return entry_points

    failures: dict[str, BaseException] = {}

    def on_failure(
        manager: object, entry_point: importlib.metadata.EntryPoint, exc: BaseException
    ) -> None:
        failures[entry_point.name] = exc

    manager = _Manager(ENTRY_POINT_GROUP, on_load_failure_callback=on_failure)
    return manager, failures


@functools.cache
def _discover() -> dict[str, _Backend]:
    # One entry point per name, so stevedore's results can be keyed by name.
    entry_points = _entry_points()
    manager, failures = _load(entry_points)
    loaded = {ext.name: ext for ext in manager.extensions}
    backends: dict[str, _Backend] = {}
    for entry_point in entry_points:
        name = entry_point.name
        origin = _origin(entry_point)
        error: BaseException | None = failures.get(name)
        cls: type[IDispatchContext] | None = None
        if error is None and name in loaded:
            try:
                cls = _check_backend_class(loaded[name].plugin)
            except TypeError as exc:
                error = exc
        if cls is None:
            if error is None:  # pragma: no cover - stevedore reports every failure
                error = RuntimeError("stevedore did not load the plugin")
            info = BackendInfo(
                name=name,
                available=False,
                priority=0,
                reason=f"failed to load: {type(error).__name__}: {error}",
                origin=origin,
                entry_point=entry_point.value,
                loaded=False,
            )
        else:
            available, reason = _availability(cls)
            info = BackendInfo(
                name=name,
                available=available,
                priority=cls.priority,  # type: ignore[attr-defined]
                reason=reason,
                origin=origin,
                entry_point=entry_point.value,
                loaded=True,
            )
        backends[name] = _Backend(info, cls, error)
    return backends


def _availability(cls: type[IDispatchContext]) -> tuple[bool, str | None]:
    try:
        available = bool(cls.is_available())  # type: ignore[attr-defined]
    except Exception as exc:
        return False, f"is_available() raised {type(exc).__name__}: {exc}"
    if available:
        return True, None
    return False, f"not supported on this platform ({sys.platform})"


def _sort_key(info: BackendInfo) -> tuple[int, str]:
    return (-info.priority, info.name)


def list_backends() -> list[BackendInfo]:
    """Every installed backend, broken ones included, by priority (highest first), then name."""
    return sorted((b.info for b in _discover().values()), key=_sort_key)


def _installed_names(backends: dict[str, _Backend]) -> str:
    return ", ".join(sorted(backends)) or "none"


def _resolve(name: str) -> type[IDispatchContext]:
    """The class of backend *name*, or the BackendError saying why it cannot be used."""
    backends = _discover()
    backend = backends.get(name)
    if backend is None:
        raise BackendNotFound(
            f"no backend named {name!r} is installed (installed: {_installed_names(backends)})"
        )
    if backend.cls is None:
        raise BackendLoadError(f"backend {name!r} {backend.info.reason}") from backend.error
    if not backend.info.available:
        raise BackendUnavailable(f"backend {name!r} is not available: {backend.info.reason}")
    return backend.cls


def best_backend() -> str:
    """The name of the backend :func:`create_dispatcher` would use with no name given.

    The first available name in ``$ASYCAMORE_BACKEND`` if it is set, else the available
    backend with the highest priority.
    """
    preference = os.environ.get(ENV_VAR, "")
    names = [name.strip() for name in preference.split(",") if name.strip()]
    if names:
        return _first_usable(names)
    for info in list_backends():
        if info.available:
            return info.name
    raise BackendUnavailable(
        f"no backend is available here (installed: {_installed_names(_discover())})"
    )


def _first_usable(names: list[str]) -> str:
    errors: list[Exception] = []
    for name in names:
        try:
            _resolve(name)
        except (BackendNotFound, BackendUnavailable, BackendLoadError) as exc:
            errors.append(exc)
        else:
            return name
    detail = "; ".join(str(exc) for exc in errors)
    message = f"none of {ENV_VAR}={','.join(names)} can be used: {detail}"
    if all(isinstance(exc, BackendNotFound) for exc in errors):
        raise BackendNotFound(message)
    raise BackendUnavailable(message)


def create_dispatcher(
    name: str | None = None, *, debug: bool | None = None, **options: Any
) -> IDispatchContext:
    """Create a dispatch context from backend *name*, or from the best one here.

    With no name, ``$ASYCAMORE_BACKEND`` (a comma-separated preference list; the first
    available wins) is honoured, then the highest-priority available backend is used.
    *options* are passed to the backend's constructor.

    *debug* turns the context's debug mode on or off (see :doc:`observing`); it is
    passed on only when given, so that ``None`` leaves the decision to the backend
    (every backend on :class:`~asycamore.backends.base.DispatcherBase` follows
    ``ASYCAMORE_DEBUG`` and ``python -X dev``, see
    :func:`asycamore.debug.debug_enabled`).  A backend whose constructor takes no
    ``debug`` raises :class:`TypeError` when *debug* is given, and is created without
    it otherwise: the environment variable cannot make a plugin fail.

    Raises :class:`~asycamore.BackendNotFound`, :class:`~asycamore.BackendUnavailable` or
    :class:`~asycamore.BackendLoadError`, all subclasses of :class:`~asycamore.BackendError`.
    """
    cls = backend_class(name)
    if debug is not None:
        if not _accepts_debug(cls):
            raise TypeError(
                f"backend {cls.__module__}.{cls.__qualname__} does not accept debug: "
                "its constructor has no debug parameter"
            )
        options["debug"] = debug
    return cls(**options)


def _accepts_debug(cls: type[IDispatchContext]) -> bool:
    import inspect

    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C class): try it
        return True
    return any(
        (p.name == "debug" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def backend_class(name: str | None = None) -> type[IDispatchContext]:
    """The class :func:`create_dispatcher` would instantiate for *name*, without
    creating a context: a program that forks (:mod:`asycamore.workers`) checks the
    backend in the parent and creates the contexts in the children.  Raises the same
    errors as :func:`create_dispatcher`."""
    return _resolve(best_backend() if name is None else name)
