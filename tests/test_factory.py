"""The factory: discovery through entry points, BackendInfo, choosing, and the errors.

Plugins here are real installed distributions as far as importlib.metadata is concerned
(modules plus a ``.dist-info`` in a directory on ``sys.path``, see ``write_distribution``
in conftest.py); tests/test_plugins.py installs real packages with pip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import asycamore
from asycamore import (
    BackendError,
    BackendLoadError,
    BackendNotFound,
    BackendUnavailable,
    IDispatchContext,
)
from asycamore.factory import ENV_VAR

BUILTINS = {"select", "poll", "epoll", "kqueue"}
LINUX = sys.platform.startswith("linux")
KQUEUE_HERE = sys.platform == "darwin" or "bsd" in sys.platform

WriteDistribution = Callable[..., Path]


@pytest.fixture(autouse=True)
def _no_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _names() -> list[str]:
    return [info.name for info in asycamore.list_backends()]


def _info(name: str) -> asycamore.BackendInfo:
    (info,) = [info for info in asycamore.list_backends() if info.name == name]
    return info


# -- listing ----------------------------------------------------------------------------


def test_every_builtin_is_listed_as_built_in() -> None:
    infos = {info.name: info for info in asycamore.list_backends()}
    assert set(infos) >= BUILTINS
    for name in BUILTINS:
        info = infos[name]
        assert info.origin == "built-in"
        assert info.entry_point.startswith(f"asycamore.backends.{name}:")
        assert info.loaded


def test_list_is_sorted_by_priority_then_name() -> None:
    infos = asycamore.list_backends()
    assert infos == sorted(infos, key=lambda info: (-info.priority, info.name))
    builtins = [info.name for info in infos if info.name in BUILTINS]
    assert builtins == ["kqueue", "epoll", "poll", "select"]


def test_backend_info_fields() -> None:
    fields = {field.name for field in dataclasses.fields(asycamore.BackendInfo)}
    assert {"name", "available", "priority", "reason"} <= fields
    for info in asycamore.list_backends():
        assert isinstance(info.name, str)
        assert isinstance(info.available, bool)
        assert type(info.priority) is int
        assert (info.reason is None) == info.available
        assert info.reason is None or info.reason


def test_availability_matches_the_platform() -> None:
    assert _info("select").available
    assert _info("poll").available
    assert _info("epoll").available == LINUX
    kqueue = _info("kqueue")
    assert kqueue.available == KQUEUE_HERE
    if not KQUEUE_HERE:
        assert kqueue.reason is not None
        assert sys.platform in kqueue.reason


def test_best_backend_here() -> None:
    expected = "kqueue" if KQUEUE_HERE else "epoll" if LINUX else "poll"
    assert asycamore.best_backend() == expected
    with asycamore.create_dispatcher() as ctx:
        assert ctx.name == expected


# -- creating -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["select", "poll", "epoll"])
def test_create_dispatcher_by_name(name: str) -> None:
    if not _info(name).available:
        pytest.skip(f"{name} is not available here")
    ctx = asycamore.create_dispatcher(name)
    try:
        assert ctx.name == name
        assert isinstance(ctx, IDispatchContext)
        assert type(ctx).__module__ == f"asycamore.backends.{name}"
    finally:
        ctx.close()


def test_unknown_name_is_backend_not_found() -> None:
    with pytest.raises(BackendNotFound) as info:
        asycamore.create_dispatcher("no-such-backend")
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, BackendError)
    message = str(info.value)
    assert "no-such-backend" in message
    for name in BUILTINS:
        assert name in message


@pytest.mark.skipif(KQUEUE_HERE, reason="kqueue is available here")
def test_kqueue_is_unavailable_here() -> None:
    with pytest.raises(BackendUnavailable) as info:
        asycamore.create_dispatcher("kqueue")
    assert isinstance(info.value, BackendError)
    assert not isinstance(info.value, LookupError)
    assert "kqueue" in str(info.value)
    assert sys.platform in str(info.value)


def test_errors_are_exported() -> None:
    for error in (BackendNotFound, BackendUnavailable, BackendLoadError):
        assert issubclass(error, asycamore.BackendError)
        assert getattr(asycamore, error.__name__) is error
    assert issubclass(BackendNotFound, LookupError)


# -- ASYCAMORE_BACKEND ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        ("poll", "poll"),
        ("kqueue,poll", "kqueue" if KQUEUE_HERE else "poll"),
        ("no-such,select", "select"),
        (" select , poll ", "select"),
        ("select,epoll", "select"),
        ("", None),
        (" , ,", None),
    ],
)
def test_preference_list(
    monkeypatch: pytest.MonkeyPatch, preference: str, expected: str | None
) -> None:
    default = asycamore.best_backend()
    monkeypatch.setenv(ENV_VAR, preference)
    chosen = expected or default
    assert asycamore.best_backend() == chosen
    with asycamore.create_dispatcher() as ctx:
        assert ctx.name == chosen


def test_preference_of_unknown_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "nope,nada")
    for call in (asycamore.best_backend, asycamore.create_dispatcher):
        with pytest.raises(BackendNotFound) as info:
            call()
        assert isinstance(info.value, LookupError)
        assert "nope" in str(info.value)
        assert "poll" in str(info.value)  # the installed names are listed


@pytest.mark.skipif(KQUEUE_HERE, reason="kqueue is available here")
def test_preference_of_unavailable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "kqueue,nope")
    with pytest.raises(BackendUnavailable):
        asycamore.create_dispatcher()


def test_explicit_name_beats_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "select")
    with asycamore.create_dispatcher("poll") as ctx:
        assert ctx.name == "poll"


# -- plugins ------------------------------------------------------------------------------

_FAST = """
from asycamore.backends.poll import PollDispatcher


