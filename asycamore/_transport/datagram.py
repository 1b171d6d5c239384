"""A datagram (UDP) socket as a transport: :class:`DatagramEndpoint`.

How an endpoint works, and why
==============================

An endpoint is one UDP socket, bound (it talks to anyone: every datagram carries its
peer's address) or connected (it talks to one peer, and the kernel filters out every
other sender and reports that peer's ICMP errors).  Like a stream
:class:`~.stream.Connection` it is built on :class:`~.base.Transport`, so the water
marks and ``pause_writing``/``resume_writing`` mean the same thing.

Reading: a readable event makes up to ``read_batch`` ``recvfrom_into`` calls into a
receive buffer shared with the loop's other transports, and hands each datagram to
``handler.datagram_received(data, addr)``.  The buffer holds at least
:data:`MAX_DATAGRAM_SIZE` bytes, more than the largest datagram UDP can carry, so a
datagram is never truncated (``recvfrom_into`` does not report truncation).  The batch
bound keeps one busy socket from starving the loop's other targets; level-triggered
readiness brings the endpoint back for the rest.

Errors: the kernel reports some failures on the socket after the fact -- an ICMP port
unreachable for an earlier datagram arrives as ``ECONNREFUSED`` on the next call, on a
connected endpoint (Linux, like the BSDs, reports ICMP errors only on connected UDP
sockets).  Such errors concern one datagram, not the endpoint: they go to
``handler.error_received(exc)`` and the endpoint stays open.  Only an error that means
the socket itself is gone (``EBADF``, ``ENOTSOCK``) closes it.

Writing: :meth:`~DatagramEndpoint.sendto` sends at once when nothing is queued.  What
the socket cannot take now (``EAGAIN``: its send buffer is full) is queued whole, and
sent in order when the socket is writable again.  Above the high-water mark the
handler's ``pause_writing()`` is called and the endpoint stops reading, as a stream
connection does: for UDP that means the kernel drops what arrives meanwhile, which is
UDP's own back-pressure, and keeps the memory of a flooded echo bounded by the mark.
At the low-water mark reading resumes and ``resume_writing()`` is called.

Too large: a datagram over the family's limit (65,507 bytes of payload over IPv4,
65,527 over IPv6) can never be sent, whatever the network: that is the caller's bug,
and :meth:`~DatagramEndpoint.sendto` raises :class:`DatagramTooLarge` (an
:class:`OSError` with ``errno.EMSGSIZE``) before touching the socket.  An
``EMSGSIZE`` the kernel returns for a smaller datagram (a path MTU with
``IP_PMTUDISC_DO``) is a network condition: ``error_received``, as for ICMP errors.
"""

from __future__ import annotations

import collections
import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypedDict

from ..arguments import address_error, check_factory, check_host, check_port, not_text
from ..dispatcher import IDispatchContext
from .base import CLOSED, CLOSING, EVENTS, OPEN, READ, WRITE, Transport, default_recv_buffer, log
from .binding import bind_every_address
from .options import DEFAULT_OPTIONS, FlowKeywords, TransportOptions
from .resolve import is_v4_mapped, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

# The public names are asycamore.udpsocket's list: this module is its implementation.

MAX_PAYLOAD_IPV4: Final = 65507
"""The largest UDP payload over IPv4: 65,535 minus the 20-byte IP and 8-byte UDP
headers."""

MAX_PAYLOAD_IPV6: Final = 65527
"""The largest UDP payload over IPv6 (without jumbograms): 65,535 minus the 8-byte UDP
header (the IPv6 header is not counted in its payload length)."""

MAX_DATAGRAM_SIZE: Final = 65536
"""The smallest receive buffer an endpoint accepts: more than any datagram."""

_OFF_FLOW: Final = 2  # the queue is above the high-water mark
_OFF_CLOSING: Final = 4  # close() is flushing

# Errors after which the socket itself is unusable: the endpoint closes.
_FATAL: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


