"""Name resolution for the transports: instant for numbers, off the loop for names.

Three things live here:

- :func:`resolve`, a :func:`socket.getaddrinfo` that is exact about bad input: a host
  the ``idna`` codec cannot encode (an empty label as in ``127.0.0..1``, a label over
  63 characters, an undecodable byte smuggled in through ``surrogateescape``) or one
  with a NUL raises :class:`socket.gaierror`, like any other name that does not
  resolve, instead of a :class:`UnicodeError` from deep inside the codec.
- Localhost names (``localhost`` and ``*.localhost``) never reach the resolver: they
  are the loopback addresses, ``127.0.0.1`` and, if this machine has an IPv6 loopback,
  ``::1`` (RFC 6761 section 6.3 says resolvers should do exactly that, and many
  ``/etc/hosts`` files map ``localhost`` to only one of the two).  So ``localhost``
  means both families everywhere, and resolving it never blocks.
- :func:`resolve_later`, which runs :func:`resolve` in a worker thread (as asyncio and
  libuv do: ``getaddrinfo`` has no non-blocking form) and delivers the result on the
  loop's thread.  The delivery is a one-shot dispatch target registered in the
  caller's dispatcher: the worker writes one byte into a socket pair, the loop sees the
  read end readable and calls the callback from its handler.  The workers are a small
  pool of daemon threads (at most :data:`MAX_WORKERS`, started on demand), so a burst
  of connects does not start a thread each and a resolution that hangs in the system
  resolver never delays the interpreter's exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

from ..dispatcher import Events, IDispatchContext

__all__ = [
    "MAX_WORKERS",
    "AddrInfo",
    "Resolution",
    "check_port",
    "has_ipv6_loopback",
    "is_localhost",
    "is_v4_mapped",
    "numeric_addresses",
    "resolve",
    "resolve_later",
]

AddrInfo = tuple[int, int, int, str, Any]
"""One :func:`socket.getaddrinfo` entry: ``(family, type, proto, canonname, sockaddr)``."""

# EPIPE without SIGPIPE, even in a program that restored SIGPIPE's default action.
_NO_SIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)

MAX_WORKERS: Final = 8
"""The most resolver threads that run at once (the others wait in a queue)."""


def is_localhost(host: str | None) -> bool:
    """Whether *host* is a localhost name (``localhost``, ``*.localhost``, RFC 6761).

    Only a well-formed one: ``.localhost`` or ``a..localhost`` (an empty label) is a
    malformed name, which :func:`resolve` refuses, not a way of writing localhost.
    """
    if not host or not host.isascii():
        return False
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]  # the root label: "localhost." is fully qualified localhost
    if name != "localhost" and not name.endswith(".localhost"):
        return False
    return len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


@functools.cache
def has_ipv6_loopback() -> bool:
    """Whether a socket can be bound to ``::1`` here (checked once per process)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class _BadHostName(socket.gaierror):
    """A host the resolver must never see (it is not a name at all)."""


def _bad_name(host: object, why: object) -> socket.gaierror:
    return _BadHostName(socket.EAI_NONAME, f"malformed host name ({why})")


def _localhost(port: int, family: int, type_: int) -> list[AddrInfo]:
    proto = socket.IPPROTO_UDP if type_ == socket.SOCK_DGRAM else socket.IPPROTO_TCP
    infos: list[AddrInfo] = []
    if family in (socket.AF_UNSPEC, socket.AF_INET):
        infos.append((socket.AF_INET, type_, proto, "", ("127.0.0.1", port)))
    if family in (socket.AF_UNSPEC, socket.AF_INET6) and has_ipv6_loopback():
        infos.append((socket.AF_INET6, type_, proto, "", ("::1", port, 0, 0)))
    if not infos:
        raise socket.gaierror(socket.EAI_FAMILY, "no loopback address of that family")
    return infos


