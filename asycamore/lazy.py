"""Module attributes imported on first use, for names whose import costs start-up time.

``import asycamore`` must not scan entry points (the factory) and a plain-TCP program
must not load :mod:`ssl` (the TLS names of :mod:`asycamore.tcpsocket`); both modules
still offer those names.  :func:`lazy_attributes` makes the module-level
``__getattr__`` and ``__dir__`` (PEP 562) that import them when first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, MutableMapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    namespace: MutableMapping[str, Any], names: Collection[str], module: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module whose globals are *namespace*: each of
    *names* is imported from *module* (an absolute name) on first use, then kept in
    *namespace*, so later lookups do not come back here."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
