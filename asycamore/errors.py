"""asycamore's own exceptions: a backend that cannot be found, run or loaded, and bad
input to a command or service (:class:`UsageError`)."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendLoadError",
    "BackendNotFound",
    "BackendUnavailable",
    "UsageError",
]


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


class UsageError(Exception):
    """Bad input from the user (an address, a port, an option value).

    The command line reports it as one line on stderr and exits with status 2; the
    services the commands run raise it so that they need not know about the command
    line.
    """
