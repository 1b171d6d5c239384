"""The API of Python 3.11's ``asynchat``: line- and length-framed protocols on asyncore.

Written for asycamore (not a copy of the standard library's source), on
:mod:`asycamore.compat.asyncore`.  After :func:`asycamore.compat.install`,
``import asynchat`` gives this module.

An :class:`async_chat` reads until its *terminator* -- a byte string, a byte count, or
``None`` for "everything" -- handing the data to ``collect_incoming_data()`` and calling
``found_terminator()`` at each boundary; on the output side it sends a queue of byte
strings and *producers* (objects whose ``more()`` returns the next chunk, ``b""`` at the
end), closing the channel at a ``None`` queued by :meth:`async_chat.close_when_done`.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

from . import asyncore

__all__ = ["async_chat", "find_prefix_at_end", "simple_producer"]

Terminator = bytes | str | int | None
"""A terminator: a delimiter, a number of bytes still to read, or None (no framing)."""


class async_chat(asyncore.dispatcher):
    """An abstract framed channel: subclass it and define ``collect_incoming_data()``
    and ``found_terminator()``."""

    ac_in_buffer_size = 65536
    """How much one read asks of the socket."""
    ac_out_buffer_size = 65536
    """The most one send hands the socket (longer pushes are split into such pieces)."""
    use_encoding = 0
    """When true, ``str`` terminators and data are encoded with :attr:`encoding`."""
    encoding = "latin-1"
    """The encoding for :attr:`use_encoding`."""
    terminator: Terminator
    """The current terminator (set it with :meth:`set_terminator`)."""

    def __init__(
        self, sock: socket.socket | None = None, map: asyncore.SocketMap | None = None
    ) -> None:
        self.ac_in_buffer = b""
        self.incoming: list[bytes] = []
        self.producer_fifo: deque[Any] = deque()
        super().__init__(sock, map)

    def collect_incoming_data(self, data: bytes) -> None:
        """Data up to the terminator arrived (define it in a subclass)."""
        raise NotImplementedError("must be implemented in subclass")

    def _collect_incoming_data(self, data: bytes) -> None:
        # A ready-made collect_incoming_data for subclasses (asynchat's own helper).
        self.incoming.append(data)

    def _get_data(self) -> bytes:
        # What _collect_incoming_data gathered, and forget it.
        data = b"".join(self.incoming)
        self.incoming.clear()
        return data

    def found_terminator(self) -> None:
        """The terminator was reached (define it in a subclass)."""
        raise NotImplementedError("must be implemented in subclass")

    def set_terminator(self, term: Terminator) -> None:
        """Set the input delimiter: a byte string, a byte count (>= 0), or None."""
        if isinstance(term, str) and self.use_encoding:
            term = term.encode(self.encoding)
        elif isinstance(term, int) and term < 0:
            raise ValueError("the number of received bytes must be positive")
        self.terminator = term

    def get_terminator(self) -> Terminator:
        """The current terminator."""
        return self.terminator

    def handle_read(self) -> None:
        """Read what is there and split it at the terminator, as often as it occurs."""
        try:
            data: Any = self.recv(self.ac_in_buffer_size)
        except BlockingIOError:
            return
        except OSError:
            self.handle_error()
            return
        if isinstance(data, str) and self.use_encoding:
            data = data.encode(self.encoding)
        self.ac_in_buffer = self.ac_in_buffer + data
        # found_terminator() may change the terminator: re-read it for every piece.
        while self.ac_in_buffer:
            buffered = len(self.ac_in_buffer)
            terminator = self.get_terminator()
            if not terminator:
                self.collect_incoming_data(self.ac_in_buffer)
                self.ac_in_buffer = b""
            elif isinstance(terminator, int):
                if buffered < terminator:
                    self.collect_incoming_data(self.ac_in_buffer)
                    self.ac_in_buffer = b""
                    self.terminator = terminator - buffered
                else:
                    self.collect_incoming_data(self.ac_in_buffer[:terminator])
                    self.ac_in_buffer = self.ac_in_buffer[terminator:]
                    self.terminator = 0
                    self.found_terminator()
            else:
                index = self.ac_in_buffer.find(terminator)  # type: ignore[arg-type]
                if index != -1:
                    if index > 0:
                        # An empty piece before the terminator is not reported.
                        self.collect_incoming_data(self.ac_in_buffer[:index])
                    self.ac_in_buffer = self.ac_in_buffer[index + len(terminator) :]
                    self.found_terminator()
                    continue
                # Keep a tail that may be the start of the terminator for the next read.
                prefix = find_prefix_at_end(self.ac_in_buffer, terminator)
                if not prefix:
                    self.collect_incoming_data(self.ac_in_buffer)
                    self.ac_in_buffer = b""
                    continue
                if prefix != buffered:
                    self.collect_incoming_data(self.ac_in_buffer[:-prefix])
                    self.ac_in_buffer = self.ac_in_buffer[-prefix:]
                break

    def handle_write(self) -> None:
        """Writable: send more of the queue."""
        self.initiate_send()

    def handle_close(self) -> None:
        """The peer closed: close the channel."""
        self.close()

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data* (bytes-like), then send what the socket takes now."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be byte-ish ({type(data)!r})")
        size = self.ac_out_buffer_size
        if len(data) > size:
            self.producer_fifo.extend(data[i : i + size] for i in range(0, len(data), size))
        else:
            self.producer_fifo.append(data)
        self.initiate_send()

    def push_with_producer(self, producer: Any) -> None:
        """Queue *producer* (anything with ``more()``, or a bytes-like), then send."""
        self.producer_fifo.append(producer)
        self.initiate_send()

    def readable(self) -> bool:
        """Always: the terminator logic needs every byte as it comes."""
        return True

    def writable(self) -> bool:
        """While the queue holds something, or the connection is not yet established."""
        return bool(self.producer_fifo) or not self.connected

    def close_when_done(self) -> None:
        """Close the channel once everything queued so far is sent."""
        self.producer_fifo.append(None)

    def initiate_send(self) -> None:
        """Send from the head of the queue: at most one ``send`` per call."""
        while self.producer_fifo and self.connected:
            first = self.producer_fifo[0]
            if not first:
                # An empty piece is dropped; None (close_when_done) closes.
                del self.producer_fifo[0]
                if first is None:
                    self.handle_close()
                    return
            size = self.ac_out_buffer_size
            try:
                data = first[:size]
            except TypeError:
                # A producer, not a buffer: its next chunk goes in front of it.
                data = first.more()
                if data:
                    self.producer_fifo.appendleft(data)
                else:
                    del self.producer_fifo[0]
                continue
            if isinstance(data, str) and self.use_encoding:
                data = data.encode(self.encoding)
            try:
                sent = self.send(data)
            except OSError:
                self.handle_error()
                return
            if sent:
                if sent < len(data) or size < len(first):
                    self.producer_fifo[0] = first[sent:]
                else:
                    del self.producer_fifo[0]
            return

    def discard_buffers(self) -> None:
        """Drop all buffered input and queued output (emergencies only)."""
        self.ac_in_buffer = b""
        self.incoming.clear()
        self.producer_fifo.clear()


class simple_producer:
    """A producer over one byte string, handing it out *buffer_size* bytes at a time."""

    def __init__(self, data: bytes, buffer_size: int = 512) -> None:
        self.data = data
        self.buffer_size = buffer_size

    def more(self) -> bytes:
        """The next chunk; ``b""`` once all was produced."""
        if len(self.data) > self.buffer_size:
            chunk = self.data[: self.buffer_size]
            self.data = self.data[self.buffer_size :]
            return chunk
        chunk, self.data = self.data, b""
        return chunk


def find_prefix_at_end(haystack: Any, needle: Any) -> int:
    """The length of the longest proper prefix of *needle* that *haystack* ends with.

    ``find_prefix_at_end(b"qwerty\\r", b"\\r\\n") == 1``; 0 when there is none.  (The
    caller has ruled out a whole *needle* at the end.)
    """
    length = len(needle) - 1
    while length and not haystack.endswith(needle[:length]):
        length -= 1
    return length
