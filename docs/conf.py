"""Sphinx configuration for the asycamore documentation.

Build with ``python -m nox -s docs`` (warnings are errors).  autodoc imports the
*installed* package: ``asycamore.backends`` exists only in an install, where the wheel
maps ``backends/`` to it, so the repo root is deliberately not put on ``sys.path``.
"""

from __future__ import annotations

import importlib.metadata

project = "asycamore"
author = "asycamore developers"
copyright = "asycamore developers"
release = importlib.metadata.version("asycamore")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

# No intersphinx: the docs build offline.  Unresolved references to the standard
# library stay plain text (the build is not nitpicky).
default_role = "py:obj"
exclude_patterns = ["_build"]
templates_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}
autoclass_content = "class"

html_theme = "furo"
html_title = f"asycamore {release}"
html_static_path: list[str] = []
