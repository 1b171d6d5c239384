"""The exceptions raised when a backend cannot be found, run or loaded."""

from __future__ import annotations

__all__ = ["BackendError", "BackendLoadError", "BackendNotFound", "BackendUnavailable"]


class BackendError(Exception):
    """Base class of every error about choosing or loading a backend."""


class BackendNotFound(BackendError, LookupError):
    """No backend of that name is installed; the message lists the installed names."""


class BackendUnavailable(BackendError):
    """The backend is installed but cannot run here; the message says why."""


class BackendLoadError(BackendError):
    """The plugin failed to import, or its object does not implement the protocol.

    The original exception is chained as ``__cause__``.
    """
