"""The plugin's own test suite: asycamore's conformance kit against the backend."""

from asycamore_selectors import SelectorsDispatcher

from asycamore.testing import BackendConformance


class TestSelectorsDispatcher(BackendConformance):
    backend_class = SelectorsDispatcher
