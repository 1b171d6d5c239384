"""Debug mode's switches and its "never closed" warning, for every object that has one.

Debug mode is on where it is asked for: ``debug=True`` to the object's constructor, or
else the environment variable ``ASYCAMORE_DEBUG`` or ``python -X dev``
(:data:`sys.flags.dev_mode`); an explicit ``debug=False`` wins over both.
`debug_enabled` makes that decision; `warn_unclosed` arms the :class:`ResourceWarning`
an object that holds OS resources gives when it is garbage-collected without being
closed, naming the line of the program that created it.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections.abc import Callable
from types import FrameType, FunctionType

__all__ = ["ENV_VAR", "creation_site", "debug_enabled", "warn_unclosed"]

ENV_VAR = "ASYCAMORE_DEBUG"
"""The environment variable that turns debug mode on: any value but empty or ``0``."""


def debug_enabled(explicit: bool | None = None) -> bool:
    """Whether debug mode is on for an object created with ``debug=explicit``.

    *explicit* if it is a bool; otherwise on when ``ASYCAMORE_DEBUG`` is set to
    anything but ``""`` or ``"0"``, or under ``python -X dev``.
    """
    if explicit is not None:
        return explicit
    return os.environ.get(ENV_VAR, "") not in ("", "0") or sys.flags.dev_mode


def _inside_package(module: str) -> bool:
    # asycamore.testing, the kit, is a user of the package like any test.
    return module.partition(".")[0] == "asycamore" and not module.startswith("asycamore.testing")


def _creator(owner: object) -> tuple[str, int] | None:
    # Code objects, not the frames' locals: reading f_locals would keep a snapshot of
    # the caller's variables alive, and with it whatever they hold.
    own_code = {
        function.__code__
        for cls in type(owner).__mro__
        for function in vars(cls).values()
        if isinstance(function, FunctionType)
    }
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code not in own_code and not _inside_package(
            frame.f_globals.get("__name__", "")
        ):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None


def creation_site(owner: object) -> str:
    """``"file:line"`` of the code that is creating *owner*: the innermost caller that
    is neither in asycamore (its factory, say) nor a function of *owner*'s class or its
    bases (a subclass's ``__init__`` calling ``super().__init__()``).

    Call it from *owner*'s constructor.  ``"<unknown>"`` if every frame is skipped.
    """
    site = _creator(owner)
    return "<unknown>" if site is None else f"{site[0]}:{site[1]}"


def warn_unclosed(owner: object, what: str) -> Callable[[], object]:
    """Arm a :class:`ResourceWarning` for when *owner* is garbage-collected unclosed.

    The warning reads ``"{what} was never closed; created at FILE:LINE"`` with
    `creation_site`, and is reported at that line (so call this from *owner*'s
    constructor).  Returns the function that disarms it: call that from *owner*'s
    ``close()``.  *owner* must support weak references; nothing is held that keeps it
    alive, and nothing is warned at interpreter exit.
    """
    site = _creator(owner)
    filename, line = ("<unknown>", 0) if site is None else site
    finalizer = weakref.finalize(
        owner,
        warnings.warn_explicit,
        f"{what} was never closed; created at {filename}:{line}",
        ResourceWarning,
        filename,
        line,
    )
    finalizer.atexit = False
    return finalizer.detach
