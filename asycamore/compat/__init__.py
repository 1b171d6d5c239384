"""Drop-in replacements for modules that left the standard library, on asycamore.

:mod:`asycamore.compat.asyncore` and :mod:`asycamore.compat.asynchat` give Python 3.11's
``asyncore`` and ``asynchat`` API (removed from the standard library in 3.12 by PEP 594)
running on asycamore backends.  :func:`install` makes the plain imports find them, so an
unmodified asyncore program needs one added line::

    import asycamore.compat; asycamore.compat.install()
    import asyncore  # asycamore.compat.asyncore
"""

from __future__ import annotations

import sys

__all__ = ["install"]


def install() -> None:
    """Make ``import asyncore`` and ``import asynchat`` give the asycamore modules.

    Sets their :data:`sys.modules` entries, replacing any module imported under those
    names before (the standard library's on 3.11, or the ``pyasyncore``/``pyasynchat``
    copies): modules that already hold a reference to one keep it, so call this before
    importing the program that uses them.  Idempotent.
    """
    from . import asynchat, asyncore

    sys.modules["asyncore"] = asyncore
    sys.modules["asynchat"] = asynchat
