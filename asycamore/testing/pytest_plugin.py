"""The pytest plugin: run a user's tests on every asycamore backend, with a service that
fails the test when it leaks, and a mock clock.

Registered through the ``pytest11`` entry point ``asycamore``, so it loads wherever
asycamore is installed.  It adds fixtures and options only -- no autouse fixture, no
hook that touches a test which does not ask for its fixtures -- and imports asycamore's
modules only when a fixture or option is used.

Fixtures:

``asycamore_backend``
    The name of a backend; a test that uses it (or ``service``) runs once per available
    backend, third-party plugins included (the test ids are the names).
    ``--asycamore-backend NAME`` (repeatable) narrows it, and
    :func:`asycamore.aio.loop_factories` too.
``service``
    A :class:`~asycamore.servicemodel.Service` on that backend -- on ``mock_clock`` when
    the test also uses that fixture -- closed at teardown.  Teardown fails, naming each
    one, on what the test left: an open connection, listener or datagram endpoint, a
    child process not reaped, a timer not cancelled, or a file descriptor open that was
    not open before.
``mock_clock``
    A new :class:`asycamore.testing.MockClock`.

With the ini option ``asycamore_asyncio_loops = true`` the plugin also answers
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook with
:func:`asycamore.aio.loop_factories`, so every asyncio test runs on every backend.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from .clock import MockClock
from .leaks import describe_fd, open_fds, service_leaks

if TYPE_CHECKING:
    import asyncio

    from asycamore.servicemodel import Service

__all__ = [
    "asycamore_backend",
    "mock_clock",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "service",
]

_OPTION = "--asycamore-backend"
_INI_ASYNCIO = "asycamore_asyncio_loops"
# How long teardown lets the service finish what the test started closing (real seconds).
_SETTLE_SECONDS = 2.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--asycamore-backend NAME`` and the ini option ``asycamore_asyncio_loops``."""
    group = parser.getgroup("asycamore")
    group.addoption(
        _OPTION,
        action="append",
        dest="asycamore_backend",
        metavar="NAME",
        help="run the asycamore_backend and service fixtures (and asycamore.aio."
        "loop_factories()) on this backend only; repeat for several (default: every "
        "available backend)",
    )
    parser.addini(
        _INI_ASYNCIO,
        type="bool",
        default=False,
        help="run pytest-asyncio tests on every asycamore backend (answers the "
        "pytest_asyncio_loop_factories hook with asycamore.aio.loop_factories())",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check ``--asycamore-backend`` names; answer pytest-asyncio's hook if asked to."""
    names = config.getoption("asycamore_backend")
    if names:
        from asycamore.aio import limit_loop_factories
        from asycamore.factory import list_backends

        installed = [info.name for info in list_backends()]
        unknown = [name for name in names if name not in installed]
        if unknown:
            raise pytest.UsageError(
                f"{_OPTION}: no backend named {unknown[0]!r} is installed "
                f"(installed: {', '.join(sorted(installed)) or 'none'})"
            )
        limit_loop_factories(names)
    if config.getini(_INI_ASYNCIO):
        if not hasattr(config.hook, "pytest_asyncio_loop_factories"):
            raise pytest.UsageError(
                f"{_INI_ASYNCIO} = true needs pytest-asyncio 1.4 or newer installed"
            )
        config.pluginmanager.register(_AsyncioLoops(), "asycamore-asyncio-loops")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo :func:`pytest_configure`'s narrowing (for pytest runs inside a process)."""
    if config.getoption("asycamore_backend"):
        from asycamore.aio import limit_loop_factories

        limit_loop_factories(None)


class _AsyncioLoops:
    """pytest-asyncio's hook, registered only with ``asycamore_asyncio_loops = true``
    (pytest-asyncio refuses an implementation that returns ``None``)."""

    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        from asycamore.aio import loop_factories

        return loop_factories()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``asycamore_backend`` (and so ``service``) over the backends."""
    if "asycamore_backend" not in metafunc.fixturenames or any(
        "asycamore_backend" in _parametrized_names(marker)
        for marker in metafunc.definition.iter_markers("parametrize")
    ):
        return
    from asycamore.factory import list_backends

    infos = {info.name: info for info in list_backends()}
    names = metafunc.config.getoption("asycamore_backend")
    if names:
        params = [
            pytest.param(
                name,
                id=name,
                marks=()
                if infos[name].available
                else pytest.mark.skip(
                    reason=f"backend {name!r} is not available here: {infos[name].reason}"
                ),
            )
            for name in dict.fromkeys(names)
        ]
    else:
        params = [pytest.param(name, id=name) for name, info in infos.items() if info.available]
    metafunc.parametrize("asycamore_backend", params, indirect=True)


def _parametrized_names(marker: pytest.Mark) -> list[str]:
    names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
    if isinstance(names, str):
        return [name.strip() for name in names.split(",")]
    return list(names)


@pytest.fixture
def asycamore_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend this run of the test is for."""
    param = getattr(request, "param", None)
    if param is None:  # asked for dynamically, outside the parametrisation
        from asycamore.factory import best_backend

        return best_backend()
    return str(param)


@pytest.fixture
def mock_clock() -> MockClock:
    """A new :class:`~asycamore.testing.MockClock` (time 0.0, no autojump); the
    ``service`` fixture runs on it when the test uses both."""
    return MockClock()


@pytest.fixture
def service(request: pytest.FixtureRequest, asycamore_backend: str) -> Iterator[Service]:
    """A :class:`~asycamore.servicemodel.Service` on *asycamore_backend*, checked for
    leaks and closed at teardown."""
    from asycamore.servicemodel import Service

    clock: Any = None
    if "mock_clock" in request.fixturenames:
        clock = request.getfixturevalue("mock_clock")
    fds_before = open_fds()
    svc = Service(asycamore_backend, clock=clock)
    try:
        yield svc
        leaks = _settled_leaks(svc)
    finally:
        svc.close()
    gc.collect()  # a socket the test dropped without closing is closed now, not leaked
    leaks += [describe_fd(fd) for fd in sorted(open_fds() - fds_before)]
    if leaks:
        pytest.fail(
            "the test left behind:\n" + "\n".join(f"  {leak}" for leak in leaks),
            pytrace=False,
        )


def _settled_leaks(service: Service) -> list[str]:
    """The service's leaks, once it has handled what already arrived -- the EOF of a
    client the test closed -- and the streams closing have closed (bounded)."""
    if not (service.running or service.closed):
        deadline = time.monotonic() + _SETTLE_SECONDS
        closing = False
        while time.monotonic() < deadline:
            busy = service.run_once(0.01 if closing else 0)
            closing = any(stream.is_closing() for stream in service.transports.streams)
            if not (busy or closing):
                break
    return service_leaks(service)
