"""Serving one port from several processes: a supervising parent and forked workers.

A Python process runs on one core; :class:`WorkerPool` runs N copies of a
:class:`~asycamore.servicemodel.Service` in forked processes that share the same
listening addresses::

    from asycamore.servicemodel import Protocol
    from asycamore.workers import WorkerPool

    class Echo(Protocol):
        def data_received(self, data):
            self.transport.write(data)

    pool = WorkerPool(4)
    pool.bind_tcp("0.0.0.0", 8000)          # in the parent: errors surface here
    pool.run(lambda service, worker: worker.listen(service, Echo))

How the work is shared
    The parent creates every listening socket before it forks, and keeps them open
    for as long as it runs; the workers inherit them.  On Linux each worker gets its
    own socket per address, all bound with ``SO_REUSEPORT``, and the kernel spreads
    incoming connections over them by a hash of the connection's addresses.  On
    macOS and the BSDs ``SO_REUSEPORT`` does not balance (the most recent socket
    takes every connection), so there the workers share one socket per address and
    each accepts from it: whichever worker is idle first takes the next connection.
    Because the parent holds the sockets, a replacement worker takes over its
    predecessor's socket, with the connections queued on it meanwhile, and the port
    is never released while the pool runs (nginx does the same with ``reuseport``).
    UDP sockets (:meth:`WorkerPool.bind_udp`, served with :meth:`Worker.serve_udp`)
    are shared out the same way: on Linux the hash keeps each client's datagrams on
    one worker.

Supervision
    The parent runs no event loop: it waits for signals and child exits.  A worker
    that exits when it was not asked to is reported on logger ``"asycamore"`` (at
    WARNING, so on stderr when logging is not configured) and replaced; one that
    keeps dying within :attr:`WorkerPool.min_uptime` of its start is restarted after
    a delay that doubles up to :attr:`WorkerPool.max_restart_delay`, so a crash loop
    does not spin.  SIGINT or SIGTERM to the parent stops the pool: the parent closes
    its copies of the sockets, sends SIGTERM to each worker (whose service then stops
    gracefully, see :meth:`Service.stop() <asycamore.servicemodel.Service.stop>`),
    waits up to :attr:`WorkerPool.kill_timeout` seconds, SIGKILLs what is left and
    returns.

No orphans
    Each worker watches the read end of a pipe whose only write end is held by the
    parent.  However the parent ends -- even by SIGKILL -- the kernel closes that end,
    the pipe reads EOF in every worker, and each worker stops gracefully as if it had
    been sent SIGTERM.  (``prctl(PR_SET_PDEATHSIG)`` would do it on Linux only, and is
    not in the standard library; polling :func:`os.getppid` would cost a timer.)

Workers stop on SIGTERM only and ignore the pool's other stop signals (SIGINT by
default): a Ctrl-C reaches the whole process group, and the parent turns it into one
SIGTERM per worker.  A worker that also took the SIGINT would see the SIGTERM as a
second signal and abort its connections instead of letting them finish.

Call :meth:`WorkerPool.run` from the main thread of a program that has started no
other thread (forking a threaded process copies only the calling thread, and any lock
another thread held stays locked in the child), and before creating any dispatch
context: a worker must not share an epoll or kqueue descriptor with its parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import _exit as _exit_now
from typing import Any

from .dispatcher import Events, IDispatchContext
from .servicemodel import DEFAULT_STOP_TIMEOUT, Service
from .tcpsocket import DEFAULT_BACKLOG, Listener, StreamHandler, create_listening_sockets
from .udpsocket import DatagramEndpoint, DatagramHandler, create_datagram_sockets
from .wakeup import SignalCatcher, Waker

__all__ = [
    "DEFAULT_STOP_SIGNALS",
    "MAX_WORKERS",
    "REUSE_PORT_BALANCES",
    "Worker",
    "WorkerPool",
    "WorkerStartError",
    "serve_workers",
]

_log = logging.getLogger("asycamore")

MAX_WORKERS = 64
"""The largest pool :class:`WorkerPool` accepts."""

REUSE_PORT_BALANCES = sys.platform.startswith("linux")
"""Whether ``SO_REUSEPORT`` spreads connections over the sockets bound to one address
(Linux 3.9+).  Elsewhere the pool's workers share one socket per address."""

