"""SPEC "Testing with asycamore": the pytest plugin, driven through users' test files.

Each test writes a user's test module into a pytester directory and runs pytest on it
(in this process, with the plugin loaded from its ``pytest11`` entry point as anywhere
asycamore is installed), then reads the outcomes.  pytest-asyncio and anyio are the
released packages.
"""

from __future__ import annotations

import selectors
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import asycamore

AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]
INSTALLED = sorted(info.name for info in asycamore.list_backends())
UNAVAILABLE = sorted(set(INSTALLED) - set(AVAILABLE))


def loops_used(pytester: pytest.Pytester) -> list[str]:
    """What the asyncio tests of ASYNCIO_SUITE ran on, in order: backend names, or the
    class name of asyncio's own selector."""
    return (pytester.path / "loops.txt").read_text().split()


INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture(autouse=True)
def quiet_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """The users' projects set what pytest-asyncio otherwise warns about."""
    pytester.makeini(INI)


def passed_ids(result: pytest.RunResult) -> list[str]:
    """The ids of the passing tests in ``-v`` output (``test_x[epoll]``)."""
    return [
        line.split("::", 1)[1].split(" ", 1)[0]
        for line in result.outlines
        if "::" in line and " PASSED" in line
    ]


# -- loading ------------------------------------------------------------------------------


def test_the_plugin_loads_from_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_registered(pytestconfig):
            plugin = pytestconfig.pluginmanager.get_plugin("asycamore")
            assert plugin.__name__ == "asycamore.testing.pytest_plugin"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_suite_that_uses_no_fixture_is_unchanged(pytester: pytest.Pytester) -> None:
    # Same outcomes with and without the plugin, and nothing of asycamore imported
    # beyond the plugin's own small modules (a fresh interpreter, to see imports).
    pytester.makepyfile(
        """
        import sys

        import pytest

        @pytest.fixture
        def service():
            return "the user's own fixture of that name"

        def test_own_fixture_wins(service):
            assert service == "the user's own fixture of that name"

        @pytest.mark.parametrize("x", [1, 2])
        def test_plain(x):
            assert x

        def test_nothing_heavy_imported():
            heavy = [name for name in (
                "asycamore.servicemodel", "asycamore.factory", "asycamore.aio",
                "asycamore.testing.conformance", "stevedore",
            ) if name in sys.modules]
            assert not heavy, heavy
        """
    )
    with_plugin = pytester.runpytest_subprocess()
    with_plugin.assert_outcomes(passed=4)
    pytester.runpytest_subprocess("-p", "no:asycamore").assert_outcomes(passed=4)


def test_the_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures")
    for name in ("asycamore_backend", "service", "mock_clock"):
        result.stdout.fnmatch_lines([f"{name}*"])


# -- asycamore_backend and --asycamore-backend ------------------------------------------


BACKEND_TEST = """
    import asycamore

    def test_backend(asycamore_backend):
        with asycamore.create_dispatcher(asycamore_backend) as dispatcher:
            assert dispatcher.name == asycamore_backend
"""


def test_every_available_backend_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=len(AVAILABLE))
    assert sorted(passed_ids(result)) == sorted(f"test_backend[{n}]" for n in AVAILABLE)


@pytest.mark.parametrize("chosen", [AVAILABLE[:1], AVAILABLE[-2:]])
def test_the_option_narrows_and_repeats(pytester: pytest.Pytester, chosen: list[str]) -> None:
    pytester.makepyfile(BACKEND_TEST)
    args = [arg for name in chosen for arg in ("--asycamore-backend", name)]
    result = pytester.runpytest("-v", *args)
    result.assert_outcomes(passed=len(chosen))
    assert passed_ids(result) == [f"test_backend[{n}]" for n in chosen]


def test_an_unknown_name_is_a_usage_error_listing_the_installed(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("--asycamore-backend", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--asycamore-backend*'nosuch'*installed: {', '.join(INSTALLED)})*"]
    )
    assert "Traceback" not in result.stderr.str()