def _getaddrinfo(
    host: str | None, port: int, family: int, type_: int, flags: int
) -> list[AddrInfo]:
    try:
        infos = socket.getaddrinfo(host, port, family, type_, 0, flags)
    except UnicodeError as exc:
        # The idna codec wraps its reason ("label empty or too long") in another
        # UnicodeError; the inner one is what a user can act on.
        raise _bad_name(host, exc.__cause__ or exc) from None
    unique: list[AddrInfo] = []
    seen: set[Any] = set()
    for info in infos:
        if info[4] not in seen:
            seen.add(info[4])
            unique.append(info)
    return unique


def is_v4_mapped(address: Any) -> bool:
    """Whether a socket address is an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``).

    Such an address only works on a socket without ``IPV6_V6ONLY``: it *is* IPv4.
    """
    host = address[0] if isinstance(address, tuple) else ""
    return isinstance(host, str) and host.lower().startswith("::ffff:") and "." in host


def check_port(port: int) -> None:
    """OverflowError for a port outside 0-65535, as :meth:`socket.socket.bind` raises.

    glibc's ``getaddrinfo`` takes the port modulo 65536, so without this check port
    65589 would quietly be port 53.
    """
    if not 0 <= port <= 65535:
        raise OverflowError(f"port must be 0-65535, not {port}")


def numeric_addresses(
    host: str | None,
    port: int,
    family: int = socket.AF_UNSPEC,
    type_: int = socket.SOCK_STREAM,
    flags: int = 0,
) -> list[AddrInfo] | None:
    """The addresses of *host* if finding them cannot block, else ``None``.

    That is: a numeric address (``AI_NUMERICHOST``), ``None``/``""`` (with
    ``AI_PASSIVE`` in *flags*: every interface; else the loopback) or a localhost
    name.  A malformed host raises :class:`socket.gaierror`, a port outside 0-65535
    :class:`OverflowError`.
    """
    check_port(port)
    if is_localhost(host):
        return _localhost(port, family, type_)
    if host and "\0" in host:
        # The C library would see the name cut short at the NUL: another name.
        raise _bad_name(host, "NUL character")
    try:
        return _getaddrinfo(host or None, port, family, type_, flags | socket.AI_NUMERICHOST)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME and not isinstance(exc, _BadHostName):
            return None  # a name: it needs the resolver
        raise


def resolve(
    host: str | None,
    port: int,
    family: int = socket.AF_UNSPEC,
    type_: int = socket.SOCK_STREAM,
    flags: int = 0,
) -> list[AddrInfo]:
    """Every address of *host*:*port*, without duplicates, in the resolver's order.

    Blocks in :func:`socket.getaddrinfo` for a name (never for a number or a localhost
    name).  Raises :class:`socket.gaierror` for a name that does not resolve or is
    malformed.
    """
    infos = numeric_addresses(host, port, family, type_, flags)
    if infos is None:
        infos = _getaddrinfo(host, port, family, type_, flags)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host!r}")
    return infos


# -- resolving off the loop --------------------------------------------------------------------

Job = Callable[[], None]