DEFAULT_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a pool, by default."""


class WorkerStartError(RuntimeError):
    """A worker exited before it was ready; the pool did not start."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        """The worker's exit status (``128 + signal`` if a signal ended it)."""


@dataclass
class Worker:
    """What a worker's ``setup`` callback is given: which worker it is, and its
    listening (TCP) and UDP sockets."""

    index: int
    """The worker's slot, ``0`` to ``workers - 1``; a replacement keeps its slot."""
    sockets: list[socket.socket]
    """This worker's listening sockets, in the order they were bound in the parent."""
    datagram_sockets: list[socket.socket] = field(default_factory=list)
    """This worker's UDP sockets (:meth:`WorkerPool.bind_udp`), in the same order."""

    def listen(
        self,
        service: Service,
        protocol_factory: Callable[[], StreamHandler],
        **options: Any,
    ) -> Listener:
        """Serve every listening socket of the worker with *protocol_factory*, from one
        listener (:meth:`Service.listen_socket()
        <asycamore.servicemodel.Service.listen_socket>`, which takes *options*:
        ``ssl=`` for TLS, the water marks...)."""
        return service.listen_socket(protocol_factory, self.sockets, **options)

    def serve_udp(
        self,
        service: Service,
        protocol_factory: Callable[[], DatagramHandler],
        **options: Any,
    ) -> list[DatagramEndpoint]:
        """Serve every UDP socket of the worker, each with a new protocol from
        *protocol_factory* (:meth:`Service.serve_udp_socket()
        <asycamore.servicemodel.Service.serve_udp_socket>`, which takes *options*: the
        water marks)."""
        endpoints: list[DatagramEndpoint] = []
        try:
            for sock in self.datagram_sockets:
                endpoints.append(service.serve_udp_socket(protocol_factory, sock, **options))
        except BaseException:
            # As Service.bind_udp_all does: all or nothing.
            for endpoint in endpoints:
                endpoint.abort()
            for sock in self.datagram_sockets[len(endpoints) :]:
                sock.close()
            raise
        return endpoints


@dataclass
class _Slot:
    index: int
    sockets: list[socket.socket]
    datagram_sockets: list[socket.socket] = field(default_factory=list)
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    delay: float = 0.0
    restart_at: float | None = None
    history: list[str] = field(default_factory=list)


