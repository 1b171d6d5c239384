"""The API of Python 3.11's ``asyncore``, dispatching through asycamore backends.

A maintained replacement for the module PEP 594 removed in Python 3.12, written for
asycamore (not a copy of the standard library's source).  Programs use it unchanged:
call :func:`asycamore.compat.install` once, then ``import asyncore`` gives this module.

The semantics are 3.11's: ``readable()`` and ``writable()`` are asked on every pass,
maps are keyed by descriptor (:data:`socket_map` unless a dispatcher was given its own),
:exc:`ExitNow`, :exc:`KeyboardInterrupt` and :exc:`SystemExit` propagate out of
:func:`loop`, any other exception from a handler goes to the dispatcher's
``handle_error()``, and a handler's :exc:`OSError` with a disconnect errno to its
``handle_close()``.  What differs is underneath: each map has one asycamore dispatch
context (``ASYCAMORE_BACKEND`` or the best backend here), and only a dispatcher whose
answers changed since the last pass touches the kernel.  :func:`poll` and :func:`poll2`
are therefore the same pass, and ``loop(use_poll=...)`` is accepted and changes nothing.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import warnings
from collections.abc import MutableMapping
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    ECONNRESET,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    ENOTCONN,
    EPIPE,
    ESHUTDOWN,
    EWOULDBLOCK,
    errorcode,
)
from types import TracebackType
from typing import Any, ClassVar

from . import _mapcontext

__all__ = [
    "ExitNow",
    "close_all",
    "compact_traceback",
    "dispatcher",
    "dispatcher_with_send",
    "file_dispatcher",
    "file_wrapper",
    "loop",
    "poll",
    "poll2",
    "poll3",
    "read",
    "readwrite",
    "socket_map",
    "write",
]

SocketMap = MutableMapping[Any, Any]
"""What asyncore calls a map: descriptor -> dispatcher (or any object with its handlers)."""

socket_map: SocketMap = {}
"""The map dispatchers join when they are not given one, and :func:`loop` runs by default."""

_DISCONNECTED = frozenset({ECONNRESET, ENOTCONN, ESHUTDOWN, ECONNABORTED, EPIPE, EBADF})

# poll(2) bits for readwrite(); select has the names only where it has poll, and the
# fallbacks are the values Linux, macOS and the BSDs share.
_POLLIN = getattr(select, "POLLIN", 0x001)
_POLLPRI = getattr(select, "POLLPRI", 0x002)
_POLLOUT = getattr(select, "POLLOUT", 0x004)
_POLLERR = getattr(select, "POLLERR", 0x008)
_POLLHUP = getattr(select, "POLLHUP", 0x010)
_POLLNVAL = getattr(select, "POLLNVAL", 0x020)


class ExitNow(Exception):
    """Raise it from a handler to leave :func:`loop`: it is never given to handle_error."""


_reraised_exceptions = (ExitNow, KeyboardInterrupt, SystemExit)


def _strerror(err: int) -> str:
    """``os.strerror(err)``, or the errno's name, for a message that never fails."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError):
        return errorcode.get(err, f"Unknown error {err}")


def _on_error(obj: Any, exc: Exception) -> None:
    """What asyncore does when one of *obj*'s handlers raised *exc* (being handled now)."""
    if isinstance(exc, ExitNow):
        raise exc
    if isinstance(exc, OSError) and exc.errno in _DISCONNECTED:
        obj.handle_close()
    else:
        obj.handle_error()


def _handles_urgent(obj: Any) -> bool:
    """Whether urgent data should reach *obj*: not when it would only meet dispatcher's
    own handle_expt_event and handle_expt, whose one effect is a warning that
    ``ignore_log_types`` hides (and, since nothing reads the byte, a loop that spins)."""
    if not isinstance(obj, dispatcher):
        return True  # anything else in a map: no way to tell
    cls = type(obj)
    return (
        cls.handle_expt is not dispatcher.handle_expt
        or cls.handle_expt_event is not dispatcher.handle_expt_event
        or cls.log_info is not dispatcher.log_info
        or obj.ignore_log_types != dispatcher.ignore_log_types
        or not {"handle_expt", "handle_expt_event", "log_info"}.isdisjoint(vars(obj))
    )