class _Pool:
    """Daemon worker threads that run jobs from a queue; re-made after fork()."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.workers = 0  # threads alive
        self.idle = 0  # threads waiting for a job
        self.queued = 0  # jobs not yet taken

    def submit(self, job: Job) -> None:
        with self.lock:
            self.queued += 1
            # A new thread only when the waiting ones cannot take every queued job, so
            # one slow resolution does not hold up the next.
            spawn = self.queued > self.idle and self.workers < MAX_WORKERS
            if spawn:
                self.workers += 1
        self.jobs.put(job)
        if spawn:
            try:
                threading.Thread(target=self._work, name="asycamore-resolver", daemon=True).start()
            except BaseException:
                with self.lock:
                    self.workers -= 1
                    alone = not self.workers
                if alone:  # nobody will ever take the job: say so now
                    raise

    def _work(self) -> None:
        jobs, lock = self.jobs, self.lock
        while True:
            with lock:
                self.idle += 1
            try:
                job = jobs.get(timeout=10.0)  # idle workers leave after a while
            except queue.Empty:
                with lock:
                    self.idle -= 1
                    if not self.queued:
                        self.workers -= 1
                        return
                continue
            with lock:
                self.idle -= 1
                self.queued -= 1
            job()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _submit(job: Job) -> None:
    global _pool
    with _pool_lock:
        pool = _pool
        if pool is None or pool.pid != os.getpid():
            # First use, or a forked child: the parent's workers do not exist here.
            pool = _pool = _Pool()
    pool.submit(job)


class Resolution:
    """A resolution in progress (see :func:`resolve_later`); :meth:`cancel` drops it.

    It is also the one-shot dispatch target through which the worker thread's result
    reaches the loop: registered for reading, readable once the worker has written
    its byte.
    """

    __slots__ = ("_callback", "_context", "_fileno", "_reader", "_result", "_writer")

    def __init__(
        self,
        dispatcher: IDispatchContext,
        callback: Callable[[list[AddrInfo] | None, BaseException | None], object],
    ) -> None:
        self._context = dispatcher
        self._callback: Callable[[list[AddrInfo] | None, BaseException | None], object] | None = (
            callback
        )
        self._result: tuple[list[AddrInfo] | None, BaseException | None] = (None, None)
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        self._reader = reader
        self._fileno = reader.fileno()
        try:
            dispatcher.register(self, Events.READ)
        except BaseException:
            reader.close()
            writer.close()
            raise
        self._writer = writer

    def fileno(self) -> int:
        """The read end of the socket pair (``-1`` once done)."""
        return self._fileno

    @property
    def done(self) -> bool:
        """Whether the callback was called or the resolution cancelled."""
        return self._callback is None

    def run(self, host: str, port: int, family: int, type_: int, flags: int) -> None:
        """The worker thread's part: resolve, keep the result, wake the loop.

        The worker owns the write end and closes it: the loop never closes a socket
        another thread may be writing to (its descriptor number could be reused).
        """
        try:
            self._result = (resolve(host, port, family, type_, flags), None)
        except Exception as exc:
            self._result = (None, exc)
        with contextlib.suppress(OSError):  # cancelled: the read end is gone (EPIPE)
            self._writer.send(b"\0", _NO_SIGNAL)
        self._writer.close()

    def handle_read_event(self) -> None:
        """The result is in: deliver it (once)."""
        callback = self._callback
        self._stop()
        if callback is not None:
            infos, exc = self._result
            self._result = (None, None)
            callback(infos, exc)

    def handle_write_event(self) -> None:
        """Never called: registered for reading only."""

    def cancel(self) -> None:
        """Forget the resolution: the callback will not be called."""
        self._stop()

    def close(self) -> None:
        """The dispatch error policy's way to drop it: the same as :meth:`cancel`."""
        self._stop()

    def _stop(self) -> None:
        self._callback = None
        if self._fileno >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._context.unregister(self)
            self._reader.close()
            self._fileno = -1


def resolve_later(
    dispatcher: IDispatchContext,
    host: str,
    port: int,
    callback: Callable[[list[AddrInfo] | None, BaseException | None], object],
    *,
    family: int = socket.AF_UNSPEC,
    type_: int = socket.SOCK_STREAM,
    flags: int = 0,
) -> Resolution:
    """Resolve *host*:*port* in a worker thread; ``callback(infos, exc)`` on the loop.

    *callback* is called from a handler of *dispatcher* (so on the thread that runs its
    dispatch) with the addresses, or with ``None`` and the error
    (:class:`socket.gaierror`).  It costs a socket pair while it runs.
    """
    check_port(port)
    resolution = Resolution(dispatcher, callback)
    try:
        _submit(functools.partial(resolution.run, host, port, family, type_, flags))
    except BaseException:
        resolution.cancel()
        raise
    return resolution