class DatagramSocketKeywords(TypedDict, total=False):
    """The keyword arguments that make a UDP socket (see :func:`create_datagram_socket`)."""

    family: int
    """``socket.AF_INET`` or ``AF_INET6`` to choose among a name's addresses (default:
    any)."""
    reuse_port: bool
    """Set ``SO_REUSEPORT`` (several sockets, in several processes, on one port)."""
    allow_broadcast: bool
    """Set ``SO_BROADCAST`` (sending to a broadcast address fails with ``EACCES``
    otherwise)."""
    socket_buffer_size: int | None
    """``SO_RCVBUF`` and ``SO_SNDBUF``, in bytes (the kernel caps them)."""


class DatagramKeywords(DatagramSocketKeywords, FlowKeywords, total=False):
    """The keyword arguments of a UDP endpoint: its socket's and its water marks."""


_SOCKET_KEYWORDS: Final = frozenset(DatagramSocketKeywords.__annotations__)


def _split(
    keywords: DatagramKeywords,
) -> tuple[DatagramSocketKeywords, dict[str, Any]]:
    """*keywords* as the socket's and the flow control's."""
    sock: dict[str, Any] = {}
    flow: dict[str, Any] = {}
    for name, value in keywords.items():
        (sock if name in _SOCKET_KEYWORDS else flow)[name] = value
    return sock, flow  # type: ignore[return-value]


class DatagramTooLarge(OSError):
    """:meth:`DatagramEndpoint.sendto` of more than the family's maximum payload.

    ``errno`` is :data:`errno.EMSGSIZE`.  Nothing was sent or queued.
    """