class FastDispatcher(PollDispatcher):
    name = "fast"
    priority = 100

    def __init__(self, flag=False):
        super().__init__()
        self.flag = flag


class TiedA(PollDispatcher):
    name = "apoll"
    priority = 20


class TiedZ(PollDispatcher):
    name = "zpoll"
    priority = 20
"""

_BROKEN = """
import asycamore_test_missing_dependency  # noqa: F401
"""

_BOGUS = """
from asycamore.backends.poll import PollDispatcher


def not_a_class():
    pass


class MissingMethods:
    name = "missing"
    priority = 1

    @classmethod
    def is_available(cls):
        return True


class TextPriority(PollDispatcher):
    priority = "high"


class Exploding(PollDispatcher):
    name = "exploding"

    @classmethod
    def is_available(cls):
        raise RuntimeError("probe failed")


class Unavailable(PollDispatcher):
    name = "nothere"

    @classmethod
    def is_available(cls):
        return False
"""


@pytest.fixture
def plugins(
    write_distribution: WriteDistribution,
    monkeypatch: pytest.MonkeyPatch,
    fresh_factory: None,
) -> None:
    site = write_distribution(
        "asycamore-test-fast",
        {
            "fast": "asycamore_test_fast:FastDispatcher",
            "apoll": "asycamore_test_fast:TiedA",
            "zpoll": "asycamore_test_fast:TiedZ",
        },
        {"asycamore_test_fast": _FAST},
        version="2.5",
    )
    write_distribution(
        "asycamore-test-bogus",
        {
            "broken": "asycamore_test_broken:Dispatcher",
            "notaclass": "asycamore_test_bogus:not_a_class",
            "missing": "asycamore_test_bogus:MissingMethods",
            "textprio": "asycamore_test_bogus:TextPriority",
            "exploding": "asycamore_test_bogus:Exploding",
            "nothere": "asycamore_test_bogus:Unavailable",
            "noattr": "asycamore_test_bogus:NoSuchName",
        },
        {"asycamore_test_broken": _BROKEN, "asycamore_test_bogus": _BOGUS},
    )
    monkeypatch.syspath_prepend(str(site))


def test_plugins_are_listed_with_their_distribution(plugins: None) -> None:
    infos = {info.name: info for info in asycamore.list_backends()}
    assert infos["fast"].origin == "asycamore-test-fast 2.5"
    assert infos["fast"].priority == 100
    assert infos["fast"].available
    assert infos["fast"].entry_point == "asycamore_test_fast:FastDispatcher"
    assert infos["broken"].origin == "asycamore-test-bogus 1.0"
    assert set(infos) >= BUILTINS


def test_third_party_outranks_builtins(plugins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _names()
    assert names[0] == "fast"
    assert asycamore.best_backend() == "fast"
    with asycamore.create_dispatcher() as ctx:
        assert type(ctx).__name__ == "FastDispatcher"
    monkeypatch.setenv(ENV_VAR, "broken,fast")
    assert asycamore.best_backend() == "fast"


def test_equal_priorities_sort_by_name(plugins: None) -> None:
    names = _names()
    assert names.index("apoll") < names.index("poll") < names.index("zpoll")


def test_options_reach_the_constructor(plugins: None) -> None:
    with asycamore.create_dispatcher("fast", flag=True) as ctx:
        assert ctx.flag is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("broken", ModuleNotFoundError),
        ("noattr", AttributeError),
        ("notaclass", TypeError),
        ("missing", TypeError),
        ("textprio", TypeError),
    ],
)
def test_broken_plugin(plugins: None, name: str, cause: type[Exception]) -> None:
    """Listed, unavailable with a reason, BackendLoadError with the cause chained."""
    info = _info(name)
    assert not info.available
    assert not info.loaded
    assert info.priority == 0
    assert info.reason
    assert cause.__name__ in info.reason
    with pytest.raises(BackendLoadError) as raised:
        asycamore.create_dispatcher(name)
    assert isinstance(raised.value.__cause__, cause)
    assert name in str(raised.value)


def test_broken_plugins_do_not_stop_the_others(
    plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(_names()) >= BUILTINS | {"fast", "broken", "missing"}
    for name in ("poll", "select", "fast"):
        with asycamore.create_dispatcher(name) as ctx:
            assert ctx.name in (name, "poll")
    monkeypatch.setenv(ENV_VAR, "broken,missing,select")
    assert asycamore.best_backend() == "select"
    monkeypatch.setenv(ENV_VAR, "broken")
    with pytest.raises(BackendUnavailable) as raised:
        asycamore.create_dispatcher()
    assert "broken" in str(raised.value)


def test_is_available_raising_or_false(plugins: None) -> None:
    exploding = _info("exploding")
    assert not exploding.available
    assert exploding.loaded
    assert exploding.reason is not None
    assert "probe failed" in exploding.reason
    with pytest.raises(BackendUnavailable):
        asycamore.create_dispatcher("exploding")
    nothere = _info("nothere")
    assert not nothere.available
    assert nothere.loaded
    assert nothere.priority == 20
    with pytest.raises(BackendUnavailable):
        asycamore.create_dispatcher("nothere")


def test_plugin_cannot_shadow_a_builtin(
    write_distribution: WriteDistribution,
    monkeypatch: pytest.MonkeyPatch,
    fresh_factory: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plugin that claims a built-in's name (here a broken one, first on sys.path) is
    ignored with a warning: the built-in stays listed and usable."""
    site = write_distribution(
        "asycamore-test-shadow",
        {"epoll": "asycamore_test_broken:Dispatcher", "poll": "asycamore_test_broken:X"},
        {"asycamore_test_broken": _BROKEN},
    )
    monkeypatch.syspath_prepend(str(site))
    with caplog.at_level(logging.WARNING, logger="asycamore"):
        infos = asycamore.list_backends()
    assert [info.name for info in infos].count("poll") == 1
    poll = _info("poll")
    assert poll.origin == "built-in"
    assert poll.available
    with asycamore.create_dispatcher("poll") as ctx:
        assert ctx.name == "poll"
    assert _info("epoll").origin == "built-in"
    assert "asycamore_test_broken" in caplog.text


# -- import cost ----------------------------------------------------------------------------

_PROBE = """
import json, sys
before = set(sys.modules)
import asycamore
asycamore.Events, asycamore.iterate, asycamore.IDispatchContext, asycamore.BackendError
after_import = sorted(set(sys.modules) - before)
asycamore.list_backends
after_factory = sorted(set(sys.modules) - before)
print(json.dumps([after_import, after_factory]))
"""


def test_import_asycamore_scans_nothing() -> None:
    """import asycamore imports neither stevedore, importlib.metadata nor a backend."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    after_import, after_factory = json.loads(out)

    def offending(modules: list[str]) -> list[str]:
        return [
            name
            for name in modules
            if name.split(".")[0] in ("stevedore", "pytest", "_pytest", "hypothesis")
            or name.startswith(
                (
                    "importlib.metadata",
                    "asycamore.backends",
                    "asycamore.factory",
                    "asycamore.testing",
                )
            )
        ]

    assert "asycamore" in after_import
    assert offending(after_import) == []
    # And the laziness is real: the factory arrives on first use.
    assert "asycamore.factory" in after_factory
