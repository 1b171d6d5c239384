"""A backend module whose import fails: it needs a package that is not installed."""

import asycamore_plugin_broken_missing_dependency  # type: ignore[import-not-found]  # noqa: F401


class BrokenDispatcher:
    """Never reached."""