class DatagramHandler(Protocol):
    """The callbacks a :class:`DatagramEndpoint` makes; any object with them will do.

    :class:`asycamore.servicemodel.DatagramProtocol` is a ready-made base class.
    Optional extras, looked up once when the endpoint is made: ``pause_writing()`` and
    ``resume_writing()`` (the send queue crossed the water marks), and
    ``receive_memoryview`` (attribute: when true, :meth:`datagram_received` gets a
    :class:`memoryview` of the shared receive buffer, valid only during the call).
    """

    def connection_made(self, endpoint: DatagramEndpoint) -> None:
        """The endpoint is ready; *endpoint* is its transport."""
        ...

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram (possibly empty) arrived from *addr*."""
        ...

    def error_received(self, exc: OSError) -> None:
        """The kernel reported an error for an earlier datagram (ICMP port
        unreachable: ``ECONNREFUSED``; ``EMSGSIZE``...).  The endpoint stays open."""
        ...

    def connection_lost(self, exc: BaseException | None) -> None:
        """The endpoint is closed: *exc* is ``None`` for a normal close, else why."""
        ...


def _max_payload(sock: socket.socket) -> int:
    return MAX_PAYLOAD_IPV6 if sock.family == socket.AF_INET6 else MAX_PAYLOAD_IPV4


class DatagramEndpoint(Transport):
    """A UDP socket as a dispatch target: the transport of one handler.

    *sock* is a datagram socket, bound or connected (see :func:`create_datagram_socket`);
    it is made non-blocking.  With ``start=True`` (the default) the endpoint
    registers itself in *dispatcher* for reading and calls
    ``handler.connection_made(self)``.  The module docstring explains reading
    (*read_batch* datagrams per readable event into *recv_buffer*, default
    :func:`~asycamore.tcpsocket.default_recv_buffer`), the send queue and its water
    marks (*high_water*, *low_water*, as for streams), and which errors go to
    ``handler.error_received`` and which close the endpoint.  The water marks are
    those of *options* (a :class:`~asycamore.tcpsocket.TransportOptions`).
    ``handler.connection_lost(exc)`` is called exactly once; *on_close*, if given,
    after it.
    """

    __slots__ = (
        "_deliver",
        "_max_payload",
        "_queue",
        "_read_batch",
        "_recv_buffer",
        "_remote",
        "_wants_views",
    )

    _handler: DatagramHandler | None

    def __init__(
        self,
        dispatcher: IDispatchContext,
        sock: socket.socket,
        handler: DatagramHandler,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        recv_buffer: memoryview | None = None,
        read_batch: int = 16,
        on_close: Callable[[DatagramEndpoint], object] | None = None,
        start: bool = True,
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("a datagram endpoint needs a SOCK_DGRAM socket")
        if recv_buffer is None:
            recv_buffer = default_recv_buffer()
        if recv_buffer.nbytes < MAX_DATAGRAM_SIZE:
            raise ValueError(f"recv_buffer must hold at least {MAX_DATAGRAM_SIZE} bytes")
        if read_batch < 1:
            raise ValueError("read_batch must be at least 1")
        super().__init__(dispatcher, sock, handler, options, on_close)
        self._recv_buffer = recv_buffer
        self._read_batch = read_batch
        self._wants_views = bool(getattr(handler, "receive_memoryview", False))
        self._deliver: Callable[[Any, Any], object] = handler.datagram_received
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._max_payload = _max_payload(sock)
        try:
            self._remote: Any = sock.getpeername()
        except OSError:
            self._remote = None
        if start:
            self.start()

    def start(self) -> None:
        """Register for reading and call ``handler.connection_made(self)``.

        If the dispatcher refuses the descriptor, the socket is closed, the handler is
        never told, and the dispatcher's error propagates.
        """
        if self._state == OPEN and not self._events:
            try:
                self._context.register(self, EVENTS[READ])
            except BaseException:
                self._release()
                raise
            self._events = READ
        handler = self._handler
        if handler is not None:
            handler.connection_made(self)

    # -- the dispatch target ---------------------------------------------------------------

    def handle_read_event(self) -> None:
        """Receive up to ``read_batch`` datagrams and deliver them."""
        recvfrom_into = self._sock.recvfrom_into
        buffer = self._recv_buffer
        views = self._wants_views
        counters = self._counters
        for _ in range(self._read_batch):
            try:
                n, addr = recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._error(exc)
                return
            if counters is not None:
                counters.datagrams_received += 1
                counters.bytes_received += n
            if views:
                self._deliver(buffer[:n], addr)
            else:
                self._deliver(buffer[:n].tobytes(), addr)
            if self._read_off or self._state != OPEN:
                return  # paused, flow-controlled or closed by the handler

    def handle_write_event(self) -> None:
        """Send what is queued, in order, until the socket's buffer is full again."""
        queue = self._queue
        sock = self._sock
        counters = self._counters
        while queue:
            data, addr = queue[0]
            try:
                if addr is None:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                queue.popleft()
                self._buffered -= len(data)
                self._error(exc)
                if self._state == CLOSED:
                    return
                continue
            queue.popleft()
            self._buffered -= len(data)
            if counters is not None:
                counters.datagrams_sent += 1
                counters.bytes_sent += len(data)
        if self._read_off & _OFF_FLOW and self._buffered <= self._low:
            self._read_off &= ~_OFF_FLOW
            if self._state == OPEN:
                self._resume_handler()
        if not queue and self._state == CLOSING:
            self._finish(None)
            return
        self._update_interest()

    # -- public API -------------------------------------------------------------------------

    @property
    def remote_address(self) -> Any:
        """The peer of a connected endpoint (``getpeername()``), ``None`` if unconnected."""
        return self._remote

    @property
    def max_payload(self) -> int:
        """The largest datagram :meth:`sendto` accepts: 65,507 bytes over IPv4, 65,527
        over IPv6."""
        return self._max_payload

    @property
    def address(self) -> Any:
        """The bound address (``getsockname()``; ``None`` once closed)."""
        return self.getsockname()

    @property
    def port(self) -> int:
        """The bound port (``0`` once closed)."""
        address = self.getsockname()
        return address[1] if isinstance(address, tuple) else 0

    @property
    def reading(self) -> bool:
        """Whether the endpoint is currently reading from its socket."""
        return self._state == OPEN and not self._read_off

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram, *data*, to *addr* (a numeric address tuple).

        A connected endpoint sends to its peer: *addr* must be ``None`` or that peer.
        Never blocks: what the socket cannot take at once is queued (see the module
        docstring for the water marks).  Raises :class:`DatagramTooLarge` for more than
        :attr:`max_payload` bytes, :class:`ValueError` for a missing or foreign
        *addr*.  An error the kernel returns for this datagram goes to
        ``handler.error_received``.  After :meth:`close` or :meth:`abort` datagrams
        are dropped.
        """
        if isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, bytes | bytearray):
            size = len(data)
        else:
            raise not_text(data, "sendto()")
        if size > self._max_payload:
            raise DatagramTooLarge(
                errno.EMSGSIZE,
                f"a datagram of {size} bytes is over the maximum of {self._max_payload}",
            )
        remote = self._remote
        if remote is not None:
            if addr is not None and tuple(addr[:2]) != tuple(remote[:2]):
                raise ValueError(f"this endpoint is connected to {remote!r}, not {addr!r}")
            addr = None
        elif addr is None:
            raise ValueError("an unconnected endpoint needs an address to send to")
        if self._state != OPEN:
            return
        if not self._queue:
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._error(exc)
                return
            else:
                counters = self._counters
                if counters is not None:
                    counters.datagrams_sent += 1
                    counters.bytes_sent += size
                return
        self._queue.append((bytes(data), addr))
        self._buffered += size
        if self._buffered > self._high and not self._read_off & _OFF_FLOW:
            self._read_off |= _OFF_FLOW
            self._pause_handler()
        self._update_interest()

    def close(self) -> None:
        """Close gracefully: stop reading, send what is queued, then close.

        ``handler.connection_lost(None)`` is called once the socket is closed (at once
        if nothing is queued).  Idempotent.
        """
        if self._state != OPEN:
            return
        if not self._queue or self not in self._context:
            self._finish(None)
            return
        self._state = CLOSING
        self._read_off |= _OFF_CLOSING
        self._update_interest()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, dropping what is queued; ``connection_lost(exc)`` follows."""
        self._finish(exc)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "closed")[self._state]
        peer = f" to {self._remote!r}" if self._remote is not None else ""
        return f"<DatagramEndpoint fd={self._fileno}{peer} {state} queued={self._buffered}>"

    # -- internals --------------------------------------------------------------------------

    def _limits_changed(self) -> None:
        if self._state != OPEN:
            return
        if self._read_off & _OFF_FLOW:
            if self._buffered <= self._low:
                self._read_off &= ~_OFF_FLOW
                self._resume_handler()
        elif self._buffered > self._high:
            self._read_off |= _OFF_FLOW
            self._pause_handler()
        self._update_interest()

    def _update_interest(self) -> None:
        if self._state == CLOSED:
            return
        events = (0 if self._read_off else READ) | (WRITE if self._queue else 0)
        if events != self._events:
            self._events = events
            self._context.modify(self, EVENTS[events])

    def _error(self, exc: OSError) -> None:
        if exc.errno in _FATAL:
            self._finish(exc)
            return
        handler = self._handler
        report = getattr(handler, "error_received", None)
        if report is not None:
            report(exc)
        else:
            log.warning("%r: %s", self, exc)

    def _release(self) -> DatagramHandler | None:
        self._state = CLOSED
        self._unregister()
        self._sock.close()
        self._fileno = -1
        self._queue.clear()
        self._buffered = 0
        handler = self._handler
        self._handler = None
        self._deliver = _no_datagram
        return handler


