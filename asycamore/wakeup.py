"""Waking a blocked dispatch: from another thread, or from a signal.

A loop blocked in :meth:`~asycamore.IDispatchContext.dispatch_once` can only be woken
through a descriptor it watches.  :class:`Waker` is that descriptor: the read end of a
socket pair, registered like any target; writing a byte to the other end makes the
dispatch return.  :class:`SignalCatcher` points :func:`signal.set_wakeup_fd` at a
waker and installs handlers that only note the signal, so a signal is handled by the
loop between two dispatches rather than in the middle of whatever Python code happened
to run when it arrived.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

__all__ = ["DEFAULT_SIGNALS", "SignalCatcher", "Waker"]


class Waker:
    """A dispatch target that wakes a blocked dispatch when :meth:`wake` is called.

    Register it for :attr:`~asycamore.Events.READ`; its read handler drains what was
    written, so one dispatch returns per batch of wake-ups and none spins.
    """

    __slots__ = ("_fileno", "_reader", "_writer")

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._fileno = self._reader.fileno()

    def fileno(self) -> int:
        """The read end's descriptor (the one to register)."""
        return self._fileno

    def write_fileno(self) -> int:
        """The write end's descriptor (for :func:`signal.set_wakeup_fd`)."""
        return self._writer.fileno()

    def handle_read_event(self) -> None:
        """Drain the wake-up bytes."""
        recv = self._reader.recv
        while True:
            try:
                data = recv(4096)
            except OSError:  # drained (BlockingIOError), interrupted, or closed
                return
            if len(data) < 4096:
                return

    def handle_write_event(self) -> None:
        """Never called: a waker registers for reading only."""

    def wake(self) -> None:
        """Make a blocked dispatch return (from any thread)."""
        # Full (BlockingIOError): a wake-up is already pending.  Closed: nothing to wake.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def close(self) -> None:
        """Close both ends."""
        self._reader.close()
        self._writer.close()


DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a service stops on by default."""


class SignalCatcher:
    """Notes signals while :meth:`installed` is active, waking *waker* for each.

    The handlers run between two bytecodes of the main thread and only append the
    signal number to :attr:`pending`; :func:`signal.set_wakeup_fd` has already written
    to the waker by then, so a blocked dispatch returns and the loop can act on
    :attr:`pending` in its own time.
    """

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        """The waker the signals wake."""
        self.pending: list[int] = []
        """Signals received and not yet taken by the loop, oldest first."""
        self._active = False

    @property
    def active(self) -> bool:
        """Whether the handlers are installed."""
        return self._active

    def detach_waker(self) -> None:
        """Stop signals from writing to the waker, which is about to be closed.

        The handlers stay installed until :meth:`installed` exits (which restores the
        previous wake-up fd); meanwhile a signal is still noted, just not written
        anywhere.  Does nothing when the handlers are not installed.
        """
        if self._active:
            signal.set_wakeup_fd(-1)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    @contextlib.contextmanager
    def installed(
        self, signals: Iterable[int] = DEFAULT_SIGNALS, *, ignore_afterwards: bool = False
    ) -> Iterator[bool]:
        """A context manager: handlers for *signals* and the wake-up fd are ours while it
        runs.

        Yields whether they were installed: not outside the main thread (where Python
        cannot set signal handlers) and not when they already are.  On the way out the
        previous handlers and wake-up fd come back with the signals blocked, so no
        signal can arrive half-way (a previous handler that raises, such as the default
        SIGINT's KeyboardInterrupt, runs only once everything is restored).

        With *ignore_afterwards*, the signals are ignored from then on instead: for a
        process that exits once its service has stopped, a second signal during that
        exit must not kill it (the default handlers would, with status -2 or -15).
        """
        signals = tuple(signals)
        if self._active or threading.current_thread() is not threading.main_thread():
            yield False
            return
        try:
            old_fd = signal.set_wakeup_fd(self.waker.write_fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            yield False
            return
        old_handlers: dict[int, Any] = {}
        try:
            for signum in signals:
                old_handlers[signum] = signal.signal(signum, self._note)
        except BaseException:
            _restore(old_handlers, old_fd, signals)
            raise
        self._active = True
        try:
            yield True
        finally:
            self._active = False
            if ignore_afterwards:
                old_handlers = dict.fromkeys(old_handlers, signal.SIG_IGN)
            _restore(old_handlers, old_fd, signals)


def _restore(handlers: dict[int, Any], wakeup_fd: int, signals: tuple[int, ...]) -> None:
    """Put back *handlers* and *wakeup_fd* with *signals* blocked meanwhile."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        # The wake-up fd first: it points at a socket that its owner may close next.
        signal.set_wakeup_fd(wakeup_fd)
        for signum, old in handlers.items():
            signal.signal(signum, old)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