@pytest.mark.skipif(not UNAVAILABLE, reason="every installed backend is available here")
def test_an_installed_but_unavailable_backend_skips_saying_why(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("-rs", "--asycamore-backend", UNAVAILABLE[0])
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*backend '{UNAVAILABLE[0]}' is not available here*"])


def test_third_party_backends_are_included(
    pytester: pytest.Pytester,
    write_distribution: Callable[..., Path],
    fresh_factory: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = write_distribution(
        "asycamore-test-copypoll",
        {"copypoll": "asycamore_test_copypoll:CopyPoll"},
        {
            "asycamore_test_copypoll": textwrap.dedent(
                """
                from asycamore.backends.poll import PollDispatcher

                class CopyPoll(PollDispatcher):
                    name = "copypoll"
                    priority = 1
                """
            )
        },
    )
    monkeypatch.syspath_prepend(str(site))
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=len(AVAILABLE) + 1)
    assert "test_backend[copypoll]" in passed_ids(result)


def test_a_test_may_parametrize_the_backend_itself(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("asycamore_backend", [{AVAILABLE[0]!r}])
        def test_one(asycamore_backend, service):
            assert service.dispatcher.name == {AVAILABLE[0]!r}
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# -- service --------------------------------------------------------------------------------


def test_service_runs_on_each_backend_and_passes_when_tidy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        from asycamore.servicemodel import Protocol

        class Echo(Protocol):
            def data_received(self, data):
                self.transport.write(data)

        def test_echo(service, asycamore_backend):
            assert service.dispatcher.name == asycamore_backend
            listener = service.listen_tcp(Echo, "127.0.0.1", 0)
            with socket.create_connection(listener.address, timeout=5) as client:
                client.sendall(b"ping")
                client.setblocking(False)
                received = b""
                for _ in range(200):
                    service.run_once(0.05)
                    try:
                        received += client.recv(16)
                    except BlockingIOError:
                        continue
                    if received == b"ping":
                        break
                assert received == b"ping"
                for stream in service.transports.streams:
                    stream.close()  # closing, not closed: teardown lets it finish
            listener.close()
        """
    )
    pytester.runpytest().assert_outcomes(passed=len(AVAILABLE))


LEAKS = {
    "listener": (
        "service.listen_tcp(Protocol, '127.0.0.1', 0)",
        r"listener <Listener fd=*",
    ),
    "connection": (
        "listener = service.listen_tcp(Protocol, '127.0.0.1', 0)\n"
        "    KEEP.append(socket.create_connection(listener.address))\n"
        "    while not service.transports.streams:\n"
        "        service.run_once(0.05)\n"
        "    listener.close()",
        "connection <*Connection*",
    ),
    "endpoint": (
        "service.bind_udp(DatagramProtocol, '127.0.0.1', 0)",
        "endpoint <*",
    ),
    "process": (
        "service.spawn(ProcessProtocol, [sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)",
        "process <*Process*",
    ),
    "timer": (
        "service.call_later(60, print, 'never')",
        "timer <TimerHandle * <built-in function print>>",
    ),
    "repeating timer": (
        "service.call_every(1, print)",
        "timer <TimerHandle *RepeatingTimer every 1.0 s*",
    ),
    "fd": (
        "KEEP.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))\n"
        "    KEEP[-1].bind(('127.0.0.1', 0))",
        "fd *: AF_INET datagram socket 127.0.0.1:*",
    ),
}


@pytest.mark.parametrize("what", list(LEAKS))
def test_service_names_what_the_test_leaked(pytester: pytest.Pytester, what: str) -> None:
    code, pattern = LEAKS[what]
    pytester.makepyfile(
        "import socket\nimport sys\nfrom subprocess import DEVNULL\n\n"
        "from asycamore.servicemodel import DatagramProtocol, ProcessProtocol, Protocol\n\n"
        "KEEP = []\n\n"
        f"def test_leaks(service):\n    {code}\n"
    )
    result = pytester.runpytest("--asycamore-backend", AVAILABLE[0])
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test left behind:*", f"*  {pattern}"])
    assert "Traceback" not in result.stdout.str()


def test_a_socket_the_test_dropped_is_not_a_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import warnings

        def test_dropped(service):
            warnings.simplefilter("ignore", ResourceWarning)
            socket.socket()  # garbage at once: Python closes it
        """
    )
    pytester.runpytest("--asycamore-backend", AVAILABLE[0]).assert_outcomes(passed=1)


def test_a_service_the_test_closed_itself_is_fine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_closes(service):
            service.listen_tcp(lambda: None, "127.0.0.1", 0)
            service.close()
        """
    )
    result = pytester.runpytest("--asycamore-backend", AVAILABLE[0])
    assert "Traceback" not in result.stdout.str()
    result.assert_outcomes(passed=1)


def test_service_is_closed_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        SEEN = []

        def test_one(service):
            SEEN.append(service)

        def test_after():
            assert SEEN and SEEN[0].closed
        """
    )
    pytester.runpytest("--asycamore-backend", AVAILABLE[0]).assert_outcomes(passed=2)


# -- mock_clock --------------------------------------------------------------------------