def _no_datagram(data: bytes, addr: Any) -> None:
    pass


def create_datagram_socket(
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    remote: tuple[str, int] | None = None,
    **socket_options: Unpack[DatagramSocketKeywords],
) -> socket.socket:
    """A non-blocking UDP socket bound to *host*:*port* and, with *remote*, connected.

    With *remote* = ``(rhost, rport)`` the socket is connected to the first address
    *rhost* resolves to (a UDP connect sends nothing: it fixes the peer, filters
    other senders and makes ICMP errors visible) and bound to *host*:*port* if *host*
    is not ``None`` (else the kernel picks the local address; ``""`` is the
    wildcard address).  Without *remote*, it
    is bound to the first address of *host* (``None`` or ``""``: every interface).

    ``SO_REUSEPORT`` only with *reuse_port*; ``SO_BROADCAST`` only with
    *allow_broadcast* (sending to a broadcast address otherwise fails with
    ``EACCES``).  *socket_buffer_size* sets ``SO_RCVBUF`` and ``SO_SNDBUF`` (bytes;
    the kernel caps it at ``net.core.rmem_max``/``wmem_max``): the kernel drops
    datagrams that arrive while the receive buffer is full, so a server that takes
    bursts of large datagrams wants more than the default (about 208 KiB on Linux,
    three 64 KiB datagrams).  IPv6 sockets are ``IPV6_V6ONLY``.  Names are resolved with a
    blocking :func:`socket.getaddrinfo` (never numbers or ``localhost``); a bad
    address raises :class:`socket.gaierror`, a failed bind :class:`OSError`; both name
    the address.
    """
    family = socket_options.pop("family", socket.AF_UNSPEC)
    check_host(host)
    port = check_port(port)
    target: Any = None
    if remote is not None:
        rhost, rport = remote
        check_host(rhost, optional=False)
        rport = check_port(rport)
        try:
            af, type_, proto, _, target = resolve(rhost, rport, family, socket.SOCK_DGRAM)[0]
        except OSError as exc:
            raise address_error(exc, "connect to", remote) from None
        local = None if host is None else _passive(host, port, af)
    else:
        local = _passive(host, port, family)
        af, type_, proto = local[0][:3]
    sock = socket.socket(af, type_, proto)
    try:
        setup_datagram_socket(
            sock, v6only=not is_v4_mapped(local[0][4] if local else target), **socket_options
        )
        if local is not None:
            try:
                sock.bind(local[0][4])
            except OSError as exc:
                raise address_error(exc, "bind to", local[0][4]) from None
        if target is not None:
            try:
                sock.connect(target)
            except OSError as exc:
                raise address_error(exc, "connect to", target) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _passive(host: str | None, port: int, family: int) -> list[Any]:
    """The addresses to bind *host*:*port* to; a resolution error names them."""
    try:
        return resolve(host or None, port, family, socket.SOCK_DGRAM, socket.AI_PASSIVE)
    except OSError as exc:
        raise address_error(exc, "bind to", (host, port)) from None