_POLICY = _mapcontext.Policy(_on_error, _handles_urgent)


def _call_handler(obj: Any, name: str) -> None:
    """Call ``obj.<name>()``; an exception other than ExitNow (or the interpreter's
    exits) goes to handle_error."""
    try:
        getattr(obj, name)()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def read(obj: Any) -> None:
    """Call ``obj.handle_read_event()``; an exception other than ExitNow goes to handle_error."""
    _call_handler(obj, "handle_read_event")


def write(obj: Any) -> None:
    """Call ``obj.handle_write_event()``; an exception other than ExitNow goes to
    handle_error."""
    _call_handler(obj, "handle_write_event")


def _exception(obj: Any) -> None:
    """Call ``obj.handle_expt_event()``; the counterpart of :func:`read` (asyncore's name)."""
    _call_handler(obj, "handle_expt_event")


def readwrite(obj: Any, flags: int) -> None:
    """Call *obj*'s handlers for the ``select.poll`` event bits in *flags*.

    ``POLLIN`` -> ``handle_read_event``, ``POLLOUT`` -> ``handle_write_event``,
    ``POLLPRI`` -> ``handle_expt_event``, then ``POLLHUP``/``POLLERR``/``POLLNVAL`` ->
    ``handle_close``.  An :exc:`OSError` with a disconnect errno goes to handle_close,
    ExitNow and the interpreter's exits propagate, anything else goes to handle_error.
    """
    try:
        if flags & _POLLIN:
            obj.handle_read_event()
        if flags & _POLLOUT:
            obj.handle_write_event()
        if flags & _POLLPRI:
            obj.handle_expt_event()
        if flags & (_POLLHUP | _POLLERR | _POLLNVAL):
            obj.handle_close()
    except OSError as exc:
        if exc.errno in _DISCONNECTED:
            obj.handle_close()
        else:
            obj.handle_error()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def poll(timeout: float | None = 0.0, map: SocketMap | None = None) -> None:
    """One pass over *map* (default :data:`socket_map`): wait up to *timeout* seconds
    (``None``: until something is ready) and call the ready dispatchers' handlers.

    Every dispatcher is asked ``readable()`` and ``writable()`` (accepting ones are never
    watched for writing); readiness for reading calls ``handle_read_event``, for writing
    ``handle_write_event``, and urgent data ``handle_expt_event``, all under the error
    policy of :func:`readwrite`.  An empty map returns at once.
    """
    if map is None:
        map = socket_map
    if not map:
        # Nothing to watch: the map's context (and its descriptors) can go.
        _mapcontext.release(map)
        return
    _mapcontext.context_for(map, _POLICY).run(timeout, 1)


def poll2(timeout: float | None = 0.0, map: SocketMap | None = None) -> None:
    """The same pass as :func:`poll` (asyncore's ``select.poll`` variant; here every
    variant runs on the map's asycamore context)."""
    poll(timeout, map)


poll3 = poll2
"""An old alias of :func:`poll2`, kept as asyncore keeps it."""


def loop(
    timeout: float | None = 30.0,
    use_poll: bool = False,
    map: SocketMap | None = None,
    count: int | None = None,
) -> None:
    """Run passes over *map* (default :data:`socket_map`) until it is empty, or *count*
    passes have run.

    *timeout* bounds each pass's wait, in seconds.  *use_poll* chose between ``select``
    and ``poll`` in the standard library; here both are the map's asycamore backend
    (``ASYCAMORE_BACKEND`` or the best one), so it is accepted and ignored.
    """
    del use_poll  # see the docstring
    if map is None:
        map = socket_map
    # The passes run inside the map's context; it hands back the rest of the count if
    # it was closed under it (close_all() from a handler, say) and a new one takes over.
    while map and (count is None or count > 0):
        count = _mapcontext.context_for(map, _POLICY).run(timeout, count)
    if not map:
        _mapcontext.release(map)


def _public_module(cls: type) -> str:
    """The module name repr() shows: ``asyncore``/``asynchat`` for our own classes."""
    return {__name__: "asyncore", "asycamore.compat.asynchat": "asynchat"}.get(
        cls.__module__, cls.__module__
    )


