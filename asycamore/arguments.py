"""The checks every entry point makes on its arguments, at the call.

A bad argument found later -- inside a handler, at the first connection -- costs the
user a traceback per connection in a log far from the mistake, so every function that
creates a transport or schedules work checks what it was given before it opens
anything.  A wrong type is a :class:`TypeError`, a wrong value a :class:`ValueError`,
and the message names the argument and says what would do.  A failure to listen,
bind or connect names the address (:func:`address_error`).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable
from typing import Any

__all__ = [
    "address_error",
    "check_factory",
    "check_host",
    "check_interval",
    "check_port",
    "check_timeout",
    "check_water_marks",
    "format_address",
    "join_chunks",
    "not_text",
]


def check_factory(factory: object, name: str = "protocol_factory") -> None:
    """TypeError unless *factory* is callable: a protocol factory, not a protocol."""
    if not callable(factory):
        raise TypeError(
            f"{name} must be a protocol factory (a zero-argument callable returning the "
            f"protocol: the class itself, or a lambda), not an instance: {factory!r}; "
            f"pass the class, or lambda: protocol"
        )


def check_port(port: object, name: str = "port") -> int:
    """*port*, an int in 0-65535 (TypeError for a str, a float or a bool)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int in 0-65535, not {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be in 0-65535, not {port}")
    return int(port)  # an int subclass (an IntEnum) as a plain int: getaddrinfo wants one


def check_host(host: object, name: str = "host", *, optional: bool = True) -> None:
    """TypeError unless *host* is a str (or ``None`` where *optional*)."""
    if isinstance(host, str) or (optional and host is None):
        return
    what = "a str or None" if optional else "a str"
    raise TypeError(f"{name} must be {what}, not {host!r}")


def check_timeout(
    value: object, name: str, *, optional: bool = True, positive: bool = False
) -> None:
    """A timeout in seconds: a number, not NaN, not negative (nor zero if *positive*);
    ``None`` too where *optional*.  Infinity is accepted (no limit)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        allowed = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {allowed}, not {value!r}")
    if math.isnan(value) or value < 0 or (positive and value == 0):
        allowed = "positive" if positive else "zero or positive"
        raise ValueError(f"{name} must be {allowed}, not {value!r}")


def check_interval(interval: object, name: str = "interval") -> float:
    """A repeating timer's period: a positive finite number of seconds."""
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise ValueError(f"{name} must be a positive finite number of seconds, not {interval!r}")
    value = float(interval)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number of seconds, not {interval!r}")
    return value


def check_water_marks(high: object, low: object) -> None:
    """The write-buffer water marks: ints (or ``None``), not negative, low <= high."""
    for name, value in (("high_water", high), ("low_water", low)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int number of bytes or None, not {value!r}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, not {value}")
    if isinstance(high, int) and isinstance(low, int) and low > high:
        raise ValueError(f"low_water ({low}) must not be above high_water ({high})")


def not_text(data: object, call: str) -> TypeError:
    """The error for ``write()``/``sendto()``/``send_line()`` of *data* that is not
    bytes-like (a :class:`str`, usually): it says to encode it."""
    if isinstance(data, str):
        return TypeError(f"{call} takes bytes, not str: encode it first (data.encode())")
    return TypeError(f"{call} takes a bytes-like object, not {type(data).__name__}")


def join_chunks(chunks: Iterable[Any]) -> bytes:
    """``b"".join(chunks)`` for ``writelines()``, refusing a :class:`str` chunk with the
    message of :func:`not_text` (``join``'s own does not say what to do)."""
    chunks = list(chunks)
    try:
        return b"".join(chunks)
    except TypeError:
        bad = next((chunk for chunk in chunks if isinstance(chunk, str)), chunks)
        raise not_text(bad, "writelines()") from None


def format_address(address: Any) -> str:
    """An address as people write it: ``127.0.0.1:8007``, ``[::1]:8007``, a Unix
    socket's path, anything else by ``repr``."""
    if isinstance(address, str | bytes):
        return address if isinstance(address, str) else address.decode(errors="replace")
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0] if address[0] is not None else ""
        if ":" in str(host):
            return f"[{host}]:{address[1]}"
        return f"{host}:{address[1]}"
    return repr(address)


def address_error(exc: OSError, action: str, address: Any) -> OSError:
    """*exc* with a message that names *address*, keeping its errno and kind:
    ``cannot listen on 127.0.0.1:8007: Address already in use``.

    *action* is what failed, with its preposition (``"listen on"``, ``"connect to"``).
    An error whose message names the address already is returned as it is.
    """
    where = format_address(address)
    detail = exc.strerror or str(exc)
    if where in str(exc):
        return exc
    message = f"cannot {action} {where}: {detail}"
    if exc.errno is None:
        named = type(exc)(message) if type(exc) in (OSError, TimeoutError) else OSError(message)
    elif isinstance(exc, socket.gaierror):
        named = socket.gaierror(exc.errno, message)
    else:
        named = OSError(exc.errno, message)  # OSError picks the errno's subclass
    named.__cause__ = exc.__cause__
    return named
