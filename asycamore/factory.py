"""Discovering backends through entry points and choosing one.

Every backend, the built-in ones included, reaches asycamore only through the entry-point
group ``asycamore.backends``; the core never imports a backend by name.  Discovery is lazy
(nothing is scanned at ``import asycamore``) and cached for the life of the process.

Reading the entry points
    A server pays for discovery before its first connection, so the common case is read
    directly: every ``*.dist-info`` and ``*.egg-info`` directory on :data:`sys.path`, its
    ``entry_points.txt``, and for the few distributions that declare the group, the
    ``Name`` and ``Version`` of their ``METADATA``.  That is what :mod:`importlib.metadata`
    reads too, in the same order and with the same rule for a distribution installed
    twice (the first on ``sys.path`` wins), without importing it and the :mod:`email`
    parser it needs for whole metadata files (some 5 MiB and 20 ms).  Anything the short
    reader does not handle -- a zip file on ``sys.path``, or a meta-path finder of its own
    that serves distributions -- sends discovery through :mod:`importlib.metadata`.
    Neither reads stevedore's on-disk entry-point cache, which can serve a stale list
    after a reinstall (:doc:`/backends`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from .dispatcher import IDispatchContext
from .errors import BackendLoadError, BackendNotFound, BackendUnavailable

if TYPE_CHECKING:
    import importlib.metadata

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


class _Backend(NamedTuple):
    info: BackendInfo
    cls: type[IDispatchContext] | None
    error: BaseException | None


class _EntryPoint(NamedTuple):
    """One entry point of the group, with the distribution that declares it."""

    name: str
    value: str
    dist_name: str | None
    dist_version: str | None


def _origin(entry_point: _EntryPoint) -> str:
    if entry_point.dist_name is None:
        return "unknown"
    if entry_point.dist_name == "asycamore":
        return BUILTIN_ORIGIN
    return f"{entry_point.dist_name} {entry_point.dist_version}"


def _normalize(name: str) -> str:
    """A distribution name as importlib.metadata compares them (PEP 503, with ``_``)."""
    out = []
    for char in name.lower():
        out.append("_" if char in "-_." else char)
    return "_".join(part for part in "".join(out).split("_") if part)


def _parse_group(text: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of section ``[group]`` of an ``entry_points.txt``
    (the ini dialect importlib.metadata reads: ``#``/``;`` comments, stripped lines)."""
    found = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[" and line[-1] == "]":
            section = line[1:-1].strip()
        elif section == group:
            name, sep, value = line.partition("=")
            if sep:
                found.append((name.strip(), value.strip()))
    return found


def _read_headers(path: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the header block of a METADATA or PKG-INFO file."""
    name = version = None
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep and key == "Name":
                    name = value.strip()
                elif sep and key == "Version":
                    version = value.strip()
    except OSError:
        pass
    return name, version


def _can_read_directly() -> bool:
    """Whether every distribution importlib.metadata would find sits in a directory
    on sys.path (the short reader's case)."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if getattr(finder, "find_distributions", None) is None:
            continue
        if finder is not PathFinder and getattr(finder, "__self__", None) is not PathFinder:
            return False
    return all(not os.path.isfile(entry) for entry in sys.path)


def _read_entry_points(group: str) -> list[_EntryPoint]:
    """The group's entry points from the ``*.dist-info``/``*.egg-info`` directories on
    sys.path, one distribution per normalized name (the first found wins, as in
    importlib.metadata)."""
    seen: set[str] = set()
    found: list[_EntryPoint] = []
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for dirname in names:
            stem, dot, suffix = dirname.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            key = _normalize(stem.partition("-")[0])
            if key in seen:
                continue
            seen.add(key)
            where = os.path.join(entry or ".", dirname)
            try:
                with open(os.path.join(where, "entry_points.txt"), encoding="utf-8") as file:
                    declared = _parse_group(file.read(), group)
            except OSError:
                continue
            if declared:
                headers = "METADATA" if suffix == "dist-info" else "PKG-INFO"
                dist_name, dist_version = _read_headers(os.path.join(where, headers))
                found.extend(_EntryPoint(n, v, dist_name, dist_version) for n, v in declared)
    return found


def _metadata_entry_points(group: str) -> list[_EntryPoint]:
    """The group's entry points through importlib.metadata (zip files, custom finders)."""
    import importlib.metadata

    found = []
    for entry_point in importlib.metadata.entry_points(group=group):
        dist = entry_point.dist
        name, version = (None, None) if dist is None else (dist.name, dist.version)
        found.append(_EntryPoint(entry_point.name, entry_point.value, name, version))
    return found


def _load_entry_point(value: str) -> object:
    """Import what ``module:attr.attr [extras]`` names (importlib.metadata's
    ``EntryPoint.load``); an import error or a missing attribute propagates."""
    target = value.partition("[")[0].strip()
    module_name, _, attrs = target.partition(":")
    module_name = module_name.strip()
    if not module_name:
        raise ValueError(f"malformed entry point {value!r}")
    obj: object = importlib.import_module(module_name)
    for attr in filter(None, (part.strip() for part in attrs.split("."))):
        obj = getattr(obj, attr)
    return obj


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


def _entry_points() -> list[_EntryPoint]:
    """The group's entry points, one per backend name.

    When two distributions claim the same name, a built-in keeps it (a stale or broken
    plugin must never take a built-in away); between plugins, the first on ``sys.path``
    wins.  Either way a warning names the one ignored.
    """
    # Both readers already keep one distribution per normalized name.
    if _can_read_directly():
        declared = _read_entry_points(ENTRY_POINT_GROUP)
    else:
        declared = _metadata_entry_points(ENTRY_POINT_GROUP)
    chosen: dict[str, _EntryPoint] = {}
    for entry_point in declared:
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


@functools.cache
def _discover() -> dict[str, _Backend]:
    backends: dict[str, _Backend] = {}
    for entry_point in _entry_points():
        name = entry_point.name
        origin = _origin(entry_point)
        error: BaseException | None = None
        cls: type[IDispatchContext] | None = None
        try:
            cls = _check_backend_class(_load_entry_point(entry_point.value))
        except Exception as exc:
            # A broken plugin is reported, never allowed to stop the others.
            error = exc
        if cls is None:
            assert error is not None
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


def create_dispatcher(name: str | None = None, **options: Any) -> IDispatchContext:
    """Create a dispatch context from backend *name*, or from the best one here.

    With no name, ``$ASYCAMORE_BACKEND`` (a comma-separated preference list; the first
    available wins) is honoured, then the highest-priority available backend is used.
    *options* are passed to the backend's constructor.

    Raises :class:`~asycamore.BackendNotFound`, :class:`~asycamore.BackendUnavailable` or
    :class:`~asycamore.BackendLoadError`, all subclasses of :class:`~asycamore.BackendError`.
    """
    return backend_class(name)(**options)


def backend_class(name: str | None = None) -> type[IDispatchContext]:
    """The class :func:`create_dispatcher` would instantiate for *name*, without
    creating a context: a program that forks (:mod:`asycamore.workers`) checks the
    backend in the parent and creates the contexts in the children.  Raises the same
    errors as :func:`create_dispatcher`."""
    return _resolve(best_backend() if name is None else name)
