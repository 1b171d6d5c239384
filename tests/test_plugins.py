"""Real third-party plugins, really installed with pip into a throwaway venv.

tests/plugins/good is ``asycamore-plugin-demo`` (backend ``demo``, a working backend over
``select.poll`` with priority 100); tests/plugins/broken is ``asycamore-plugin-broken``
(backend ``broken``, whose module fails to import, and ``notabackend``, whose object is
not a backend class).  Each has its own pyproject.toml and is built by pip through its
build backend, then installed; every check runs in a new process of that venv.

Speed: the venv is made without pip, and the test environment's site-packages are made
visible in it with a ``.pth`` file (``site.addsitedir``, so an editable install's import
hook works too), so asycamore, stevedore, pytest, hypothesis and pip itself come from the
environment running these tests, installed editable or regular alike; only the plugins
are installed into the venv.  When the environment has no pip (a uv-made venv), the pip
wheel bundled with ensurepip is unpacked beside the venv and put on its path; when it has no
setuptools, pip first installs setuptools into the throwaway venv (one download instead of
one isolated build environment per plugin).  Without pip and a bundled pip wheel the tests
are skipped, and only then.

The venv lives outside /tmp when it can (/var/tmp): stevedore skips its entry-point cache
for interpreters under /tmp, and the uninstall test must run with that cache active to
show that asycamore's listing never goes stale.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PLUGINS = Path(__file__).parent / "plugins"
LINUX = sys.platform.startswith("linux")
KQUEUE_HERE = sys.platform == "darwin" or "bsd" in sys.platform
BUILTIN_DEFAULT = "kqueue" if KQUEUE_HERE else "epoll" if LINUX else "poll"


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _parent_site_dirs() -> list[str]:
    """The site directories of the environment running the tests."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dirs += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    unique: list[str] = []
    for entry in dirs:
        if entry not in unique and os.path.isdir(entry):
            unique.append(entry)
    return unique


def _base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for candidate in ("/var/tmp",):
        if os.access(candidate, os.W_OK) and not os.path.realpath(candidate).startswith("/tmp"):
            return Path(tempfile.mkdtemp(prefix="asycamore-plugins-", dir=candidate))
    return tmp_path_factory.mktemp("plugins")


def _bundled_pip_wheel() -> Path | None:
    """The pip wheel ensurepip would install (CPython's, or a distribution's copy)."""
    spec = importlib.util.find_spec("ensurepip")
    places = [Path("/usr/share/python-wheels")]
    if spec is not None and spec.origin is not None:
        places.insert(0, Path(spec.origin).parent / "_bundled")
    for place in places:
        wheels = sorted(place.glob("pip-*.whl"))
        if wheels:
            return wheels[-1]
    return None


# The plugins are built with setuptools from this environment, or from the venv itself
# (see the venv fixture), never in an isolated build environment: offline and fast.
BUILD_FLAGS = ["--no-build-isolation", "--no-index"]


