"""Child processes on a dispatch context: :func:`spawn` and :class:`Process`.

A child is started by :class:`subprocess.Popen` (so ``args``, ``PIPE``, ``DEVNULL``,
``STDOUT``, files, ``close_fds`` and ``pass_fds`` mean what they mean there), and each
of its standard streams that is a pipe becomes a pipe transport of :mod:`.pipes` with
an internal handler that forwards to the protocol under asyncio's
``SubprocessProtocol`` names.  Every pipe is a transport of its own, so flow control is
per pipe: a full stdin pauses only stdin (and calls the protocol's ``pause_writing``),
never the reading of stdout and stderr -- a ``cat`` that cannot write its output stops
reading its input, and pausing our reads then would be a deadlock.

Learning that the child exited
==============================

Without a busy loop and without a thread, in order of preference:

``pidfd``
    Linux: :func:`os.pidfd_open` gives a descriptor that becomes readable when the
    child exits, registered in the dispatch context like any target; its handler reaps
    with ``waitpid(pid, WNOHANG)``.
``sigchld``
    Where pidfds are missing or refused (by the kernel, a sandbox, or a backend that
    cannot watch them), a SIGCHLD handler -- installed while children are watched so,
    in the main thread, the previous one chained and restored afterwards -- wakes a
    :class:`~asycamore.wakeup.Waker` registered in each dispatch context that has
    children; its handler polls each of *its own* children with ``waitpid(pid,
    WNOHANG)``.  Never ``waitpid(-1)``: children that other code started (a
    :class:`subprocess.Popen` of its own) are never reaped here.
``thread``
    Only where neither works (no pidfd, and not the main thread, which alone can set a
    signal handler): a helper thread per child blocks in ``waitpid(pid)`` and wakes the
    same waker, as asyncio's ``ThreadedChildWatcher``.

:attr:`Process.exit_watch` chooses one (``"auto"``: the first that works), so that
tests can run every path on one machine.  The reaping goes through the child's
``Popen`` (``poll()``/``wait()``: ``waitpid`` on its pid only, and the exit status as
``Popen`` decodes it, a negative signal number for a signalled child), which is kept
until the reap, so that ``subprocess``'s own clean-up of dropped ``Popen`` objects
never reaps our child behind our back.

A fork of the program inherits the watches but not the children: in the fork a process
neither signals nor reaps them (its :attr:`~Process.pid` may be someone else's there),
and the SIGCHLD handler forgets the parent's wakers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, ClassVar, Final, Literal, Protocol

from ..arguments import check_factory
from ..dispatcher import Events, IDispatchContext
from ..wakeup import Waker
from .base import log
from .options import DEFAULT_OPTIONS, TransportOptions
from .pipes import PipeTransport, ReadPipeTransport, WritePipeTransport

__all__ = [
    "DEVNULL",
    "EXIT_WATCHES",
    "PIPE",
    "STDOUT",
    "Process",
    "ProcessHandler",
    "spawn",
]

PIPE: Final = subprocess.PIPE
"""``subprocess.PIPE``: a pipe to the child, as a transport of the process."""
DEVNULL: Final = subprocess.DEVNULL
"""``subprocess.DEVNULL``: the child's stream is ``/dev/null``."""
STDOUT: Final = subprocess.STDOUT
"""``subprocess.STDOUT``: the child's stderr goes where its stdout goes."""

ExitWatch = Literal["auto", "pidfd", "sigchld", "thread"]
EXIT_WATCHES: Final = ("auto", "pidfd", "sigchld", "thread")
"""The values of :attr:`Process.exit_watch` (see the module note)."""

# Popen keywords that would make the pipes text or buffered: the transports move bytes.
_TEXT_OPTIONS: Final = ("text", "universal_newlines", "encoding", "errors")


class ProcessHandler(Protocol):
    """The callbacks a :class:`Process` makes (asyncio's ``SubprocessProtocol`` names).

    :class:`asycamore.servicemodel.ProcessProtocol` is a ready-made base class.
    ``pause_writing()``/``resume_writing()`` are optional: called when the child's
    stdin buffers more than the high-water mark, and back at the low-water mark.
    """

    def connection_made(self, process: Process) -> None:
        """The child has started: *process* is what :func:`spawn` returns.  Called
        before any other callback."""
        ...

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """The child wrote *data* (never empty) to its stdout (*fd* 1) or stderr (2)."""
        ...

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        """The pipe of the child's *fd* is closed: ``None`` at a normal EOF (or a
        close), else why (a :class:`BrokenPipeError` writing to a child that has gone,
        for *fd* 0)."""
        ...

    def process_exited(self) -> None:
        """The child has exited and been reaped (:attr:`Process.returncode` is set).
        Called exactly once; the pipes may still hold data to read."""
        ...


