"""The conformance kit (:mod:`asycamore.testing`) run against every backend here.

The built-in backends are discovered through :func:`asycamore.list_backends`, exactly as
a user's program finds them; none is imported by name.  The repository's two plugins on
the public base -- the documented example (``docs/examples/asycamore-selectors``) and
the demo plugin of ``tests/test_plugins.py`` -- are loaded from their files, so what the
base does for every plugin (the ``register()`` check, say) is checked on plugins too.
One test class per available backend is generated below.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import asycamore
from asycamore.testing import BackendConformance

ROOT = Path(__file__).resolve().parent.parent


def _builtin_classes() -> dict[str, type[asycamore.IDispatchContext]]:
    classes = {}
    for info in asycamore.list_backends():
        if info.origin != "built-in" or not info.available:
            continue
        with asycamore.create_dispatcher(info.name) as probe:
            classes[info.name] = type(probe)
    return classes


def _plugin_class(path: Path, class_name: str) -> type[asycamore.IDispatchContext]:
    """*class_name* from the plugin module at *path*, loaded under a name of its own (so
    that an installed copy of the plugin is neither used nor shadowed)."""
    spec = importlib.util.spec_from_file_location(f"_conformance_{class_name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls: type[asycamore.IDispatchContext] = getattr(module, class_name)
    return cls


BUILTIN_CLASSES = _builtin_classes()
PLUGIN_CLASSES = {
    "SelectorsExample": _plugin_class(
        ROOT / "docs" / "examples" / "asycamore-selectors" / "asycamore_selectors.py",
        "SelectorsDispatcher",
    ),
    "DemoPlugin": _plugin_class(
        ROOT / "tests" / "plugins" / "good" / "asycamore_plugin_demo" / "__init__.py",
        "DemoDispatcher",
    ),
}

for _name, _cls, _what in [
    *(
        (name.capitalize(), cls, f"the built-in {name!r} backend")
        for name, cls in BUILTIN_CLASSES.items()
    ),
    *((name, cls, f"the plugin {cls.__qualname__}") for name, cls in PLUGIN_CLASSES.items()),
]:
    _test_class = type(
        f"Test{_name}Conformance",
        (BackendConformance,),
        {
            "backend_class": _cls,
            "__module__": __name__,
            "__doc__": f"The conformance kit against {_what}.",
        },
    )
    globals()[_test_class.__name__] = _test_class


def test_the_expected_builtins_are_covered() -> None:
    """Discovery really found the built-ins this platform must have."""
    expected = {"select", "poll"}
    if sys.platform.startswith("linux"):
        expected.add("epoll")
    if sys.platform == "darwin" or "bsd" in sys.platform:
        expected.add("kqueue")
    assert expected <= set(BUILTIN_CLASSES)
    generated = {name for name in globals() if name.endswith("Conformance")}
    assert {f"Test{name.capitalize()}Conformance" for name in expected} <= generated