def test_service_runs_on_mock_clock_when_the_test_uses_both(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import time

        from asycamore.servicemodel import Protocol
        from asycamore.testing import MockClock

        def test_clock(service, mock_clock):
            assert isinstance(mock_clock, MockClock)
            assert service.clock is mock_clock and service.time() == 0.0

        def test_idle_timeout_in_no_real_time(service, mock_clock):
            mock_clock.autojump_threshold = 0
            lost = []

            class Quiet(Protocol):
                def connection_lost(self, exc):
                    lost.append(service.time())
                    service.stop()

            listener = service.listen_tcp(Quiet, "127.0.0.1", 0, idle_timeout=30)
            started = time.monotonic()
            with socket.create_connection(listener.address):
                service.serve_forever(handle_signals=False)
            listener.close()
            assert lost == [30.0]
            assert time.monotonic() - started < 25  # not 30 real seconds

        def test_real_clock_without_it(service):
            assert service.time() > 0.0
        """
    )
    pytester.runpytest().assert_outcomes(passed=3 * len(AVAILABLE))


# -- asyncio test suites on asycamore ------------------------------------------------------


# What both users' suites below share: an echo server of one 5-byte message in a thread,
# and a record of the loop each test ran on (backend names, or the class name of
# asyncio's own selector) in loops.txt.
USERS_HELPERS = """
    import asyncio
    import socket
    import threading

    import pytest

    from asycamore.selector import DispatchSelector

    @pytest.fixture
    def echo_address():
        listener = socket.create_server(("127.0.0.1", 0))

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(conn.recv(5))

        thread = threading.Thread(target=serve)
        thread.start()
        yield listener.getsockname()
        thread.join(5)
        listener.close()

    def record_loop():
        selector = asyncio.get_running_loop()._selector
        with open("loops.txt", "a") as record:
            if isinstance(selector, DispatchSelector):
                print(selector.dispatcher.name, file=record)
            else:
                print(type(selector).__name__, file=record)
"""

ASYNCIO_SUITE = (
    USERS_HELPERS
    + """
    @pytest.mark.asyncio
    async def test_on_asycamore(echo_address):
        reader, writer = await asyncio.open_connection(*echo_address)
        writer.write(b"hello")
        await writer.drain()
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()
        record_loop()
"""
)


def test_pytest_asyncio_suite_through_the_users_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import asycamore.aio

        def pytest_asyncio_loop_factories(config, item):
            return asycamore.aio.loop_factories()
        """
    )
    pytester.makepyfile(ASYNCIO_SUITE)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=len(AVAILABLE))
    assert passed_ids(result) == [f"test_on_asycamore[{n}]" for n in AVAILABLE]
    assert loops_used(pytester) == AVAILABLE


def test_pytest_asyncio_suite_with_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "asycamore_asyncio_loops = true\n")
    pytester.makepyfile(ASYNCIO_SUITE)
    result = pytester.runpytest("--asycamore-backend", AVAILABLE[-1])
    result.assert_outcomes(passed=1)
    assert loops_used(pytester) == [AVAILABLE[-1]]


def test_without_the_ini_option_the_plugin_leaves_the_hook_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(ASYNCIO_SUITE)
    pytester.runpytest().assert_outcomes(passed=1)
    assert loops_used(pytester) == [type(selectors.DefaultSelector()).__name__]


def test_the_ini_option_without_pytest_asyncio_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI + "asycamore_asyncio_loops = true\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("-p", "no:asyncio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*asycamore_asyncio_loops*needs pytest-asyncio*"])


def test_anyio_tests_on_every_backend(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        import asycamore.aio

        @pytest.fixture(params=sorted(asycamore.aio.loop_factories().items()),
                        ids=lambda item: item[0])
        def anyio_backend(request):
            return ("asyncio", {"loop_factory": request.param[1]})
        """
    )
    pytester.makepyfile(
        USERS_HELPERS
        + """
    import anyio

    @pytest.mark.anyio
    async def test_anyio(anyio_backend, echo_address):
        async with await anyio.connect_tcp(*echo_address) as stream:
            await stream.send(b"hello")
            assert await stream.receive() == b"hello"
        record_loop()
"""
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=len(AVAILABLE))
    assert passed_ids(result) == [f"test_anyio[{n}]" for n in AVAILABLE]
    assert loops_used(pytester) == AVAILABLE


def test_the_documented_example_passes_on_every_backend(pytester: pytest.Pytester) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "testing" / "test_upper.py"
    pytester.makepyfile(test_upper=example.read_text())
    pytester.runpytest().assert_outcomes(passed=3 * len(AVAILABLE))


# -- asycamore.aio.loop_factories ----------------------------------------------------------


def test_loop_factories_one_per_available_backend() -> None:
    import asycamore.aio
    from asycamore.selector import DispatchSelector

    factories = asycamore.aio.loop_factories()
    assert list(factories) == AVAILABLE
    for name, factory in factories.items():
        loop = factory()
        try:
            selector = loop._selector  # type: ignore[attr-defined]
            assert isinstance(selector, DispatchSelector)
            assert selector.dispatcher.name == name
            assert loop.run_until_complete(_answer()) == 42
        finally:
            loop.close()


async def _answer() -> int:
    import asyncio

    await asyncio.sleep(0)
    return 42


def test_limit_loop_factories_narrows_and_resets() -> None:
    import asycamore.aio

    try:
        asycamore.aio.limit_loop_factories([AVAILABLE[-1], *UNAVAILABLE, AVAILABLE[-1]])
        assert list(asycamore.aio.loop_factories()) == [AVAILABLE[-1]]
    finally:
        asycamore.aio.limit_loop_factories(None)
    assert list(asycamore.aio.loop_factories()) == AVAILABLE