class _PipeEnd:
    """The handler of one pipe transport of a process: forwards to its protocol."""

    __slots__ = ("data_received", "fd", "process")

    def __init__(self, process: Process, fd: int) -> None:
        self.process = process
        self.fd = fd
        protocol = process.protocol

        def data_received(data: bytes) -> None:
            protocol.pipe_data_received(fd, data)

        self.data_received = data_received

    def connection_made(self, transport: object) -> None:
        """The process's ``connection_made`` is the one the protocol hears."""

    def eof_received(self) -> None:
        """The child closed its end: the transport closes (``pipe_connection_lost``)."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forwarded as ``pipe_connection_lost(fd, exc)``."""
        self.process.protocol.pipe_connection_lost(self.fd, exc)

    def pause_writing(self) -> None:
        """The child's stdin is above its high-water mark."""
        pause = getattr(self.process.protocol, "pause_writing", None)
        if pause is not None:
            pause()

    def resume_writing(self) -> None:
        """The child's stdin drained to its low-water mark."""
        resume = getattr(self.process.protocol, "resume_writing", None)
        if resume is not None:
            resume()


class Process:
    """A child process started by :func:`spawn`, and its pipes (asyncio's
    ``SubprocessTransport`` names).

    :attr:`returncode` is ``None`` until the child has been reaped, which the dispatch
    context learns by itself (see the module note): the protocol's ``process_exited()``
    follows, exactly once.  The pipes are stream transports of their own
    (:meth:`get_pipe_transport`): write to the child with
    ``process.get_pipe_transport(0).write(data)``, end its input with ``write_eof()``.
    """

    exit_watch: ClassVar[ExitWatch] = "auto"
    """How children spawned from now on are watched for their exit: ``"auto"`` (a pidfd
    where possible, else SIGCHLD in the main thread, else a thread), or one of
    ``"pidfd"``, ``"sigchld"``, ``"thread"`` to insist (a spawn where it cannot work
    raises: :class:`OSError` for a pidfd, :class:`RuntimeError` for SIGCHLD outside the
    main thread).  For tests of every path on one machine."""

    def __init__(
        self,
        dispatcher: IDispatchContext,
        popen: subprocess.Popen[bytes],
        protocol: ProcessHandler,
        on_exit: Callable[[Process], object] | None = None,
    ) -> None:
        self._context = dispatcher
        self._popen = popen
        self.protocol = protocol
        """The protocol that hears the callbacks."""
        self._on_exit = on_exit
        self._owner = os.getpid()
        self._returncode: int | None = None
        self._pipes: dict[int, PipeTransport] = {}
        self._watch: _PidfdWatch | _ExitWakeup | None = None
        self._watched_by = ""
        self._closed = False

    # -- what there is ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has been reaped (``None`` before): negative
        for a child killed by a signal (``-signal.SIGKILL``)."""
        return self._returncode

    @property
    def exited(self) -> bool:
        """Whether the child has been reaped and ``process_exited`` called."""
        return self._returncode is not None

    @property
    def watched_by(self) -> str:
        """How the child's exit is learned: ``"pidfd"``, ``"sigchld"`` or ``"thread"``
        (``""`` once it has been reaped)."""
        return self._watched_by

    @property
    def pipes_closed(self) -> bool:
        """Whether every pipe transport of the process is closed."""
        return all(transport.closed for transport in self._pipes.values())

    def get_pipe_transport(self, fd: int) -> PipeTransport | None:
        """The transport of the child's stdin (*fd* 0), stdout (1) or stderr (2), or
        ``None`` if that stream is not a pipe to us."""
        return self._pipes.get(fd)

    # -- signals ---------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the child (not to its process group).  Does nothing once it
        has been reaped: its pid may then be another process's."""
        if self._popen.returncode is None and os.getpid() == self._owner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pipes at once (buffered input for the child is dropped; each
        ``pipe_connection_lost(fd, None)``) and kill the child if it still runs, as
        asyncio does.  Its exit is still learned, and ``process_exited`` called, as
        the loop runs (or by :meth:`wait`).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for transport in list(self._pipes.values()):
            transport.abort()
        self.kill()

    def wait(self) -> int:
        """Block until the child has exited, reap it and call ``process_exited`` (if not
        done yet); return :attr:`returncode`.

        For shutdown code (a service's ``close()`` uses it after :meth:`kill`): it
        blocks the thread, and the loop with it.  In a fork of the program, where the
        child is not ours, it returns ``-1`` without waiting.
        """
        if self._returncode is None:
            if os.getpid() != self._owner:
                return -1
            self._popen.wait()
            self._reaped()
        return self._returncode if self._returncode is not None else -1

    def __repr__(self) -> str:
        state = "running" if self._returncode is None else f"returncode={self._returncode}"
        return f"<Process pid={self._popen.pid} {state}>"

    # -- internals (the watches' side) -------------------------------------------------------

    def _start(
        self,
        watch: ExitWatch,
        options: TransportOptions,
        recv_buffer: memoryview | None,
    ) -> None:
        """Make the pipe transports (registered, handler not yet told) and start watching
        for the exit."""
        popen = self._popen
        if options.counters is not None:  # the pipes count nothing (see .pipes): once
            options = dataclasses.replace(options, counters=None)
        ends: list[tuple[int, Any]] = [(0, popen.stdin), (1, popen.stdout), (2, popen.stderr)]
        for fd, pipe in ends:
            if pipe is None:
                continue
            kind: type[PipeTransport] = WritePipeTransport if fd == 0 else ReadPipeTransport
            transport = kind(
                self._context,
                pipe,
                _PipeEnd(self, fd),
                options,
                recv_buffer=recv_buffer,
            )
            self._pipes[fd] = transport
            transport.attach()
        # The transports own the pipes now; Popen must not close them a second time.
        popen.stdin = popen.stdout = popen.stderr = None
        self._start_watch(watch)

    def _start_watch(self, watch: ExitWatch) -> None:
        if watch in ("auto", "pidfd"):
            try:
                self._watch = _PidfdWatch(self)
                self._watched_by = "pidfd"
                return
            except (OSError, ValueError):
                # Refused (ENOSYS, EPERM in a sandbox), or a backend that cannot watch
                # it (select, at FD_SETSIZE).
                if watch == "pidfd":
                    raise
            watch = "sigchld" if _in_main_thread() else "thread"
        wakeup = _ExitWakeup.of(self._context)
        wakeup.add(self, sigchld=watch == "sigchld")
        self._watch = wakeup
        self._watched_by = watch
        if watch == "thread":
            threading.Thread(
                target=_wait_in_thread,
                args=(self._popen, wakeup.waker),
                name=f"asycamore-wait-{self._popen.pid}",
                daemon=True,
            ).start()
        # A child that exited before it was added: its SIGCHLD may have come already.
        wakeup.waker.wake()

    def _started(self) -> None:
        """Tell the protocol, then the pipes' handlers."""
        self.protocol.connection_made(self)
        for transport in list(self._pipes.values()):
            transport.start()

    def _abandon(self) -> None:
        """A spawn failed after the child started: close everything, kill and reap it,
        without a word to the protocol."""
        for transport in list(self._pipes.values()):
            if not transport.closed:
                transport.set_handler(_Silent())
                transport.abort()
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                pipe.close()
        self.kill()
        self._popen.wait()
        self._stop_watch()
        self._returncode = self._popen.returncode

    def _poll(self) -> bool:
        """Reap the child if it has exited (never blocks); whether it has been."""
        if os.getpid() != self._owner:
            return False
        return self._popen.poll() is not None

    def _stop_watch(self) -> None:
        watch, self._watch = self._watch, None
        self._watched_by = ""
        if watch is not None:
            watch.remove(self)

    def _reaped(self) -> None:
        """The child has been reaped: stop watching, then ``process_exited`` (once)."""
        if self._returncode is not None:
            return
        self._stop_watch()
        self._returncode = self._popen.returncode
        on_exit, self._on_exit = self._on_exit, None
        try:
            self.protocol.process_exited()
        except Exception:
            # A watch serves other children too: an error here must not end it.
            log.exception("error in process_exited of %r", self)
        finally:
            if on_exit is not None:
                on_exit(self)


