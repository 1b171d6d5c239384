"""What a test left behind: a service's open transports and pending timers, and the
process's new file descriptors, each described so that a failure names it.

The pytest plugin's ``service`` fixture reports these at teardown; a test of a program
that does not use the fixture can call them itself.  No pytest here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asycamore.servicemodel import Service

__all__ = ["describe_fd", "open_fds", "service_leaks"]

# Linux lists a process's descriptors in /proc, macOS and the BSDs in /dev/fd (where
# fdescfs is mounted; without it /dev/fd shows 0-2 only, and new fds go unseen).
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def open_fds() -> set[int]:
    """The descriptors open in this process now (empty where it cannot be listed)."""
    for directory in _FD_DIRS:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        fds = set()
        for name in names:
            # The listing's own descriptor is in the list, closed by now.
            with contextlib.suppress(OSError):
                os.fstat(int(name))
                fds.add(int(name))
        return fds
    return set()


def describe_fd(fd: int) -> str:
    """``fd 7: socket 127.0.0.1:40000 -> 127.0.0.1:8007``: what *fd* is, as far as the
    OS says."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return f"fd {fd}: closed"
    if stat.S_ISSOCK(mode):
        return f"fd {fd}: {_describe_socket(fd)}"
    with contextlib.suppress(OSError):
        return f"fd {fd}: {os.readlink(f'/proc/self/fd/{fd}')}"
    kind = "pipe" if stat.S_ISFIFO(mode) else "file"
    return f"fd {fd}: {kind}"


def _describe_socket(fd: int) -> str:
    # A duplicate, so that closing the socket object leaves the test's descriptor open.
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return "socket"
    with sock:
        kind = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}.get(
            sock.type, "socket"
        )
        local = _address(sock.getsockname)
        peer = _address(sock.getpeername)
    described = f"{sock.family.name} {kind} socket {local}"
    return f"{described} -> {peer}" if peer else described


def _address(get: Any) -> str:
    try:
        address = get()
    except OSError:
        return ""
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address or "(unnamed)")


def service_leaks(service: Service) -> list[str]:
    """What *service* still has open, running or scheduled, one line each: connections
    (pipes included), listeners, datagram endpoints, child processes not yet reaped and
    timers that are not cancelled."""
    transports = service.transports
    return [
        *(f"connection {stream!r}" for stream in transports.streams),
        *(f"listener {listener!r}" for listener in transports.listeners),
        *(f"endpoint {endpoint!r}" for endpoint in transports.endpoints),
        *(f"process {process!r}" for process in transports.processes),
        *(f"timer {handle!r}" for handle in service.timers.scheduled()),
    ]