@dataclass
class PluginVenv:
    """The throwaway venv with the plugins installed."""

    root: Path
    python: Path
    wheels: dict[str, Path]
    env: dict[str, str]

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's python with *args* in a new process (cwd: outside the repo)."""
        return subprocess.run(
            [str(self.python), *map(str, args)],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.root,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def check(self, *args: str | Path, env: dict[str, str] | None = None) -> str:
        """Like run(), but the command must succeed; return its stdout."""
        result = self.run(*args, env=env)
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def pip(self, *args: str | Path) -> str:
        """``python -m pip`` in the venv."""
        return self.check("-m", "pip", *args)

    def backends(self, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """``asycamore backends --json`` in a new process, by name (in listed order)."""
        rows = json.loads(self.check("-m", "asycamore", "backends", "--json", env=env))
        return {row["name"]: row for row in rows}

    def script(self, source: str, env: dict[str, str] | None = None) -> Any:
        """Run *source* in a new process; it prints one JSON value, which is returned."""
        return json.loads(self.check("-c", textwrap.dedent(source), env=env))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginVenv]:
    pip_wheel = None if _have("pip") else _bundled_pip_wheel()
    if not _have("pip") and pip_wheel is None:
        pytest.skip("pip is not available: neither here nor as ensurepip's wheel")
    root = _base_dir(tmp_path_factory)
    try:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "ASYCAMORE_BACKEND", "PYTHONSTARTUP")
        }
        env.update(
            XDG_CACHE_HOME=str(root / "cache"),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
        )
        venv_dir = root / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv_dir)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        python = venv_dir / "bin" / "python"
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        lines = [f"import site; site.addsitedir({d!r})" for d in _parent_site_dirs()]
        if pip_wheel is not None:
            # This environment (made by uv, say) has no pip: unpack ensurepip's.
            with zipfile.ZipFile(pip_wheel) as wheel_zip:
                wheel_zip.extractall(root / "pip")
            lines.append(str(root / "pip"))
        (Path(purelib) / "_asycamore_test_parent.pth").write_text("\n".join(lines) + "\n")
        plugin_venv = PluginVenv(root, python, {}, env)
        if not _have("setuptools"):
            plugin_venv.pip("install", "setuptools>=61")

        # Build the wheels from copies (a build writes into the source tree), then
        # install them: what `pip install <dir>` does, in two steps, so that a test can
        # reinstall without building again.
        sources = root / "src"
        shutil.copytree(PLUGINS, sources, ignore=shutil.ignore_patterns("__pycache__"))
        plugin_venv.pip(
            "wheel", "--no-deps", *BUILD_FLAGS, "-w", root / "wheels",
            sources / "good", sources / "broken",
        )  # fmt: skip
        for wheel in (root / "wheels").glob("*.whl"):
            plugin_venv.wheels[wheel.name.split("-")[0]] = wheel
        assert set(plugin_venv.wheels) == {"asycamore_plugin_demo", "asycamore_plugin_broken"}
        plugin_venv.pip("install", "--no-deps", "--no-index", *plugin_venv.wheels.values())
        yield plugin_venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- listing ------------------------------------------------------------------------------


def test_plugins_are_installed_in_the_venv_only(venv: PluginVenv) -> None:
    """The plugins come from the venv's own site-packages, asycamore from here."""
    where = venv.script(
        """
        import json, asycamore, asycamore_plugin_demo
        print(json.dumps([asycamore.__file__, asycamore_plugin_demo.__file__]))
        """
    )
    assert where[0] == importlib.util.find_spec("asycamore").origin  # type: ignore[union-attr]
    assert where[1].startswith(str(venv.root / "venv"))
    assert not _have("asycamore_plugin_demo")


def test_plugins_are_listed_with_their_distribution(venv: PluginVenv) -> None:
    backends = venv.backends()
    names = list(backends)
    assert names[0] == "demo"
    assert {"select", "poll", "epoll", "kqueue", "broken", "notabackend"} <= set(names)
    demo = backends["demo"]
    assert demo["available"] is True
    assert demo["priority"] == 100
    assert demo["reason"] is None
    assert demo["origin"] == "asycamore-plugin-demo 1.0.0"
    assert demo["default"] is True
    broken = backends["broken"]
    assert broken["available"] is False
    assert broken["origin"] == "asycamore-plugin-broken 0.3.0"
    assert "ModuleNotFoundError" in broken["reason"]
    assert "asycamore_plugin_broken_missing_dependency" in broken["reason"]
    notabackend = backends["notabackend"]
    assert notabackend["available"] is False
    assert "TypeError" in notabackend["reason"]
    for name in ("select", "poll"):
        assert backends[name]["available"] is True
        assert backends[name]["origin"] == "built-in"


def test_the_table_shows_the_plugins(venv: PluginVenv) -> None:
    out = venv.check("-m", "asycamore", "backends")
    assert "asycamore-plugin-demo 1.0.0" in out
    assert "ModuleNotFoundError" in out
    assert out.rstrip().endswith("default here: demo")