class _Silent:
    """The handler of a pipe whose spawn failed: hears nothing."""

    def connection_made(self, transport: object) -> None:
        """Nothing."""

    def data_received(self, data: bytes) -> None:
        """Nothing."""

    def eof_received(self) -> None:
        """Nothing."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """Nothing."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _wait_in_thread(popen: subprocess.Popen[bytes], waker: Waker) -> None:
    """The ``thread`` watch: block in ``waitpid(pid)``, then wake the loop."""
    with contextlib.suppress(Exception):
        popen.wait()
    waker.wake()


class _PidfdWatch:
    """A child's pidfd as a dispatch target: readable once the child has exited."""

    __slots__ = ("_context", "_fd", "_process")

    def __init__(self, process: Process) -> None:
        self._process = process
        self._context = process._context
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            raise OSError(errno.ENOSYS, "no os.pidfd_open on this platform")
        self._fd: int = pidfd_open(process.pid)
        try:
            self._context.register(self, Events.READ)
        except BaseException:
            os.close(self._fd)
            raise

    def fileno(self) -> int:
        """The pidfd (``-1`` once closed)."""
        return self._fd

    def handle_read_event(self) -> None:
        """The child has exited: reap it."""
        process = self._process
        if process._poll():
            process._reaped()
        elif os.getpid() != process._owner:
            # A fork inherited the watch, not the child: stop watching (the pidfd stays
            # readable, so keeping it would be a busy loop).
            self.remove(process)

    def handle_write_event(self) -> None:
        """Never called: registered for reading only."""

    def remove(self, process: Process) -> None:
        """Stop watching: unregister, close the pidfd."""
        with contextlib.suppress(KeyError, ValueError):
            self._context.unregister(self)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    close = remove  # what an error policy calls

    def __repr__(self) -> str:
        return f"<pidfd {self._fd} of {self._process!r}>"


