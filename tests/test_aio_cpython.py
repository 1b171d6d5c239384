"""asyncio's own test suites, on loops from ``asycamore.aio.new_event_loop``.

The suites come from the interpreter's ``test`` package at run time (nothing of them is
copied here).  Each test class CPython runs against one stdlib selector is subclassed
with its ``create_event_loop`` (or, for suites that call ``asyncio.new_event_loop()``
directly, the event-loop policy) pointed at an asycamore backend instead:

- ``test_events`` and ``test_sock_lowlevel``: per backend, the class CPython runs for
  that mechanism (``EPollEventLoopTests`` for epoll, ...), with its own per-mechanism
  skips and expectations;
- ``test_sendfile``, ``test_server``, ``test_buffered_proto``, ``test_sslproto``
  (start_tls) and ``test_streams``: on the default backend and on ``select`` (the one
  whose selector differs most).

Exclusions are listed in ``EXCLUDED`` with the reason.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import unittest
from typing import Any

import pytest

import asycamore
from asycamore import aio

_MECHANISM_CLASS = {
    "epoll": "EPollEventLoopTests",
    "poll": "PollEventLoopTests",
    "select": "SelectEventLoopTests",
    "kqueue": "KqueueEventLoopTests",
}
_AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]
BACKENDS = [name for name in _MECHANISM_CLASS if name in _AVAILABLE]
DEFAULT = asycamore.best_backend()
FUNCTIONAL_BACKENDS = sorted({DEFAULT, "select"} & set(_AVAILABLE))

# (suite, test method) -> why it does not run here.
EXCLUDED: dict[tuple[str, str], str] = {}


def _suite(name: str) -> Any:
    try:
        return importlib.import_module(f"test.test_asyncio.{name}")
    except ImportError:  # an interpreter built without its test package
        return None


def _exclude(cls: type, suite: str) -> None:
    for (excluded_suite, method), reason in EXCLUDED.items():
        if excluded_suite == suite and hasattr(cls, method):
            setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))


def _per_mechanism(suite: str, backend: str) -> type | None:
    module = _suite(suite)
    base = getattr(module, _MECHANISM_CLASS[backend], None)
    if base is None:
        return None

    def create_event_loop(self: Any) -> asyncio.AbstractEventLoop:
        return aio.new_event_loop(backend)

    cls = type(f"Test_{suite}_{backend}", (base,), {"create_event_loop": create_event_loop})
    _exclude(cls, suite)
    return cls


def _with_loop_factory(suite: str, class_name: str, backend: str) -> type | None:
    module = _suite(suite)
    base = getattr(module, class_name, None)
    if base is None:
        return None
    attrs: dict[str, Any] = {}
    if "create_event_loop" in vars(base):

        def create_event_loop(self: Any) -> asyncio.AbstractEventLoop:
            return aio.new_event_loop(backend)

        attrs["create_event_loop"] = create_event_loop
    else:  # the suite calls asyncio.new_event_loop(): the policy decides

        def setUp(self: Any) -> None:
            asyncio.set_event_loop_policy(aio.EventLoopPolicy(backend))
            self.addCleanup(asyncio.set_event_loop_policy, None)
            base.setUp(self)

        attrs["setUp"] = setUp
    cls = type(f"Test_{suite}_{class_name}_{backend}", (base,), attrs)
    _exclude(cls, suite)
    return cls


_classes: list[type | None] = []
for _backend in BACKENDS:
    _classes.append(_per_mechanism("test_events", _backend))
    _classes.append(_per_mechanism("test_sock_lowlevel", _backend))
for _backend in FUNCTIONAL_BACKENDS:
    _classes.append(_per_mechanism("test_sendfile", _backend))
    _classes.append(_with_loop_factory("test_server", "SelectorStartServerTests", _backend))
    _classes.append(
        _with_loop_factory("test_buffered_proto", "BufferedProtocolSelectorTests", _backend)
    )
    _classes.append(_with_loop_factory("test_sslproto", "SelectorStartTLSTests", _backend))
    _classes.append(_with_loop_factory("test_streams", "StreamTests", _backend))
for _cls in _classes:
    if _cls is not None:
        globals()[_cls.__name__] = _cls
del _backend, _classes, _cls


def test_the_suites_were_found() -> None:
    """Guard against silently running nothing (a renamed class in a new Python)."""
    if _suite("test_events") is None:
        pytest.skip(f"no test.test_asyncio in {sys.executable}")
    names = [name for name in globals() if name.startswith("Test_")]
    assert len(names) == 2 * len(BACKENDS) + 5 * len(FUNCTIONAL_BACKENDS), names


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_suites_run_on_asycamore_loops(backend: str) -> None:
    cls = globals()[f"Test_test_events_{backend}"]
    loop = cls.create_event_loop(None)
    try:
        selector = loop._selector  # asyncio's own attribute: what its suites exercise
        assert type(selector).__name__ == "DispatchSelector"
        assert selector.dispatcher.name == backend
    finally:
        loop.close()