def setup_datagram_socket(
    sock: socket.socket,
    *,
    v6only: bool = True,
    **socket_options: Unpack[DatagramSocketKeywords],
) -> None:
    """The options :func:`create_datagram_socket` sets before binding a socket
    (*v6only*: ``IPV6_V6ONLY`` on an IPv6 one, unless it is for a v4-mapped address)."""
    reuse_port = socket_options.get("reuse_port", False)
    allow_broadcast = socket_options.get("allow_broadcast", False)
    socket_buffer_size = socket_options.get("socket_buffer_size")
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not supported on this platform")
    if socket_buffer_size is not None:
        # Best effort: the kernel caps both at net.core.rmem_max / wmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, socket_buffer_size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, socket_buffer_size)
    if sock.family == socket.AF_INET6 and v6only:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if allow_broadcast:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)


def bind_udp(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], DatagramHandler],
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    on_close: Callable[[DatagramEndpoint], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[DatagramKeywords],
) -> DatagramEndpoint:
    """A bound endpoint on the first address of *host*:*port*, started, served by a
    protocol from *protocol_factory*.

    It receives from anyone and sends with ``sendto(data, addr)``.  See
    :func:`create_datagram_socket` for the socket, :class:`DatagramEndpoint` for the
    rest; the water marks are *keywords*, over *options*.  :func:`bind_udp_all` binds
    every address of a name.  Every argument is checked before a socket exists.
    """
    check_factory(protocol_factory)
    socket_options, flow = _split(keywords)
    options = options.merged(flow)
    sock = create_datagram_socket(host, port, **socket_options)
    return _endpoint(dispatcher, sock, protocol_factory, options, recv_buffer, on_close)