class _ExitWakeup:
    """The waker of one dispatch context for its children watched by SIGCHLD or by a
    thread: woken, it polls each of them (``waitpid(pid, WNOHANG)``)."""

    _of_context: ClassVar[dict[int, _ExitWakeup]] = {}  # id(context): held while in use

    def __init__(self, dispatcher: IDispatchContext) -> None:
        self._context = dispatcher
        self.waker = Waker()
        try:
            dispatcher.register(self, Events.READ)
        except BaseException:
            self.waker.close()
            raise
        self._children: dict[Process, bool] = {}  # the process: whether by SIGCHLD

    @classmethod
    def of(cls, dispatcher: IDispatchContext) -> _ExitWakeup:
        """The wake-up of *dispatcher*, made on first use."""
        # Keyed by id(): the entry holds the context, so the id cannot be reused while
        # it is there, and it goes when the last child has been reaped.
        wakeup = cls._of_context.get(id(dispatcher))
        if wakeup is None:
            wakeup = cls._of_context[id(dispatcher)] = cls(dispatcher)
        return wakeup

    def fileno(self) -> int:
        """The waker's descriptor."""
        return self.waker.fileno()

    def handle_read_event(self) -> None:
        """Drain the waker; reap and report each child that has exited."""
        self.waker.handle_read_event()
        for process in [process for process in self._children if process._poll()]:
            process._reaped()

    def handle_write_event(self) -> None:
        """Never called: registered for reading only."""

    def add(self, process: Process, *, sigchld: bool) -> None:
        """Watch *process*: by SIGCHLD (the handler installed if need be; main thread
        only) or by a thread of the caller's."""
        if sigchld:
            _SIGCHLD.subscribe(self)
        self._children[process] = sigchld

    def remove(self, process: Process) -> None:
        """Stop watching *process*; the last one gone, the wake-up goes too."""
        self._children.pop(process, None)
        if not any(self._children.values()):
            _SIGCHLD.unsubscribe(self)
        if not self._children:
            self.close()

    def close(self) -> None:
        """Unregister and close the waker (what an error policy calls too)."""
        if self._of_context.get(id(self._context)) is self:
            del self._of_context[id(self._context)]
        with contextlib.suppress(KeyError, ValueError):
            self._context.unregister(self)
        _SIGCHLD.unsubscribe(self)
        self.waker.close()

    def __repr__(self) -> str:
        return f"<exit wake-up of {len(self._children)} children>"