def _describe(status: int) -> tuple[str, int]:
    """A wait status in words, and as an exit status (``128 + signal`` for a signal)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}", 128 + signum
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}", code


class _ParentWatch:
    """A worker's dispatch target on the read end of the parent's pipe: EOF means the
    parent is gone, and the worker stops."""

    __slots__ = ("_fd", "_service")

    def __init__(self, fd: int, service: Service) -> None:
        self._fd = fd
        self._service = service

    def fileno(self) -> int:
        return self._fd

    def handle_read_event(self) -> None:
        # Nobody ever writes to the pipe: readable means EOF (or an error, just as final).
        with contextlib.suppress(KeyError, ValueError):
            self._service.dispatcher.unregister(self)
        _log.warning("worker %d: the parent process is gone; stopping", os.getpid())
        self._service.stop()

    def handle_write_event(self) -> None:
        """Never called: the watch registers for reading only."""


class WorkerPool:
    """N forked worker processes serving listening and UDP sockets bound by the parent.

    *workers* is the number of processes (1 to :data:`MAX_WORKERS`).  *backend* and
    *service_options* make each worker's :class:`~asycamore.servicemodel.Service`
    (the backend is checked in the parent, before any fork).  *reuse_port* chooses
    one socket per worker and address (``SO_REUSEPORT``) or one socket per address
    shared by all; the default is :data:`REUSE_PORT_BALANCES`.
    """

    min_uptime: float = 1.0
    """A worker that exits sooner than this after its start is restarted with a delay."""
    max_restart_delay: float = 5.0
    """The longest delay before restarting a crash-looping worker, in seconds."""

    def __init__(
        self,
        workers: int,
        *,
        backend: str | None = None,
        reuse_port: bool | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        kill_timeout: float | None = None,
        stop_signals: Sequence[int] = DEFAULT_STOP_SIGNALS,
        **service_options: Any,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, not {workers}")
        from .factory import backend_class

        backend_class(backend)  # a bad backend fails here, in the parent, once
        self.workers = workers
        """The number of worker processes."""
        self.backend = backend
        self.reuse_port = REUSE_PORT_BALANCES if reuse_port is None else reuse_port
        """Whether each worker has its own ``SO_REUSEPORT`` socket per address."""
        self.stop_timeout = stop_timeout
        """Seconds each worker's service lets its connections finish when stopping."""
        self.kill_timeout = stop_timeout + 3.0 if kill_timeout is None else kill_timeout
        """Seconds the parent waits for the workers to stop before it SIGKILLs them."""
        self.service_options = service_options
        self.stop_signals = tuple(stop_signals)
        """The signals that stop the pool when sent to the parent (SIGTERM always does)."""
        if signal.SIGTERM not in self.stop_signals:
            self.stop_signals += (signal.SIGTERM,)
        self._parent_signals = (*self.stop_signals, signal.SIGCHLD)
        self._slots = [_Slot(index, []) for index in range(workers)]
        self.addresses: list[Any] = []
        """The bound addresses (``getsockname()``), in the order :meth:`bind_tcp` and
        :meth:`bind_udp` bound them (the calls' own return values tell TCP from UDP)."""
        self._running = False
        self._inherited: tuple[Waker, list[int]] | None = None

    # -- the parent ----------------------------------------------------------------------

    def bind_tcp(
        self, host: str | None, port: int, *, backlog: int = DEFAULT_BACKLOG
    ) -> list[Any]:
        """Bind and listen on every address of *host*:*port* now, in the parent (as
        :meth:`Service.listen_tcp() <asycamore.servicemodel.Service.listen_tcp>` does:
        ``localhost`` is ``127.0.0.1`` and ``::1``); return the bound addresses (port 0
        picks a free port, shared by every address and worker).

        Raises :class:`OSError` (:class:`socket.gaierror` for a bad address) before
        any worker exists.
        """
        per_worker = self._bind_per_worker(
            lambda port, reuse_port: create_listening_sockets(
                host, port, backlog=backlog, reuse_port=reuse_port
            ),
            port,
        )
        return self._hand_out(per_worker, lambda slot: slot.sockets)

    def bind_udp(
        self, host: str | None, port: int, *, socket_buffer_size: int | None = None
    ) -> list[Any]:
        """Bind UDP sockets on every address of *host*:*port* now, in the parent (see
        :func:`~asycamore.udpsocket.create_datagram_sockets`); return the bound
        addresses.  Each worker serves its share with :meth:`Worker.serve_udp`.

        On Linux every worker has its own ``SO_REUSEPORT`` socket per address and the
        kernel spreads the datagrams over them by a hash of their addresses, so one
        client's datagrams keep reaching the same worker; elsewhere the workers share
        one socket per address and whichever reads first takes the next datagram.
        Raises :class:`OSError` before any worker exists.
        """
        per_worker = self._bind_per_worker(
            lambda port, reuse_port: create_datagram_sockets(
                host, port, reuse_port=reuse_port, socket_buffer_size=socket_buffer_size
            ),
            port,
        )
        return self._hand_out(per_worker, lambda slot: slot.datagram_sockets)

    def _bind_per_worker(
        self, make: Callable[[int, bool], list[socket.socket]], port: int
    ) -> list[list[socket.socket]]:
        """The sockets of each worker by slot: its own with ``reuse_port``, else the
        same ones for every worker."""
        first = make(port, self.reuse_port)
        per_worker = [first]
        try:
            if self.reuse_port:
                # The other workers' sockets: the same addresses, on the port now known.
                bound_port = first[0].getsockname()[1]
                for _ in range(self.workers - 1):
                    per_worker.append(make(bound_port, True))
        except BaseException:
            for sockets in per_worker:
                for sock in sockets:
                    sock.close()
            raise
        if not self.reuse_port:
            per_worker *= self.workers
        return per_worker

    def _hand_out(
        self,
        per_worker: list[list[socket.socket]],
        kept: Callable[[_Slot], list[socket.socket]],
    ) -> list[Any]:
        """Give each slot its sockets (into its ``kept(slot)`` list); return the
        addresses bound."""
        for slot in self._slots:
            kept(slot).extend(per_worker[slot.index])
        return self._bound(per_worker[0])

    def _bound(self, sockets: list[socket.socket]) -> list[Any]:
        addresses = [sock.getsockname() for sock in sockets]
        self.addresses.extend(addresses)
        return addresses

    @property
    def pids(self) -> list[int]:
        """The pids of the running workers, by slot (``0`` for a slot being restarted)."""
        return [slot.pid for slot in self._slots]

    def run(
        self,
        setup: Callable[[Service, Worker], object],
        *,
        on_ready: Callable[[], object] | None = None,
        ignore_signals_afterwards: bool = False,
    ) -> int:
        """Fork the workers and supervise them until a stop signal; return 0.

        In each worker, ``setup(service, worker)`` is called with a new
        :class:`~asycamore.servicemodel.Service` and the :class:`Worker`; it adds
        listeners (:meth:`Worker.listen`), UDP endpoints (:meth:`Worker.serve_udp`)
        and whatever else the service runs, then
        the worker serves until it is told to stop.  *on_ready* is called in the
        parent once every worker has finished its ``setup`` (print "listening" there).

        Raises :class:`WorkerStartError` if a worker exits before it is ready (its
        ``setup`` raised, say; the worker prints the traceback): the other workers
        are stopped first.  The listening sockets are closed when this returns.  The
        parent's signal handlers are restored then, or, with
        *ignore_signals_afterwards*, the stop signals are ignored from then on (for a
        program that exits next: a second Ctrl-C must not change its exit status).
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("WorkerPool.run() must be called from the main thread")
        if self._running:
            raise RuntimeError("the pool is already running")
        self._running = True
        waker = Waker()
        catcher = SignalCatcher(waker)
        # Nobody writes to this pipe: the workers read EOF from it once the parent is gone.
        watch_r, watch_w = os.pipe()
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        self._inherited = (waker, [watch_w, ready_r])
        sigchld = signal.getsignal(signal.SIGCHLD)
        try:
            with catcher.installed(
                self._parent_signals, ignore_afterwards=ignore_signals_afterwards
            ):
                return self._supervise(setup, on_ready, catcher, waker, watch_r, ready_r, ready_w)
        finally:
            if ignore_signals_afterwards and sigchld is not None:
                # Ignoring SIGCHLD would mean something else (children reaped by the
                # kernel): only the stop signals are to be ignored.
                signal.signal(signal.SIGCHLD, sigchld)
            self._kill_all(signal.SIGKILL)  # only if something above went wrong
            self._reap_all(block=True)
            for fd in (watch_r, watch_w, ready_r, ready_w):
                os.close(fd)
            waker.close()
            self._close_sockets()
            self._running = False

    def _supervise(
        self,
        setup: Callable[[Service, Worker], object],
        on_ready: Callable[[], object] | None,
        catcher: SignalCatcher,
        waker: Waker,
        watch_r: int,
        ready_r: int,
        ready_w: int,
    ) -> int:
        for slot in self._slots:
            self._spawn(slot, setup, watch_r, ready_w)
        poller = select.poll()
        poller.register(waker.fileno(), select.POLLIN)
        poller.register(ready_r, select.POLLIN)
        started = False
        while True:
            if _take_stop_signal(catcher):
                return self._stop(waker, catcher)
            for slot, status in self._reap_all(block=False):
                what, code = _describe(status)
                if not started and not slot.ready:
                    message = f"worker {slot.index} (pid {slot.pid}) {what} before it was ready"
                    slot.pid = 0
                    self._stop(waker, catcher)
                    raise WorkerStartError(message, code)
                self._schedule_restart(slot, what)
            now = time.monotonic()
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    self._spawn(slot, setup, watch_r, ready_w)
            if not started and all(slot.ready for slot in self._slots):
                started = True
                if on_ready is not None:
                    on_ready()
            poller.poll(self._poll_timeout())
            waker.handle_read_event()
            self._read_ready(ready_r)

    def _poll_timeout(self) -> int | None:
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        if not due:
            return None
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _read_ready(self, ready_r: int) -> None:
        while True:
            try:
                data = os.read(ready_r, 256)
            except BlockingIOError:
                return
            if not data:
                return
            for index in data:
                self._slots[index].ready = True

    def _schedule_restart(self, slot: _Slot, what: str) -> None:
        pid, slot.pid, slot.ready = slot.pid, 0, False
        uptime = time.monotonic() - slot.started
        if uptime < self.min_uptime:
            slot.delay = min(max(2 * slot.delay, 0.1), self.max_restart_delay)
        else:
            slot.delay = 0.0
        _log.warning(
            "worker %d (pid %d) %s; starting a new one%s",
            slot.index,
            pid,
            what,
            f" in {slot.delay:.1f} s" if slot.delay else "",
        )
        slot.restart_at = time.monotonic() + slot.delay

    def _spawn(
        self,
        slot: _Slot,
        setup: Callable[[Service, Worker], object],
        watch_r: int,
        ready_w: int,
    ) -> None:
        # Buffered output would be written twice, once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        # The child must not run the parent's handlers (which write to the parent's
        # wake-up pipe) between the fork and installing its own: block them meanwhile.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self._parent_signals)
        try:
            pid = os.fork()
            if pid == 0:
                self._worker_main(slot, setup, watch_r, ready_w, blocked)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.ready = False

    def _reap_all(self, *, block: bool) -> list[tuple[_Slot, int]]:
        reaped = []
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0
            if pid:
                reaped.append((slot, status))
                if block:
                    slot.pid = 0
        return reaped

    def _kill_all(self, signum: int) -> None:
        for slot in self._slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _close_sockets(self) -> None:
        for slot in self._slots:
            for sock in (*slot.sockets, *slot.datagram_sockets):
                sock.close()

    def _stop(self, waker: Waker, catcher: SignalCatcher) -> int:
        """Stop every worker gracefully, SIGKILL the stragglers; return 0."""
        # New connections are refused from here on: the workers close their copies of
        # the sockets as they begin to stop, and ours go now.
        self._close_sockets()
        for slot in self._slots:
            slot.restart_at = None
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_timeout
        poller = select.poll()
        poller.register(waker.fileno(), select.POLLIN)
        while any(slot.pid for slot in self._slots):
            for slot, _status in self._reap_all(block=False):
                slot.pid = 0
            left = deadline - time.monotonic()
            if not any(slot.pid for slot in self._slots):
                break
            if left <= 0:
                stragglers = [slot.pid for slot in self._slots if slot.pid]
                _log.warning(
                    "%d worker(s) did not stop within %.1f s: killing pid(s) %s",
                    len(stragglers),
                    self.kill_timeout,
                    ", ".join(map(str, stragglers)),
                )
                self._kill_all(signal.SIGKILL)
                self._reap_all(block=True)
                break
            # A SIGCHLD (or a second SIGINT/SIGTERM, forwarded) wakes us up.
            poller.poll(int(left * 1000) + 1)
            waker.handle_read_event()
            if _take_stop_signal(catcher):
                # Asked again: the workers' services abort what is left at once.
                self._kill_all(signal.SIGTERM)
        return 0

    # -- a worker --------------------------------------------------------------------------

    def _worker_main(
        self,
        slot: _Slot,
        setup: Callable[[Service, Worker], object],
        watch_r: int,
        ready_w: int,
        mask: set[int | signal.Signals],
    ) -> None:
        """The child's side of the fork: never returns."""
        status = 1
        try:
            status = self._worker(slot, setup, watch_r, ready_w, mask)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # Never unwind into the parent's stack (its finally blocks, atexit hooks).
            _exit_now(status)

    def _worker(
        self,
        slot: _Slot,
        setup: Callable[[Service, Worker], object],
        watch_r: int,
        ready_w: int,
        mask: set[int | signal.Signals],
    ) -> int:
        # Signals are still blocked here: drop the parent's handlers and wake-up fd.
        signal.set_wakeup_fd(-1)
        for signum in self._parent_signals:
            signal.signal(signum, signal.SIG_DFL)
        assert self._inherited is not None
        waker, fds = self._inherited
        waker.close()
        for fd in fds:
            os.close(fd)
        own = {sock.fileno() for sock in (*slot.sockets, *slot.datagram_sockets)}
        for other in self._slots:
            for sock in (*other.sockets, *other.datagram_sockets):
                if sock.fileno() not in own:
                    sock.close()
        service_options = {"stop_timeout": self.stop_timeout, **self.service_options}
        with Service(self.backend, **service_options) as service:
            watch = _ParentWatch(watch_r, service)
            service.dispatcher.register(watch, Events.READ)
            setup(service, Worker(slot.index, list(slot.sockets), list(slot.datagram_sockets)))
            # Only SIGTERM, from the parent, stops a worker: the other stop signals
            # (Ctrl-C's SIGINT, a closed terminal's SIGHUP) reach the whole process
            # group, and the parent turns them into one SIGTERM each (see the module's
            # docstring).
            for signum in self.stop_signals:
                if signum != signal.SIGTERM:
                    signal.signal(signum, signal.SIG_IGN)
            with service.signal_handling((signal.SIGTERM,)):
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.write(ready_w, bytes([slot.index]))
                os.close(ready_w)
                service.serve_forever()
            _unregister_quietly(service.dispatcher, watch)
        return 0


