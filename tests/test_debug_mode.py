"""Debug mode on every built-in backend: how it is switched on, the slow-handler warning,
the thread check, the unclosed warning, and the whole conformance kit in debug mode."""

from __future__ import annotations

import functools
import gc
import logging
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest

import asycamore
from asycamore import Events, factory
from asycamore.backends.base import DispatcherBase
from asycamore.debug import ENV_VAR, creation_site, debug_enabled, warn_unclosed
from asycamore.testing import BackendConformance, RecordingTarget, Sockets

BUILTINS = [
    info.name for info in asycamore.list_backends() if info.origin == "built-in" and info.available
]


@pytest.fixture(params=BUILTINS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    factory_ = Sockets()
    yield factory_
    factory_.close_all()


@pytest.fixture(autouse=True)
def _no_debug_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _unclosed(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, ResourceWarning) and "never closed" in str(w.message)
    ]


def _sleeper(seconds: float) -> Callable[[RecordingTarget], None]:
    def on_read(me: RecordingTarget) -> None:
        me.drain()
        time.sleep(seconds)

    return on_read


def _in_thread(action: Callable[[], object]) -> BaseException | None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, name="second-thread")
    thread.start()
    thread.join()
    return raised[0] if raised else None


def _is_debug(ctx: asycamore.IDispatchContext, sockets: Sockets) -> bool:
    """Whether *ctx* is in debug mode, by what it does: it times a handler call."""
    sock, peer = sockets.pair()
    target = RecordingTarget(sock)
    ctx.register(target, Events.READ)
    peer.send(b"x")
    ctx.dispatch_once(5.0)
    ctx.unregister(target)
    return ctx.statistics().slowest_handler is not None  # type: ignore[attr-defined]


# -- switching it on ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "env", "expected"),
    [
        (None, None, False),
        (None, "1", True),
        (None, "yes", True),
        (None, "0", False),
        (None, "", False),
        (False, "1", False),
        (True, None, True),
        (True, "0", True),
    ],
)
def test_debug_enabled(
    monkeypatch: pytest.MonkeyPatch, explicit: bool | None, env: str | None, expected: bool
) -> None:
    """An explicit bool wins; otherwise ASYCAMORE_DEBUG (not empty, not 0) turns it on."""
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    assert debug_enabled(explicit) is (expected or (explicit is None and sys.flags.dev_mode))


def test_create_dispatcher_debug_true_and_false(backend: str, sockets: Sockets) -> None:
    with asycamore.create_dispatcher(backend, debug=True) as ctx:
        assert _is_debug(ctx, sockets)
    with asycamore.create_dispatcher(backend, debug=False) as ctx:
        assert not _is_debug(ctx, sockets)
    with asycamore.create_dispatcher(backend) as ctx:
        assert not _is_debug(ctx, sockets)


def test_the_environment_variable_and_explicit_false(
    backend: str, sockets: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "1")
    with asycamore.create_dispatcher(backend) as ctx:
        assert _is_debug(ctx, sockets)
    with asycamore.create_dispatcher(backend, debug=False) as ctx:
        assert not _is_debug(ctx, sockets)


_PROBE = """
import asycamore, sys
def probe(**kw):
    ctx = asycamore.create_dispatcher(sys.argv[1], **kw)
    ctx.dispatch_once(0)
    def other():
        try:
            ctx.dispatch_once(0)
        except RuntimeError:
            print("debug", end=" ")
        else:
            print("plain", end=" ")
    import threading
    t = threading.Thread(target=other)
    t.start()
    t.join()
    ctx.close()
probe()
probe(debug=False)
"""


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ([], {}, "plain plain"),
        ([], {ENV_VAR: "1"}, "debug plain"),
        (["-X", "dev"], {}, "debug plain"),
        (["-X", "dev"], {ENV_VAR: "0"}, "debug plain"),
    ],
    ids=["off", "env", "dev-mode", "dev-mode-env-0"],
)
def test_in_a_real_process(
    backend: str, flags: list[str], env: dict[str, str], expected: str
) -> None:
    """ASYCAMORE_DEBUG=1 and python -X dev turn it on in a new process; debug=False
    wins over both."""
    environ = {k: v for k, v in os.environ.items() if k != ENV_VAR} | env
    out = subprocess.run(
        [sys.executable, *flags, "-c", _PROBE, backend],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    ).stdout
    assert out.strip() == expected


class _NoDebug(DispatcherBase):
    """A backend on the base whose constructor takes no ``debug``."""

    name = "nodebug"
    priority = 0

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def is_available(cls) -> bool:
        return True

    def kernel_add(self, fd: int, events: int) -> None:
        pass

    def kernel_remove(self, fd: int, events: int) -> None:
        pass

    def kernel_poll(self, timeout: float | None) -> list[tuple[object, int]]:  # type: ignore[override]
        return []