def _endpoint(
    dispatcher: IDispatchContext,
    sock: socket.socket,
    protocol_factory: Callable[[], DatagramHandler],
    options: TransportOptions,
    recv_buffer: memoryview | None,
    on_close: Callable[[DatagramEndpoint], object] | None,
) -> DatagramEndpoint:
    """A started endpoint on *sock*, which it owns even if this raises."""
    try:
        return DatagramEndpoint(
            dispatcher,
            sock,
            protocol_factory(),
            options,
            recv_buffer=recv_buffer,
            on_close=on_close,
        )
    except BaseException:
        sock.close()  # harmless twice: a refused start() has closed it already
        raise


def create_datagram_sockets(
    host: str | None = "127.0.0.1",
    port: int = 0,
    **socket_options: Unpack[DatagramSocketKeywords],
) -> list[socket.socket]:
    """Non-blocking UDP sockets bound to every address of *host*, all on one port; the
    first address first.

    ``localhost`` is ``127.0.0.1`` and ``::1``, ``None`` or ``""`` is ``0.0.0.0`` and
    ``::``.  With *port* 0 the kernel picks a port free on every address (see
    :func:`asycamore.tcpsocket.create_listening_sockets`).  The options are those of
    :func:`create_datagram_socket`.  For sockets made before they are served: bound in
    a parent process and served by its forked workers (:mod:`asycamore.workers`), say.
    """
    family = socket_options.pop("family", socket.AF_UNSPEC)
    check_host(host)
    port = check_port(port)
    infos = _passive(host, port, family)

    def setup(sock: socket.socket) -> None:
        # v6only: bind_every_address has set it, per address.
        setup_datagram_socket(sock, v6only=False, **socket_options)

    socks = bind_every_address(infos, port, setup, "bind to")
    for sock in socks:
        sock.setblocking(False)
    return socks


def bind_udp_all(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], DatagramHandler],
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    on_close: Callable[[DatagramEndpoint], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[DatagramKeywords],
) -> list[DatagramEndpoint]:
    """One bound endpoint per address of *host*, all on one port, each with a protocol
    from *protocol_factory*; the first address first.

    The sockets are those of :func:`create_datagram_sockets`.  One endpoint per
    address (not one over several sockets) because a reply must leave through the
    socket its request came in on, or it would come from another source address.  All
    or nothing: if one cannot be made, those made are aborted and this raises.
    """
    check_factory(protocol_factory)
    socket_options, flow = _split(keywords)
    options = options.merged(flow)
    socks = create_datagram_sockets(host, port, **socket_options)
    endpoints: list[DatagramEndpoint] = []
    try:
        for sock in socks:
            endpoints.append(
                _endpoint(dispatcher, sock, protocol_factory, options, recv_buffer, on_close)
            )
    except BaseException:
        for endpoint in endpoints:
            endpoint.abort()
        for sock in socks[len(endpoints) :]:
            sock.close()
        raise
    return endpoints


def connect_udp(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], DatagramHandler],
    host: str,
    port: int,
    *,
    local_host: str | None = None,
    local_port: int = 0,
    on_close: Callable[[DatagramEndpoint], object] | None = None,
    recv_buffer: memoryview | None = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    **keywords: Unpack[DatagramKeywords],
) -> DatagramEndpoint:
    """A connected endpoint to *host*:*port* (bound to *local_host*:*local_port* if
    given), started, served by a protocol from *protocol_factory*.

    It sends with ``sendto(data)`` to its peer only, receives only from it, and hears
    the peer's ICMP errors in ``handler.error_received`` (a closed port:
    ``ECONNREFUSED``).  UDP has no handshake, so there is nothing to race: the first
    address of *host* is used.  A host name is resolved with a blocking
    :func:`socket.getaddrinfo`; numbers and ``localhost`` never block.
    """
    check_factory(protocol_factory)
    check_host(local_host, "local_host")
    local_port = check_port(local_port, "local_port")
    socket_options, flow = _split(keywords)
    options = options.merged(flow)
    sock = create_datagram_socket(local_host, local_port, remote=(host, port), **socket_options)
    return _endpoint(dispatcher, sock, protocol_factory, options, recv_buffer, on_close)
