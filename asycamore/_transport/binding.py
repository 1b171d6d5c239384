"""Sockets bound on every address of a name, all on one port.

``localhost`` is ``127.0.0.1`` and ``::1``, and a wildcard is ``0.0.0.0`` and ``::``: a
server listening (TCP) or bound (UDP) on a name wants one socket per address, on one
port, so that the name means one service.  :func:`bind_every_address` makes them for
both kinds of socket.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from typing import Final

from ..arguments import address_error
from .resolve import AddrInfo, is_v4_mapped

__all__ = ["bind_every_address"]

_BIND_TRIES: Final = 16  # port 0 on several addresses: tries to find a port free on all


def bind_every_address(
    infos: Sequence[AddrInfo],
    port: int,
    setup: Callable[[socket.socket], object],
    action: str = "bind to",
) -> list[socket.socket]:
    """One socket per address of *infos*, bound to the same *port*; IPv6 ``V6ONLY``.

    ``setup(sock)`` runs on each new socket before ``bind`` (socket options) and
    after it (``listen``) is the caller's business.  A failed bind names the address
    (*action* says what for: ``"listen on"``, ``"bind to"``).  With *port* 0 the first socket
    gets a free port from the kernel and the others are bound to that same port, so a
    name means one port; if that port is taken on another address, everything is
    closed and tried again with a new port (up to 16 times).  An address of a family
    this kernel does not support (``EAFNOSUPPORT``) is skipped, as long as one is left.
    IPv6 sockets are ``IPV6_V6ONLY``: ``::`` beside ``0.0.0.0`` is two sockets, each
    with its own family, never one dual-stack socket that would collide with the other.
    """
    for tries_left in range(_BIND_TRIES - 1, -1, -1):
        socks: list[socket.socket] = []
        bound = port
        try:
            for af, type_, proto, _, address in infos:
                try:
                    sock = socket.socket(af, type_, proto)
                except OSError as exc:
                    if exc.errno == errno.EAFNOSUPPORT and (socks or len(infos) > 1):
                        continue
                    raise
                socks.append(sock)
                if af == socket.AF_INET6 and not is_v4_mapped(address):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                setup(sock)
                try:
                    sock.bind((address[0], bound, *address[2:]))
                except OSError as exc:
                    raise address_error(exc, action, (address[0], bound)) from None
                if not bound:
                    bound = sock.getsockname()[1]
            if not socks:
                raise OSError(errno.EAFNOSUPPORT, "no address of a supported family")
            return socks
        except BaseException as exc:
            for sock in socks:
                sock.close()
            retry = (
                isinstance(exc, OSError)
                and exc.errno == errno.EADDRINUSE
                and not port
                and len(socks) > 1
                and tries_left
            )
            if not retry:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