def test_a_backend_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_dispatcher(debug=...) of a backend without the parameter: TypeError;
    without debug=, even with the environment variable set, it is created."""
    monkeypatch.setattr(factory, "backend_class", lambda name=None: _NoDebug)
    for debug in (True, False):
        with pytest.raises(TypeError, match="debug"):
            asycamore.create_dispatcher("nodebug", debug=debug)
    monkeypatch.setenv(ENV_VAR, "1")
    ctx = asycamore.create_dispatcher("nodebug")
    assert isinstance(ctx, _NoDebug)
    ctx.close()


# -- the slow handler ---------------------------------------------------------------------


def test_a_slow_handler_is_named_once(
    backend: str, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler sleeping 0.15 s over the default threshold (0.1 s): one WARNING on
    "asycamore" with the target's repr, the handler's name and the duration."""
    ctx = asycamore.create_dispatcher(backend, debug=True)
    assert ctx.slow_handler_threshold == 0.1  # type: ignore[attr-defined]
    sock, peer = sockets.pair()
    slow = RecordingTarget(sock, name="slowpoke", on_read=_sleeper(0.15))
    fast_sock, fast_peer = sockets.pair()
    fast = RecordingTarget(fast_sock, name="quick")
    ctx.register(slow, Events.READ)
    ctx.register(fast, Events.READ)
    peer.send(b"x")
    fast_peer.send(b"x")
    with caplog.at_level(logging.DEBUG, logger="asycamore"):
        assert ctx.dispatch_once(5.0) == 2
    records = [r for r in caplog.records if r.name == "asycamore"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "<RecordingTarget slowpoke>" in message and "handle_read_event" in message
    assert "quick" not in message
    match = re.search(r"took (\d+\.\d+) s", message)
    assert match is not None and float(match.group(1)) >= 0.15, message
    seconds, where, handler = ctx.statistics().slowest_handler  # type: ignore[attr-defined]
    assert seconds >= 0.15 and where == "<RecordingTarget slowpoke>"
    assert handler == "handle_read_event"
    assert ctx.statistics().time_dispatching >= 0.15  # type: ignore[attr-defined]
    ctx.close()


def test_the_threshold_is_settable_and_plain_mode_never_warns(
    backend: str, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    for options in ({"debug": True}, {"debug": False}):
        ctx = asycamore.create_dispatcher(backend, **options)
        if options["debug"]:
            ctx.slow_handler_threshold = 1.0  # type: ignore[attr-defined]
        sock, peer = sockets.pair()
        ctx.register(RecordingTarget(sock, on_read=_sleeper(0.15)), Events.READ)
        peer.send(b"x")
        with caplog.at_level(logging.DEBUG, logger="asycamore"):
            assert ctx.dispatch_once(5.0) == 1
        ctx.close()
    assert not [r for r in caplog.records if r.name == "asycamore"]


def test_a_slow_write_handler_and_an_error_are_timed(
    backend: str, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    """A write handler that sleeps, then raises: warned of, and still an error."""
    ctx = asycamore.create_dispatcher(backend, debug=True)
    ctx.slow_handler_threshold = 0.05  # type: ignore[attr-defined]
    sock, _ = sockets.pair()

    def slow_failure(me: RecordingTarget) -> None:
        time.sleep(0.06)
        raise ValueError("late and wrong")

    target = RecordingTarget(sock, on_write=slow_failure)
    ctx.register(target, Events.WRITE)
    errors: list[Exception] = []
    with caplog.at_level(logging.WARNING, logger="asycamore"):
        ctx.dispatch_once(5.0, lambda t, exc: errors.append(exc))
    assert len(errors) == 1
    assert ["handle_write_event" in r.getMessage() for r in caplog.records] == [True]
    s = ctx.statistics()  # type: ignore[attr-defined]
    assert s.handler_errors == 1 and s.slowest_handler[2] == "handle_write_event"
    ctx.close()


# -- the thread check ---------------------------------------------------------------------


def test_another_thread_is_refused(backend: str, sockets: Sockets) -> None:
    """Any thread may build the context; once the main thread dispatched, a second
    thread's register/modify/unregister/dispatch_once raise RuntimeError naming both."""
    ctx = asycamore.create_dispatcher(backend, debug=True)
    sock, _ = sockets.pair()
    target = RecordingTarget(sock)
    assert _in_thread(lambda: ctx.register(target, Events.READ)) is None
    ctx.dispatch_once(0)
    other_sock, _ = sockets.pair()
    other = RecordingTarget(other_sock)
    for call in (
        lambda: ctx.register(other, Events.READ),
        lambda: ctx.modify(target, Events.WRITE),
        lambda: ctx.unregister(target),
        lambda: ctx.dispatch_once(0),
        lambda: ctx.register(other, events=Events.READ),
    ):
        exc = _in_thread(call)
        assert isinstance(exc, RuntimeError)
        assert "'second-thread'" in str(exc) and "'MainThread'" in str(exc)
    assert target in ctx and other not in ctx
    ctx.modify(target, Events.WRITE)  # the dispatching thread may
    ctx.close()


def test_the_thread_that_dispatches_owns_the_context(backend: str) -> None:
    """Built in the main thread, dispatched in a worker: then the main thread is refused."""
    ctx = asycamore.create_dispatcher(backend, debug=True)
    assert _in_thread(lambda: ctx.dispatch_once(0)) is None
    with pytest.raises(RuntimeError, match="second-thread"):
        ctx.dispatch_once(0)
    ctx.close()


# -- the unclosed warning -----------------------------------------------------------------


class _Subclass(DispatcherBase):
    """A plugin-style subclass with an ``__init__`` of its own."""

    name = "sub"
    priority = 0

    def __init__(self, *, debug: bool | None = None) -> None:
        super().__init__(debug=debug)

    @classmethod
    def is_available(cls) -> bool:
        return True


def _line() -> int:
    return sys._getframe(1).f_lineno


def test_an_unclosed_context_names_the_line_that_created_it(backend: str) -> None:
    """Through the factory, the backend class, or a subclass's own __init__: the site is
    the line here, not asycamore's; a closed context and plain mode warn nothing."""
    cls = _class_of(backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines = [_line() + 1]
        a = asycamore.create_dispatcher(backend, debug=True)
        lines.append(_line() + 1)
        b = cls(debug=True)  # type: ignore[call-arg]
        lines.append(_line() + 1)
        c = _Subclass(debug=True)
        closed = asycamore.create_dispatcher(backend, debug=True)
        closed.close()
        plain = asycamore.create_dispatcher(backend, debug=False)
        del a, b, c, closed, plain
        gc.collect()
    messages = _unclosed(caught)
    assert len(messages) == 3, messages
    for line in lines:
        assert sum(f"{__file__}:{line}" in m for m in messages) == 1, (line, messages)
    assert any(m.startswith(f"{backend} dispatch context was never closed") for m in messages)
    assert all("asycamore/backends" not in m and "factory.py" not in m for m in messages)


def test_warn_unclosed_and_creation_site_for_other_objects() -> None:
    """The helper the service uses: arm in the constructor, disarm in close()."""

    class Resource:
        def __init__(self) -> None:
            self.site = creation_site(self)
            self.disarm = warn_unclosed(self, "resource")

        def close(self) -> None:
            self.disarm()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line() + 1
        kept, dropped = Resource(), Resource()
        assert kept.site == f"{__file__}:{line}"
        kept.close()
        del kept, dropped
        gc.collect()
    assert _unclosed(caught) == [f"resource was never closed; created at {__file__}:{line}"]


# -- the whole kit in debug mode -----------------------------------------------------------


def _debug_factory(cls: type) -> Callable[..., object]:
    @pytest.fixture
    def backend_factory(self: object) -> Callable[..., asycamore.IDispatchContext]:
        """The backend class, with debug=True."""
        return functools.partial(cls, debug=True)

    return backend_factory


def _class_of(name: str) -> type:
    with asycamore.create_dispatcher(name, debug=False) as probe:
        return type(probe)


# The whole kit in debug mode on one backend: the timed loop is the base's, the same for
# every backend, and poll is the one whose kernel_poll also reports closed descriptors
# (the loop's CLOSED path).  The other backends' debug behaviours are tested above; the
# kit on each of them in plain mode is tests/test_conformance.py.
_KIT_BACKEND = "poll" if "poll" in BUILTINS else BUILTINS[0]
TestDebugConformance = type(
    "TestDebugConformance",
    (BackendConformance,),
    {
        "backend_factory": _debug_factory(_class_of(_KIT_BACKEND)),
        "__module__": __name__,
        "__doc__": f"The conformance kit against {_KIT_BACKEND!r} in debug mode.",
    },
)


# -- Service(debug=...) ---------------------------------------------------------------------


def test_an_unclosed_service_names_the_line_that_created_it(backend: str) -> None:
    from asycamore.servicemodel import Service

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line() + 1
        dropped = Service(backend, debug=True)
        with Service(backend, debug=True) as closed:
            assert closed.debug and closed.dispatcher.statistics() is not None
        plain = Service(backend, debug=False)
        plain_context = plain.dispatcher
        del dropped, closed
        gc.collect()
        plain.close()
    messages = _unclosed(caught)
    # The service and the context it made, each named at the user's line.
    assert sorted(m.split(" was never closed")[0] for m in messages) == sorted(
        ["Service", f"{backend} dispatch context"]
    ), messages
    assert all(f"{__file__}:{line}" in m for m in messages), messages
    assert plain_context is not None


def test_service_debug_reaches_its_context_and_follows_the_environment(
    backend: str,
    sockets: Sockets,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asycamore.servicemodel import Service

    sock, peer = sockets.pair()
    slow = RecordingTarget(sock, name="slowpoke", on_read=_sleeper(0.15))
    with Service(backend, debug=True) as service:
        assert service.debug
        service.dispatcher.register(slow, Events.READ)
        peer.send(b"x")
        with caplog.at_level(logging.WARNING, logger="asycamore"):
            service.run_once(1)
        service.dispatcher.unregister(slow)
    assert any("handle_read_event" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(ENV_VAR, "1")
    with Service(backend) as service:
        assert service.debug
    with Service(backend, debug=False) as service:
        assert not service.debug


def test_service_debug_must_be_a_bool() -> None:
    from asycamore.servicemodel import Service

    with pytest.raises(TypeError, match="debug"):
        Service(debug="yes")  # type: ignore[arg-type]
