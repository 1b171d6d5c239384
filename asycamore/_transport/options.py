"""The per-transport settings as one value: :class:`TransportOptions`.

Water marks, timeouts and the TLS settings used to travel as the same keyword list
through every layer -- service method, transport function, listener, connection, TLS
layer -- and each copy was a place to forget a check.  Now the user-facing functions
take them as keyword arguments declared once (the ``TypedDict`` classes below, with
``**options: Unpack[...]``), build one frozen :class:`TransportOptions` from them,
which checks everything when it is made, and the layers below pass that value on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, TypedDict

from ..arguments import check_timeout, check_water_marks
from .base import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_LINGER,
    DEFAULT_SHUTDOWN_TIMEOUT,
    TransportCounters,
    water_marks,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "ConnectionKeywords",
    "FlowKeywords",
    "StreamKeywords",
    "TransportOptions",
]


class FlowKeywords(TypedDict, total=False):
    """The keyword arguments of flow control, which every transport has."""

    high_water: int | None
    """The write buffer's high-water mark, in bytes (``None``: the default)."""
    low_water: int | None
    """The low-water mark (``None``: a quarter of the high-water mark)."""


class StreamKeywords(FlowKeywords, total=False):
    """The keyword arguments of a stream transport (the TLS ones apply with ``ssl=``)."""

    handshake_timeout: float | None
    """Seconds a TLS handshake may take (``None``: no limit)."""
    shutdown_timeout: float | None
    """Seconds a closing TLS connection waits for its peer (``None``: no limit)."""
    strict_eof: bool
    """Whether a TCP EOF without a TLS close_notify is an error."""


class ConnectionKeywords(StreamKeywords, total=False):
    """A service's stream keyword arguments: the transport's, and the idle timeout
    that the service enforces."""

    idle_timeout: float | None
    """Seconds without a read or a write before the protocol's ``connection_idle``."""


@dataclasses.dataclass(frozen=True, slots=True)
class TransportOptions:
    """The settings of a transport, checked when the value is made.

    A wrong type raises :class:`TypeError`, a wrong value :class:`ValueError`, naming
    the field: water marks negative or with *low_water* above *high_water*, a timeout
    negative or NaN.  :attr:`marks` is the water marks with their defaults filled in.
    """

    high_water: int | None = None
    """The write buffer's high-water mark in bytes (``None``: 64 KiB, or four times
    *low_water*)."""
    low_water: int | None = None
    """The low-water mark in bytes (``None``: a quarter of the high-water mark)."""
    idle_timeout: float | None = None
    """Seconds without activity before a service calls ``connection_idle`` (``None``:
    never); a transport with one notes the time of every read and write."""
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT
    """Seconds a TLS handshake may take, from the TCP connect (``None``: no limit)."""
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT
    """Seconds a closing TLS connection waits for its peer (``None``: no limit)."""
    strict_eof: bool = False
    """Whether a TCP EOF without a TLS close_notify is an error (else an EOF)."""
    linger: float = DEFAULT_LINGER
    """Seconds a closing stream waits for its peer's EOF (see ``Connection.close``)."""
    counters: TransportCounters | None = dataclasses.field(default=None, repr=False, compare=False)
    """Where the transports made with these options count what they do (a service's
    :class:`~asycamore.tcpsocket.TransportCounters`; ``None``: nowhere).  Not a keyword
    argument of the functions that take options: a service sets it on its own."""
    marks: tuple[int, int] = dataclasses.field(init=False, repr=False, compare=False)
    """``(high, low)``: the water marks with the defaults filled in."""

    def __post_init__(self) -> None:
        check_water_marks(self.high_water, self.low_water)
        check_timeout(self.idle_timeout, "idle_timeout", positive=True)
        check_timeout(self.handshake_timeout, "handshake_timeout", positive=True)
        check_timeout(self.shutdown_timeout, "shutdown_timeout", positive=True)
        check_timeout(self.linger, "linger", optional=False)
        if not isinstance(self.strict_eof, bool):
            raise TypeError(f"strict_eof must be a bool, not {self.strict_eof!r}")
        object.__setattr__(self, "marks", water_marks(self.high_water, self.low_water))

    @property
    def tls_timeouts(self) -> bool:
        """Whether a TLS connection with these options needs timers."""
        return self.handshake_timeout is not None or self.shutdown_timeout is not None

    def merged(self, keywords: Mapping[str, Any]) -> TransportOptions:
        """These options with *keywords* (a :class:`ConnectionKeywords` or one of its
        bases) over them.

        A water mark or idle timeout of ``None`` keeps this value's (a service's
        default); the TLS settings given replace this value's, ``None`` included.
        """
        if not keywords:
            return self
        changes: dict[str, Any] = {
            name: value
            for name, value in keywords.items()
            if value is not None or name not in _INHERITED
        }
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
        return dataclasses.replace(self, **changes) if changes else self


_INHERITED: Final = frozenset({"high_water", "low_water", "idle_timeout"})
_FIELDS: Final = frozenset(field.name for field in dataclasses.fields(TransportOptions)) - {
    "counters",
    "marks",
}

DEFAULT_OPTIONS: Final = TransportOptions()
"""The options of a transport made without any."""