# -- choosing -----------------------------------------------------------------------------

_CHOOSE = """
import json, asycamore
with asycamore.create_dispatcher({name}) as ctx:
    print(json.dumps([asycamore.best_backend(), ctx.name, type(ctx).__module__]))
"""


@pytest.mark.parametrize(
    ("name", "preference", "expected"),
    [
        ("None", None, ["demo", "demo", "asycamore_plugin_demo"]),  # outranks the built-ins
        ("'demo'", None, ["demo", "demo", "asycamore_plugin_demo"]),
        ("'poll'", None, ["demo", "poll", "asycamore.backends.poll"]),
        ("None", "demo", ["demo", "demo", "asycamore_plugin_demo"]),
        ("None", "broken,notabackend,poll", ["poll", "poll", "asycamore.backends.poll"]),
        ("None", "nope,demo,poll", ["demo", "demo", "asycamore_plugin_demo"]),
    ],
)
def test_choosing(
    venv: PluginVenv, name: str, preference: str | None, expected: list[str]
) -> None:
    env = {} if preference is None else {"ASYCAMORE_BACKEND": preference}
    assert venv.script(_CHOOSE.format(name=name), env=env) == expected


def test_broken_plugins_raise_load_errors(venv: PluginVenv) -> None:
    result = venv.script(
        """
        import json, asycamore
        out = {}
        for name in ("broken", "notabackend"):
            try:
                asycamore.create_dispatcher(name)
            except asycamore.BackendLoadError as exc:
                out[name] = [type(exc.__cause__).__name__, str(exc)]
        with asycamore.create_dispatcher("select") as ctx:
            out["select"] = ctx.name
        print(json.dumps(out))
        """
    )
    assert result["broken"][0] == "ModuleNotFoundError"
    assert "broken" in result["broken"][1]
    assert result["notabackend"][0] == "TypeError"
    assert result["select"] == "select"


def test_only_broken_preferences_fail_cleanly(venv: PluginVenv) -> None:
    """ASYCAMORE_BACKEND naming only broken plugins: the CLI command that needs a backend
    fails with one line and status 2; listing still works."""
    env = {"ASYCAMORE_BACKEND": "broken"}
    result = venv.script(
        """
        import json, asycamore
        try:
            asycamore.create_dispatcher()
        except asycamore.BackendError as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
        """,
        env=env,
    )
    assert result[0] == "BackendUnavailable"
    assert "broken" in result[1]
    assert "demo" in venv.backends(env=env)


# -- the conformance kit, as a plugin author runs it --------------------------------------


def test_plugin_passes_the_conformance_kit(venv: PluginVenv) -> None:
    """pytest, in the venv, on the plugin's own test file (one import of the kit)."""
    suite = venv.root / "plugin-suite"
    suite.mkdir()
    shutil.copy(PLUGINS / "good" / "tests" / "test_demo_conformance.py", suite)
    result = venv.run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", suite, suite, timeout=300
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in summary
    assert "failed" not in summary
    assert "skipped" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 60


# -- asyncio on the plugin, and the plugin inside asyncio -----------------------------------