class _SigchldHub:
    """The process's SIGCHLD handler while children are watched by it: wakes the
    subscribed wake-ups (a write to a socket: safe in a signal handler)."""

    def __init__(self) -> None:
        self._wakeups: dict[_ExitWakeup, None] = {}
        self._previous: Any = None
        self._installed = False

    def subscribe(self, wakeup: _ExitWakeup) -> None:
        """Wake *wakeup* on SIGCHLD, installing the handler first if need be."""
        if not self._installed:
            if not _in_main_thread():
                raise RuntimeError("SIGCHLD can be handled only in the main thread")
            self._previous = signal.signal(signal.SIGCHLD, self._handle)
            self._installed = True
        self._wakeups[wakeup] = None

    def unsubscribe(self, wakeup: _ExitWakeup) -> None:
        """Stop waking *wakeup*; the last one gone, restore the previous handler (from
        the main thread: elsewhere ours stays, and does nothing)."""
        self._wakeups.pop(wakeup, None)
        if not self._wakeups and self._installed and _in_main_thread():
            signal.signal(signal.SIGCHLD, self._previous)
            self._installed = False
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for wakeup in tuple(self._wakeups):
            wakeup.waker.wake()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def forget(self) -> None:
        """In a fork: the wake-ups are the parent's (their sockets too), and so are the
        children; stop waking them, and put the previous handler back."""
        self._wakeups.clear()
        _ExitWakeup._of_context.clear()
        if self._installed:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGCHLD, self._previous)
            self._installed = False
            self._previous = None


_SIGCHLD: Final = _SigchldHub()
os.register_at_fork(after_in_child=_SIGCHLD.forget)


def _check_popen_options(popen_options: dict[str, Any]) -> None:
    for name in _TEXT_OPTIONS:
        if popen_options.get(name):
            raise ValueError(f"{name} is not supported: the pipes carry bytes")
    if popen_options.get("bufsize", 0) != 0:
        raise ValueError("bufsize must be 0: the transports do their own buffering")
    popen_options.pop("bufsize", None)


def spawn(
    dispatcher: IDispatchContext,
    protocol_factory: Callable[[], ProcessHandler],
    args: str | bytes | os.PathLike[str] | Sequence[str | bytes | os.PathLike[str]],
    *,
    stdin: Any = PIPE,
    stdout: Any = PIPE,
    stderr: Any = PIPE,
    cwd: str | bytes | os.PathLike[str] | None = None,
    env: Any = None,
    options: TransportOptions = DEFAULT_OPTIONS,
    recv_buffer: memoryview | None = None,
    on_exit: Callable[[Process], object] | None = None,
    **popen_options: Any,
) -> Process:
    """Start a child as :class:`subprocess.Popen` would, served by a protocol from
    *protocol_factory* (a :class:`ProcessHandler`); return its :class:`Process`.

    *args*, *stdin*/*stdout*/*stderr* (:data:`PIPE`, :data:`DEVNULL`, :data:`STDOUT`, a
    file or a descriptor), *cwd*, *env* and *popen_options* (``shell``,
    ``close_fds``, ``pass_fds``, ``start_new_session``...) mean what they mean to
    ``Popen``; text mode is refused (:class:`ValueError`): the pipes carry bytes.  Each
    stream given as :data:`PIPE` becomes a pipe transport with the water marks of
    *options*; reads go into *recv_buffer* (default: the thread's shared one).

    The protocol hears ``connection_made(process)`` before anything else, then
    ``pipe_data_received``, ``pipe_connection_lost`` and, once the child has been
    reaped, ``process_exited()`` (see the module note for how the exit is learned,
    and :attr:`Process.exit_watch`).  *on_exit* is called with the process after
    ``process_exited`` (an owner's bookkeeping).  What ``Popen`` raises (a missing
    program: :class:`FileNotFoundError`) is raised here, with nothing left open.
    """
    check_factory(protocol_factory)
    _check_popen_options(popen_options)
    watch = Process.exit_watch
    if watch not in EXIT_WATCHES:
        raise ValueError(f"Process.exit_watch must be one of {EXIT_WATCHES}, not {watch!r}")
    if watch == "sigchld" and not _in_main_thread():
        raise RuntimeError("Process.exit_watch is 'sigchld' outside the main thread")
    protocol = protocol_factory()
    popen = subprocess.Popen(
        args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        bufsize=0,
        **popen_options,
    )
    process = Process(dispatcher, popen, protocol, on_exit)
    try:
        process._start(watch, options, recv_buffer)
    except BaseException:
        process._abandon()
        raise
    try:
        process._started()
    except BaseException:
        # A protocol that failed to start gets no more callbacks, and no child.
        process._abandon()
        raise
    return process
