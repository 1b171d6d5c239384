"""Which transports a service owns, and their idle timeouts: :class:`TransportSet`.

A :class:`~asycamore.servicemodel.Service` keeps every listener, stream transport and
datagram endpoint it made here, and every child process it spawned, so that a stop
can wind them all down and a close can abort them.  A stream is tracked as the
transport its protocol sees -- the :class:`~asycamore.tcpsocket.TLSConnection` of a
TLS connection, not the plain connection under it -- so the idle timeout and the stop
talk to the protocol through the same object the protocol talks through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .processes import Process
from .tcpsocket import Connection, Listener, TransportCounters
from .timers import TimerHandle, Timers
from .udpsocket import DatagramEndpoint

if TYPE_CHECKING:
    from .tcpsocket import TLSConnection

    Stream = Connection | TLSConnection

__all__ = ["TransportSet"]

_log = logging.getLogger("asycamore")


class TransportSet:
    """The listeners, streams, datagram endpoints and child processes of one service.

    A stream added with an idle timeout is checked by *timers*: once nothing was read
    or written for that long, its protocol's ``connection_idle()`` is called (or the
    stream closed), and a stream still not closed one idle timeout later is aborted.
    """

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        self.counters = TransportCounters()
        """What the transports made with the service's options have done (their
        :class:`~asycamore.tcpsocket.TransportOptions` carry it)."""
        self._streams: dict[Stream, TimerHandle | None] = {}
        self._endpoints: dict[DatagramEndpoint, None] = {}  # ordered, O(1) removal
        self._listeners: list[Listener] = []
        self._processes: dict[Process, None] = {}  # not yet reaped
        # Reaped, but with a pipe still open (a grandchild may hold it): a close closes it.
        self._reaped: dict[Process, None] = {}
        self.processes_exited = 0
        """Child processes reaped since the service was made."""
        self._stop_timer: TimerHandle | None = None

    # -- what there is -------------------------------------------------------------------

    @property
    def streams(self) -> list[Stream]:
        """A snapshot of the open stream transports."""
        return list(self._streams)

    @property
    def stream_count(self) -> int:
        """How many stream transports are open."""
        return len(self._streams)

    @property
    def endpoints(self) -> list[DatagramEndpoint]:
        """A snapshot of the open datagram endpoints."""
        return list(self._endpoints)

    @property
    def listeners(self) -> list[Listener]:
        """The listeners that have not been closed."""
        return [listener for listener in self._listeners if not listener.closed]

    @property
    def processes(self) -> list[Process]:
        """A snapshot of the child processes not yet reaped."""
        return list(self._processes)

    @property
    def process_count(self) -> int:
        """How many child processes have not been reaped yet."""
        return len(self._processes)

    def __bool__(self) -> bool:
        """Whether a stream or an endpoint is still open, or a child not yet reaped
        (listeners do not count)."""
        return bool(self._streams or self._endpoints or self._processes)

    # -- adding and removing --------------------------------------------------------------

    def stream_hook(self, idle_timeout: float | None) -> Callable[[Any], None]:
        """The ``on_connection`` hook that adds a listener's streams."""
        if idle_timeout is None:
            # No timer to arm: a listener hands over a stream that is open, so the
            # bookkeeping is one dict store (this runs for every connection).
            streams = self._streams

            def add(stream: Stream) -> None:
                streams[stream] = None

            return add

        def add_idle(stream: Stream) -> None:
            self.add_stream(stream, idle_timeout)

        return add_idle

    def add_stream(self, stream: Stream, idle_timeout: float | None) -> None:
        """Track *stream* (unless it is closed already), with its idle timeout."""
        if stream.closed:
            return
        timer = None
        if idle_timeout is not None:
            stream.set_clock(self._timers.clock)
            timer = self._timers.call_at(
                stream.last_activity + idle_timeout, self._check_idle, stream, idle_timeout
            )
        self._streams[stream] = timer

    def remove_stream(self, stream: Stream) -> None:
        """Forget *stream* (harmless if it is not tracked): an ``on_close`` hook."""
        timer = self._streams.pop(stream, None)
        if timer is not None:
            timer.cancel()

    def replace_stream(self, old: Stream, new: Stream, idle_timeout: float | None) -> None:
        """Track *new* instead of *old* (a STARTTLS upgrade: the protocol's transport
        changed)."""
        self.remove_stream(old)
        self.add_stream(new, idle_timeout)

    def add_endpoint(self, endpoint: DatagramEndpoint) -> None:
        """Track *endpoint* (unless it is closed already)."""
        if not endpoint.closed:
            self._endpoints[endpoint] = None

    def remove_endpoint(self, endpoint: DatagramEndpoint) -> None:
        """Forget *endpoint*: an ``on_close`` hook."""
        self._endpoints.pop(endpoint, None)

    def add_listener(self, listener: Listener) -> None:
        """Track *listener*."""
        self._listeners.append(listener)

    def add_process(self, process: Process) -> None:
        """Track *process* until it has been reaped (unless it has been already)."""
        if not process.exited:
            self._processes[process] = None

    def remove_process(self, process: Process) -> None:
        """*process* has been reaped: its ``on_exit`` hook.  Kept (for
        :meth:`close_processes`) while one of its pipes is open."""
        if self._processes.pop(process, 0) is None:
            self.processes_exited += 1
        for done in [done for done in self._reaped if done.pipes_closed]:
            del self._reaped[done]
        if not process.pipes_closed:
            self._reaped[process] = None

    # -- idle timeouts --------------------------------------------------------------------

    def _check_idle(self, stream: Stream, idle_timeout: float) -> None:
        if stream not in self._streams:
            return
        now = self._timers.clock()
        due = stream.last_activity + idle_timeout
        if now >= due:
            if stream.is_closing() or stream.connecting:
                # Not closed one idle timeout after connection_idle, or still
                # connecting (or in its TLS handshake) after a whole idle timeout.
                stream.abort(TimeoutError(f"idle timeout: {stream!r} did not finish in time"))
                return
            _log.debug("%r idle for %.1f s", stream, now - stream.last_activity)
            hook = getattr(stream.handler, "connection_idle", None)
            if hook is not None:
                hook()
            else:
                stream.close()
            if stream not in self._streams:
                return
            due = now + idle_timeout
        self._streams[stream] = self._timers.call_at(due, self._check_idle, stream, idle_timeout)

    # -- the end ---------------------------------------------------------------------------

    def stop(self, timeout: float) -> bool:
        """The graceful stop: close the listeners, :meth:`wind_down` the rest, and
        abort what is still open *timeout* seconds later.  Returns whether anything is
        left to wait for."""
        self.close_listeners()
        self.wind_down()
        if not self:
            return False
        self._stop_timer = self._timers.call_later(timeout, self._stop_timed_out)
        return True

    def cancel_stop(self) -> None:
        """Forget the timeout of a stop in progress (the loop stopped running)."""
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None

    def _stop_timed_out(self) -> None:
        self._stop_timer = None
        if self:
            _log.warning(
                "stop timeout: aborting %d transport(s) that did not close",
                len(self._streams) + len(self._endpoints) + len(self._processes),
            )
            self.abort_all(TimeoutError("the service stopped; connection aborted"))

    def close_listeners(self) -> None:
        """Close every listener: no new connections."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    def wind_down(self) -> None:
        """Ask every stream and endpoint to finish: its protocol's
        ``service_stopping()`` (or a graceful close without one); a connect still
        in progress is cancelled.  Every child process gets SIGTERM (the child
        itself, not its process group)."""
        for process in list(self._processes):
            process.terminate()
        for transport in [*self._streams, *self._endpoints]:
            hook = getattr(transport.handler, "service_stopping", None)
            try:
                if isinstance(transport, DatagramEndpoint) or not transport.connecting:
                    if hook is not None:
                        hook()
                    else:
                        transport.close()
                else:
                    # Still connecting: its protocol has no transport yet, and a
                    # connection made during the stop would be a new one.
                    transport.close()  # connection_failed(ECONNABORTED)
            except Exception as exc:
                _log.exception("error in service_stopping of %r", transport)
                transport.abort(exc)

    def abort_all(self, exc: BaseException) -> None:
        """Abort every stream and endpoint with *exc*; SIGKILL every child process
        (each is reaped, and removed, as the loop runs on)."""
        for process in list(self._processes):
            process.kill()
        for transport in [*self._streams, *self._endpoints]:
            try:
                transport.abort(exc)
            except Exception:
                _log.exception("error aborting %r", transport)

    def close_processes(self) -> None:
        """Close every child process (its pipes closed, the child killed), and reap it
        now, blocking: its protocol's ``process_exited()`` is called before this
        returns, and no zombie is left.  The pipes still open of children reaped
        already are closed too."""
        for process in [*self._processes, *self._reaped]:
            try:
                process.close()
                process.wait()
            except Exception:
                _log.exception("error closing %r", process)
        self._reaped.clear()