class dispatcher:
    """A non-blocking socket with event handlers, registered in an asyncore map.

    Subclass it and override the ``handle_*`` methods you need; ``readable()`` and
    ``writable()`` say, on every pass, which events the dispatcher wants.  The socket
    methods (:meth:`connect`, :meth:`send`, :meth:`recv`, ...) turn the errors of a
    broken connection into :meth:`handle_close`.
    """

    debug: ClassVar[bool] = False
    """When true, :class:`dispatcher_with_send` logs what it sends."""
    connected = False
    """Whether the socket is connected (set by the constructor, connect and close)."""
    accepting = False
    """Whether the socket listens (:meth:`listen`): never watched for writing."""
    connecting = False
    """Whether a :meth:`connect` is in progress."""
    closing = False
    """Unused by asyncore itself; kept for programs that set and test it."""
    addr: Any = None
    """The peer's or the bound address, once known."""
    ignore_log_types: ClassVar[frozenset[str]] = frozenset({"warning"})
    """The :meth:`log_info` types that are not printed."""
    socket: Any
    """The socket (or socket-like object, such as a :class:`file_wrapper`), or None."""

    def __init__(self, sock: socket.socket | None = None, map: SocketMap | None = None) -> None:
        self._map = socket_map if map is None else map
        self._fileno: Any = None
        if not sock:
            self.socket = None
            return
        # A socket from a blocking source must not block the loop.
        sock.setblocking(False)
        self.set_socket(sock, map)
        self.connected = True
        try:
            self.addr = sock.getpeername()
        except OSError as err:
            if err.errno not in (ENOTCONN, EINVAL):
                # Broken in some unknown way: out of the map before it is ever polled.
                self.del_channel(map)
                raise
            self.connected = False  # an unconnected socket is accepted too

    def __repr__(self) -> str:
        cls = type(self)
        status = [f"{_public_module(cls)}.{cls.__qualname__}"]
        if self.accepting and self.addr:
            status.append("listening")
        elif self.connected:
            status.append("connected")
        if self.addr is not None:
            try:
                status.append("%s:%d" % self.addr)  # noqa: UP031 (host and port, or repr)
            except TypeError:
                status.append(repr(self.addr))
        return f"<{' '.join(status)} at {id(self):#x}>"

    def add_channel(self, map: SocketMap | None = None) -> None:
        """Enter this dispatcher into *map* (default: its own) under its descriptor."""
        if map is None:
            map = self._map
        map[self._fileno] = self

    def del_channel(self, map: SocketMap | None = None) -> None:
        """Remove this dispatcher's descriptor from *map* (default: its own)."""
        fd = self._fileno
        if map is None:
            map = self._map
        if fd in map:
            del map[fd]
            # Unwatched now, while the descriptor is still open: epoll then needs no
            # repair, and a new socket given the same number starts clean.
            _mapcontext.forget(map, fd)
        self._fileno = None

    def create_socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> None:
        """Make a non-blocking socket of *family* and *type* and enter it into the map."""
        self.family_and_type = family, type
        sock = socket.socket(family, type)
        sock.setblocking(False)
        self.set_socket(sock)

    def set_socket(self, sock: Any, map: SocketMap | None = None) -> None:
        """Adopt *sock* and enter it into *map* (default: the dispatcher's own)."""
        self.socket = sock
        self._fileno = sock.fileno()
        self.add_channel(map)

    def set_reuse_addr(self) -> None:
        """Set ``SO_REUSEADDR`` on the socket, where the platform allows it."""
        try:
            reuse = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse | 1)
        except OSError:
            pass

    # -- what the dispatcher wants, asked on every pass ------------------------------------

    def readable(self) -> bool:
        """Whether to watch for reading on this pass (default: always)."""
        return True

    def writable(self) -> bool:
        """Whether to watch for writing on this pass (default: always)."""
        return True

    # -- socket methods -------------------------------------------------------------------

    def listen(self, num: int) -> None:
        """Listen for connections; the dispatcher is *accepting* from now on."""
        self.accepting = True
        if os.name == "nt" and num > 5:
            num = 5  # the historic Windows limit asyncore applies
        self.socket.listen(num)

    def bind(self, addr: Any) -> None:
        """Bind the socket to *addr* (and remember it as ``addr``)."""
        self.addr = addr
        self.socket.bind(addr)

    def connect(self, address: Any) -> None:
        """Start connecting to *address*; handle_connect runs once it is established."""
        self.connected = False
        self.connecting = True
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (err == EINVAL and os.name == "nt"):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
            return
        raise OSError(err, errorcode[err])

    def accept(self) -> tuple[socket.socket, Any] | None:
        """Accept a connection: ``(sock, addr)``, or None if none is pending."""
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as why:
            if why.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            raise
        return conn, addr

    def send(self, data: Any) -> int:
        """Send what the socket takes of *data*; 0 when it would block or has broken
        (then handle_close has run)."""
        try:
            sent: int = self.socket.send(data)
        except OSError as why:
            if why.errno == EWOULDBLOCK:
                return 0
            if why.errno in _DISCONNECTED:
                self.handle_close()
                return 0
            raise
        return sent

    def recv(self, buffer_size: int) -> bytes:
        """Receive up to *buffer_size* bytes; ``b""`` at end of stream or on a broken
        connection (then handle_close has run)."""
        try:
            data: bytes = self.socket.recv(buffer_size)
        except OSError as why:
            if why.errno in _DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            # The peer closed: readiness with nothing to read.
            self.handle_close()
            return b""
        return data

    def close(self) -> None:
        """Leave the map and close the socket."""
        self.connected = False
        self.accepting = False
        self.connecting = False
        self.del_channel()
        if self.socket is not None:
            try:
                self.socket.close()
            except OSError as why:
                if why.errno not in (ENOTCONN, EBADF):
                    raise

    # -- logging: override for better ones ------------------------------------------------

    def log(self, message: Any) -> None:
        """Log a "hit" on standard error."""
        sys.stderr.write(f"log: {message}\n")

    def log_info(self, message: Any, type: str = "info") -> None:
        """Print an informational, warning or error message, unless *type* is in
        :attr:`ignore_log_types`."""
        if type not in self.ignore_log_types:
            print(f"{type}: {message}")

    # -- events, from the loop ------------------------------------------------------------

    def handle_read_event(self) -> None:
        """Readable: accept, finish connecting, or read."""
        if self.accepting:
            # Listening sockets are never connected: they spawn connected ones.
            self.handle_accept()
            return
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_read()

    def handle_connect_event(self) -> None:
        """The connection attempt ended: raise its error, or call handle_connect."""
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, _strerror(err))
        self.handle_connect()
        self.connected = True
        self.connecting = False

    def handle_write_event(self) -> None:
        """Writable: finish connecting, then write (never for a listening socket)."""
        if self.accepting:
            return  # a listening socket was not asked for writing: ignore it
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_write()

    def handle_expt_event(self) -> None:
        """An exceptional condition: a socket error closes, urgent data calls handle_expt."""
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            self.handle_close()
        else:
            self.handle_expt()

    def handle_error(self) -> None:
        """A handler raised: log the compact traceback and close."""
        _, t, v, tbinfo = compact_traceback()
        try:
            self_repr = repr(self)
        except Exception:  # a user's __repr__ may fail too
            self_repr = f"<__repr__(self) failed for object at {id(self):0x}>"
        self.log_info(
            f"uncaptured python exception, closing channel {self_repr} ({t}:{v} {tbinfo})",
            "error",
        )
        self.handle_close()

    def handle_expt(self) -> None:
        """Urgent (out-of-band) data arrived (default: a warning)."""
        self.log_info("unhandled incoming priority event", "warning")

    def handle_read(self) -> None:
        """Data can be read (default: a warning)."""
        self.log_info("unhandled read event", "warning")

    def handle_write(self) -> None:
        """Data can be written (default: a warning)."""
        self.log_info("unhandled write event", "warning")

    def handle_connect(self) -> None:
        """The connection is established (default: a warning)."""
        self.log_info("unhandled connect event", "warning")

    def handle_accept(self) -> None:
        """A connection is pending: accept it and call handle_accepted."""
        pair = self.accept()
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        """A connection was accepted (default: close it, and a warning)."""
        sock.close()
        self.log_info("unhandled accepted event", "warning")

    def handle_close(self) -> None:
        """The connection closed or broke (default: a warning, and close)."""
        self.log_info("unhandled close event", "warning")
        self.close()