def _take_stop_signal(catcher: SignalCatcher) -> bool:
    """Whether a stop signal arrived since the last call (SIGCHLD is only noted: the
    supervisor reaps children on every wake-up anyway)."""
    pending = catcher.pending
    stop = any(signum != signal.SIGCHLD for signum in pending)
    pending.clear()
    return stop


def _unregister_quietly(dispatcher: IDispatchContext, target: _ParentWatch) -> None:
    with contextlib.suppress(KeyError, ValueError):
        dispatcher.unregister(target)


def serve_workers(
    workers: int,
    setup: Callable[[Service, Worker], object],
    addresses: Sequence[tuple[str | None, int]],
    *,
    on_ready: Callable[[list[Any]], object] | None = None,
    **pool_options: Any,
) -> int:
    """Bind *addresses* (``(host, port)`` pairs) and run *setup* in *workers*
    processes until SIGINT or SIGTERM; return 0.

    A one-call :class:`WorkerPool`: *pool_options* go to its constructor, and
    *on_ready* is called in the parent with the bound addresses once every worker is
    ready.  Bad addresses raise :class:`OSError` before any worker starts.
    """
    pool = WorkerPool(workers, **pool_options)
    for host, port in addresses:
        pool.bind_tcp(host, port)
    ready = None if on_ready is None else (lambda: on_ready(pool.addresses))
    return pool.run(setup, on_ready=ready)