_ASYNCIO_ON_THE_PLUGIN = """
import asyncio, json, socket, threading, unittest
import test.test_selectors as cpython
import asycamore
from asycamore import aio
from asycamore.nesting import Readiness
from asycamore.selector import DispatchSelector

async def echo():
    async def handle(reader, writer):
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    writer.write(b"hello")
    data = await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return asyncio.get_running_loop()._selector.dispatcher.name, data.decode()

class Reader:
    def __init__(self, sock):
        self.sock, self.threads = sock, set()
    def fileno(self):
        return self.sock.fileno()
    def handle_read_event(self):
        self.threads.add(threading.get_ident())
        self.sock.recv(10)
    def handle_write_event(self):
        pass

async def hosted():
    a, b = socket.socketpair()
    with asycamore.create_dispatcher() as dispatcher:
        reader = Reader(a)
        dispatcher.register(reader)
        asyncio.get_running_loop().call_later(0.02, b.send, b"x")
        await aio.iterate(dispatcher, None, 1)
        mode = Readiness(dispatcher).mode
        return dispatcher.name, mode, reader.threads == {threading.get_ident()}

class Demo(cpython.BaseSelectorTestCase, cpython.ScalableSelectorMixIn, unittest.TestCase):
    class SELECTOR(DispatchSelector):
        def __init__(self):
            super().__init__("demo")

suite = unittest.defaultTestLoader.loadTestsFromTestCase(Demo)
result = unittest.TextTestRunner(stream=open("/dev/null", "w")).run(suite)
print(json.dumps({
    "echo": aio.run(echo()),
    "hosted": aio.run(hosted(), backend="select"),
    "selectors": [result.testsRun, len(result.failures) + len(result.errors)],
}))
"""


def test_asyncio_on_the_plugin_and_the_plugin_in_asyncio(venv: PluginVenv) -> None:
    """The demo plugin (the default there: priority 100) under an asyncio program, as
    the selector of CPython's selectors tests, and hosted by aio.iterate ("thread"
    mode: it has no fileno(), and interest() comes with the public base it is on)."""
    result = venv.script(_ASYNCIO_ON_THE_PLUGIN)
    assert result["echo"] == ["demo", "hello"]
    assert result["hosted"] == ["demo", "thread", True]
    runs, failed = result["selectors"]
    assert runs >= 16 and failed == 0


# -- uninstalling -------------------------------------------------------------------------

_STEVEDORE_NAMES = """
import json, stevedore
manager = stevedore.ExtensionManager("asycamore.backends")
print(json.dumps(sorted(manager.entry_points_names())))
"""


def test_listing_follows_reinstall_and_uninstall_at_once(venv: PluginVenv) -> None:
    """Each new process sees the plugins as installed right now:

    - reinstalling the same name and version with a changed entry point (a developer's
      ``pip install -e .`` after editing pyproject.toml) is the case where stevedore's
      entry-point cache serves the old list for a while; the listing shows the new one;
    - after an uninstall the plugin is gone from the listing and from the choice.

    stevedore's cache is active here (XDG_CACHE_HOME in the venv root, interpreter outside
    /tmp) and filled by another program; asycamore reads importlib.metadata itself.
    """
    variant = venv.root / "src-variant"
    shutil.copytree(PLUGINS / "good", variant, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = variant / "pyproject.toml"
    old_line = 'demo = "asycamore_plugin_demo:DemoDispatcher"'
    text = pyproject.read_text()
    assert old_line in text
    pyproject.write_text(text.replace(old_line, old_line.replace("demo =", "demo-renamed =")))
    venv.pip("wheel", "--no-deps", *BUILD_FLAGS, "-w", venv.root / "wheels-variant", variant)
    (variant_wheel,) = (venv.root / "wheels-variant").glob("*.whl")

    assert "demo" in venv.backends()
    assert "demo" in venv.script(_STEVEDORE_NAMES)  # another program fills the cache
    try:
        venv.pip("install", "--force-reinstall", "--no-deps", "--no-index", variant_wheel)
        backends = venv.backends()
        assert "demo-renamed" in backends
        assert "demo" not in backends
        assert backends["demo-renamed"]["default"] is True

        venv.pip("uninstall", "--yes", "asycamore-plugin-demo")
        backends = venv.backends()
        assert "demo" not in backends
        assert "demo-renamed" not in backends
        assert [name for name, row in backends.items() if row["default"]] == [BUILTIN_DEFAULT]
        assert "broken" in backends  # the other plugin is untouched
        assert venv.script(_CHOOSE.format(name="None"))[0] == BUILTIN_DEFAULT
    finally:
        venv.pip("install", "--no-deps", "--no-index", venv.wheels["asycamore_plugin_demo"])
    assert "demo" in venv.backends()