class dispatcher_with_send(dispatcher):
    """A dispatcher with an output buffer: :meth:`send` queues, the loop drains."""

    def __init__(self, sock: socket.socket | None = None, map: SocketMap | None = None) -> None:
        super().__init__(sock, map)
        self.out_buffer = b""

    def initiate_send(self) -> None:
        """Send what the socket takes of the buffer's first 64 KiB."""
        sent = dispatcher.send(self, self.out_buffer[:65536])
        self.out_buffer = self.out_buffer[sent:]

    def handle_write(self) -> None:
        """Writable: send more of the buffer."""
        self.initiate_send()

    def writable(self) -> bool:
        """Only while connecting or while the buffer holds data."""
        return not self.connected or self.out_buffer != b""

    # asyncore's override returns None where dispatcher.send returns a count.
    def send(self, data: Any) -> None:  # type: ignore[override]
        """Queue *data* and send what the socket takes now."""
        if self.debug:
            self.log_info(f"sending {data!r}")
        self.out_buffer = self.out_buffer + data
        self.initiate_send()


def compact_traceback() -> tuple[tuple[str, str, str], type[BaseException] | None, Any, str]:
    """The exception being handled, compactly: ``((file, function, line), type, value,
    info)``, *info* listing every frame as ``[file|function|line]``."""
    t, v, tb = sys.exc_info()
    if tb is None:
        raise AssertionError("traceback does not exist")
    frames = []
    frame: TracebackType | None = tb
    while frame is not None:
        code = frame.tb_frame.f_code
        frames.append((code.co_filename, code.co_name, str(frame.tb_lineno)))
        frame = frame.tb_next
    info = " ".join(f"[{file}|{function}|{line}]" for file, function, line in frames)
    return frames[-1], t, v, info


