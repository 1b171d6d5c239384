"""DispatchSelector against CPython's own selectors tests, on every available backend.

The test cases come from the interpreter's ``test`` package at run time
(``test.test_selectors``); nothing of them is copied here.  Each backend gets one
subclass of ``BaseSelectorTestCase`` with ``ScalableSelectorMixIn`` (except ``select``,
which CPython does not hold to that either: it cannot watch a fd at or above
``FD_SETSIZE``), with ``SELECTOR`` bound to a DispatchSelector over that backend.

Then the few things ``selectors`` leaves to the implementation and this one promises.
"""

from __future__ import annotations

import selectors
import socket
import unittest
from typing import Any

import pytest

import asycamore
from asycamore.selector import DispatchSelector

test_selectors: Any = pytest.importorskip("test.test_selectors")

BACKENDS = [info.name for info in asycamore.list_backends() if info.available]
_BUILTIN = ("select", "poll", "epoll", "kqueue")


def _case(backend: str) -> type[unittest.TestCase]:
    bases: tuple[type, ...] = (test_selectors.BaseSelectorTestCase,)
    if backend != "select":
        bases += (test_selectors.ScalableSelectorMixIn,)
    # A class, not a partial: some tests read SELECTOR.__name__.
    selector = type(
        f"DispatchSelector_{backend}",
        (DispatchSelector,),
        {"__init__": lambda self: DispatchSelector.__init__(self, backend)},
    )
    attrs = {"SELECTOR": selector}
    return type(f"TestCPythonSelectors_{backend}", (*bases, unittest.TestCase), attrs)


for _backend in BACKENDS:
    if _backend in _BUILTIN:
        globals()[f"TestCPythonSelectors_{_backend}"] = _case(_backend)
del _backend


@pytest.fixture(params=[b for b in BACKENDS if b in _BUILTIN])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_given_dispatcher_is_left_open_and_clean(backend: str) -> None:
    with asycamore.create_dispatcher(backend) as dispatcher:
        selector = DispatchSelector(dispatcher=dispatcher)
        a, b = socket.socketpair()
        with a, b:
            selector.register(a, selectors.EVENT_READ)
            assert len(dispatcher) == 1
            selector.close()
            assert len(dispatcher) == 0
            assert selector.get_map() is None
            dispatcher.dispatch_once(0)  # still open


def test_read_and_write_in_one_entry(backend: str) -> None:
    with DispatchSelector(backend) as selector:
        a, b = socket.socketpair()
        with a, b:
            b.send(b"x")
            key = selector.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "d")
            assert selector.select(1) == [(key, selectors.EVENT_READ | selectors.EVENT_WRITE)]


def test_closed_while_registered_does_not_spin_and_unregisters(backend: str) -> None:
    with DispatchSelector(backend) as selector:
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        with b, c, d:
            selector.register(a, selectors.EVENT_READ)
            key_c = selector.register(c, selectors.EVENT_READ)
            a.close()
            d.send(b"x")
            # select reports the closed one first, alone (EBADF fails the whole call).
            reports = [selector.select(0.5) for _ in range(3)]
            assert all((key_c, selectors.EVENT_READ) in ready for ready in reports[1:])
            assert sum(key.fd == key_c.fd for ready in reports for key, _ in ready) >= 2
            selector.unregister(a)  # by identity: a has no fileno any more
            assert len(selector.get_map() or {}) == 1


def test_modify_keeps_key_when_nothing_changes(backend: str) -> None:
    with DispatchSelector(backend) as selector:
        a, b = socket.socketpair()
        with a, b:
            data = object()
            key = selector.register(a, selectors.EVENT_READ, data)
            assert selector.modify(a, selectors.EVENT_READ, data) is key
            with pytest.raises(ValueError):
                selector.modify(a, 0)
