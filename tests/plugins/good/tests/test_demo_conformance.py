"""The plugin's own test suite: the asycamore conformance kit, with one import."""

from asycamore_plugin_demo import DemoDispatcher

from asycamore.testing import BackendConformance


class TestDemoConformance(BackendConformance):
    backend_class = DemoDispatcher