def close_all(map: SocketMap | None = None, ignore_all: bool = False) -> None:
    """Close every dispatcher in *map* (default :data:`socket_map`) and empty it.

    EBADF is ignored; any other error propagates unless *ignore_all* (ExitNow and the
    interpreter's exits propagate always).
    """
    if map is None:
        map = socket_map
    for obj in list(map.values()):
        try:
            obj.close()
        except OSError as exc:
            if exc.errno != EBADF and not ignore_all:
                raise
        except _reraised_exceptions:
            raise
        except BaseException:
            if not ignore_all:
                raise
    map.clear()
    _mapcontext.release(map)


# Files: select and poll accept pipes, terminals and the like, not only sockets.


class file_wrapper:
    """A descriptor that looks enough like a socket for asyncore (POSIX).

    The descriptor given is :func:`os.dup`'d: closing the wrapper leaves the caller's.
    """

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            warnings.warn(f"unclosed file {self!r}", ResourceWarning, source=self, stacklevel=1)
        self.close()

    def recv(self, *args: Any) -> bytes:
        """``os.read`` on the descriptor."""
        return os.read(self.fd, *args)

    def send(self, *args: Any) -> int:
        """``os.write`` on the descriptor."""
        return os.write(self.fd, *args)

    read = recv
    write = send

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int:
        """Only ``SO_ERROR``, always 0: what asyncore asks of its sockets."""
        if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
            return 0
        raise NotImplementedError("Only asyncore specific behaviour implemented.")

    def close(self) -> None:
        """Close the descriptor (idempotent; ``fd`` becomes -1 first)."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        os.close(fd)

    def fileno(self) -> int:
        """The (duplicated) descriptor."""
        return self.fd


class file_dispatcher(dispatcher):
    """A dispatcher over a file descriptor (or an object with ``fileno()``), made
    non-blocking: pipes and terminals (POSIX)."""

    def __init__(self, fd: Any, map: SocketMap | None = None) -> None:
        super().__init__(None, map)
        self.connected = True
        if hasattr(fd, "fileno"):  # a file object, or a plain descriptor
            fd = fd.fileno()
        self.set_file(fd)
        os.set_blocking(fd, False)

    def set_file(self, fd: int) -> None:
        """Wrap *fd* in a :class:`file_wrapper` and enter it into the map."""
        self.socket = file_wrapper(fd)
        self._fileno = self.socket.fileno()
        self.add_channel()
