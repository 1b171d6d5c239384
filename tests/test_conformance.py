"""The conformance kit (:mod:`asycamore.testing`) run against every built-in backend.

The backends are discovered through :func:`asycamore.list_backends`, exactly as a user's
program finds them; none is imported by name.  One test class per available built-in
backend is generated below.
"""

from __future__ import annotations

import sys

import asycamore
from asycamore.testing import BackendConformance


def _builtin_classes() -> dict[str, type[asycamore.IDispatchContext]]:
    classes = {}
    for info in asycamore.list_backends():
        if info.origin != "built-in" or not info.available:
            continue
        with asycamore.create_dispatcher(info.name) as probe:
            classes[info.name] = type(probe)
    return classes


BUILTIN_CLASSES = _builtin_classes()

for _name, _cls in BUILTIN_CLASSES.items():
    _test_class = type(
        f"Test{_name.capitalize()}Conformance",
        (BackendConformance,),
        {
            "backend_class": _cls,
            "__module__": __name__,
            "__doc__": f"The conformance kit against the built-in {_name!r} backend.",
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
