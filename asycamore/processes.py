"""Child processes and pipes as transports: :func:`spawn`, :func:`connect_read_pipe`,
:func:`connect_write_pipe`.

The public face of the process and pipe modules of the private ``asycamore._transport``
package, as :mod:`asycamore.tcpsocket` is of its socket modules.  Everything here works
on any dispatch context (a program on :func:`~asycamore.iterate` needs no service);
:class:`asycamore.servicemodel.Service` has the same calls as methods
(:meth:`~asycamore.servicemodel.Service.spawn`...), which track what they make and end
it when the service stops.

- :func:`spawn` starts a child with :class:`subprocess.Popen` and returns a
  :class:`Process`; its protocol (a :class:`ProcessHandler`, asyncio's
  ``SubprocessProtocol`` names) hears ``connection_made(process)``,
  ``pipe_data_received(fd, data)``, ``pipe_connection_lost(fd, exc)`` and
  ``process_exited()``.  Each pipe is a stream transport of its own, with its own flow
  control: the child's stdin has water marks and ``pause_writing``/``resume_writing``,
  and a full stdin never stops the reading of stdout and stderr.  The exit is learned
  from a pidfd registered in the context (Linux), else from SIGCHLD, else (no pidfd,
  not the main thread) from a helper thread; only the process's own children are ever
  reaped (:attr:`Process.exit_watch`).
- :func:`connect_read_pipe` and :func:`connect_write_pipe` make a
  :class:`ReadPipeTransport` or :class:`WritePipeTransport` of an existing pipe, FIFO,
  tty or socket: the stream transport of :class:`~asycamore.tcpsocket.Connection`, over
  ``os.read``/``os.write``.  A regular file is refused (:class:`ValueError`: it is
  always ready), and so is what the backend cannot watch (epoll: ``/dev/null``), both
  leaving the file open and untouched.

Everything here is single-threaded: call a transport's or a process's methods only from
the thread that runs its dispatch context.
"""

from __future__ import annotations

from ._transport.pipes import (
    PipeTransport,
    ReadPipeTransport,
    WritePipeTransport,
    connect_read_pipe,
    connect_write_pipe,
)
from ._transport.process import (
    DEVNULL,
    EXIT_WATCHES,
    PIPE,
    STDOUT,
    Process,
    ProcessHandler,
    spawn,
)

__all__ = [
    "DEVNULL",
    "EXIT_WATCHES",
    "PIPE",
    "STDOUT",
    "PipeTransport",
    "Process",
    "ProcessHandler",
    "ReadPipeTransport",
    "WritePipeTransport",
    "connect_read_pipe",
    "connect_write_pipe",
    "spawn",
]
