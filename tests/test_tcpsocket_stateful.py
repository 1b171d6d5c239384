"""A hypothesis state machine over a Connection's write buffer and flow control.

The connection runs against a fake socket whose peer takes only as many bytes as the
test allows, and a fake context that records the registered interest and fails on a
``modify`` that changes nothing.  A model tracks what must hold after every step.
"""

from __future__ import annotations

import array
import random
import socket
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asycamore import Events
from asycamore.tcpsocket import Connection, TransportOptions

WRITE_KINDS = ["bytes", "bytearray", "memoryview", "array", "2-d memoryview"]
"""What a write may be given: bytes, and buffers it must copy (sized in bytes)."""


class FakeSocket:
    """The connection's side of a socket whose peer accepts ``capacity`` more bytes."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.capacity = 0
        self.peer = bytearray()
        self.shut_write = False
        self.closed = False
        self.sends = 0

    def fileno(self) -> int:
        return -1 if self.closed else 42

    def setblocking(self, flag: bool) -> None:
        pass

    def _take(self, data: Any) -> int:
        assert not self.closed and not self.shut_write
        view = memoryview(data).cast("B")
        if self.capacity == 0:
            raise BlockingIOError
        n = min(self.capacity, view.nbytes)
        self.peer += view[:n]
        self.capacity -= n
        self.sends += 1
        return n

    def send(self, data: Any) -> int:
        return self._take(data)

    def sendmsg(self, buffers: list[Any]) -> int:
        assert 1 < len(buffers) <= 64
        total = 0
        for buf in buffers:
            if self.capacity == 0:
                break
            total += self._take(buf)
        if not total:
            raise BlockingIOError
        return total

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        raise BlockingIOError

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_WR
        self.shut_write = True

    def close(self) -> None:
        self.closed = True


class FakeContext:
    name = "fake"

    def __init__(self) -> None:
        self.events: dict[int, Events] = {}

    def register(self, target: Any, events: Events = Events.READ) -> None:
        assert id(target) not in self.events
        self.events[id(target)] = events

    def modify(self, target: Any, events: Events) -> None:
        assert self.events[id(target)] != events, "modify() without a change"
        self.events[id(target)] = events

    def unregister(self, target: Any) -> None:
        del self.events[id(target)]

    def __contains__(self, target: object) -> bool:
        return id(target) in self.events


class Handler:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lost: list[BaseException | None] = []

    def connection_made(self, connection: Connection) -> None:
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        raise AssertionError("the fake socket never has data")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


HIGH = 4096
LOW = 1024


class ConnectionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sock = FakeSocket()
        self.context = FakeContext()
        self.handler = Handler()
        self.conn = Connection(
            self.context,  # type: ignore[arg-type]
            self.sock,  # type: ignore[arg-type]
            self.handler,
            TransportOptions(high_water=HIGH, low_water=LOW),
        )
        self.written = bytearray()
        self.flow_paused = False
        self.user_paused = False
        self.eof_requested = False
        self.closing = False

    @property
    def pending(self) -> int:
        return len(self.written) - len(self.sock.peer)

    def _after_progress(self) -> None:
        # A closing connection does not tell its handler to resume writing.
        if self.flow_paused and self.pending <= LOW and not self.closing:
            self.flow_paused = False
        if not self.flow_paused and self.pending > HIGH:
            self.flow_paused = True

    @precondition(lambda self: not self.conn.is_closing() and not self.eof_requested)
    @rule(
        data=st.binary(max_size=100) | st.binary(min_size=4000, max_size=12_000),
        kind=st.sampled_from(WRITE_KINDS),
    )
    def write(self, data: bytes, kind: str) -> None:
        obj: bytes | bytearray | memoryview | array.array[int] = data
        if kind == "bytearray":
            obj = bytearray(data)
        elif kind == "memoryview":
            source = bytearray(b"\xff" + data)
            obj = memoryview(source)[1:]
        elif kind == "array":
            obj = array.array("B", data)
        elif kind == "2-d memoryview" and data:
            # Not a byte view: its len() is 1, its size in bytes is len(data).
            obj = memoryview(bytearray(data)).cast("B", (1, len(data)))
        self.conn.write(obj)  # type: ignore[arg-type]
        if not isinstance(obj, bytes):
            # The caller may reuse its buffer at once: the connection must have copied.
            memoryview(obj).cast("B")[:] = b"\0" * len(data)
        self.written += data
        self._after_progress()

    @precondition(lambda self: not self.conn.is_closing() and not self.eof_requested)
    @rule(chunks=st.lists(st.binary(min_size=1, max_size=9000), min_size=2, max_size=6))
    def write_burst(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.conn.write(chunk)
            self.written += chunk
            self._after_progress()

    @precondition(lambda self: not self.conn.closed)
    @rule(n=st.integers(min_value=1, max_value=2500) | st.just(1 << 20))
    def peer_reads(self, n: int) -> None:
        # The peer makes room; the context reports the socket writable.
        self.sock.capacity += n
        if self.context.events[id(self.conn)] & Events.WRITE:
            self.conn.handle_write_event()
            self._after_progress()
            self._maybe_finished()

    @precondition(
        lambda self: not self.conn.closed and self.context.events[id(self.conn)] & Events.WRITE
    )
    @rule()
    def writable(self) -> None:
        self.conn.handle_write_event()
        self._after_progress()
        self._maybe_finished()

    @precondition(lambda self: not self.conn.is_closing())
    @rule(
        # The endings (write_eof, close) are rare so that most runs build up a buffer.
        action=st.sampled_from(["pause", "resume"] * 4 + ["write_eof", "close"]),
    )
    def control(self, action: str) -> None:
        if action == "pause":
            self.conn.pause_reading()
            self.user_paused = True
        elif action == "resume":
            self.conn.resume_reading()
            self.user_paused = False
        elif action == "write_eof":
            if not self.eof_requested:
                self.conn.write_eof()
                self.eof_requested = True
        else:
            self.conn.close()
            self.closing = True
            self._maybe_finished()

    @precondition(lambda self: self.eof_requested and not self.conn.is_closing())
    @rule()
    def write_after_eof_raises(self) -> None:
        try:
            self.conn.write(b"late")
        except RuntimeError:
            return
        raise AssertionError("write() after write_eof() did not raise")

    @precondition(lambda self: self.conn.is_closing())
    @rule()
    def write_when_closing_is_dropped(self) -> None:
        sends = self.sock.sends
        self.conn.write(b"dropped")
        assert self.sock.sends == sends

    def _maybe_finished(self) -> None:
        if self.closing and self.pending == 0:
            assert self.conn.closed

    @invariant()
    def bytes_arrive_in_order(self) -> None:
        assert self.sock.peer == self.written[: len(self.sock.peer)]
        if not self.conn.closed:
            assert self.conn.write_buffer_size == self.pending

    @invariant()
    def interest_matches_state(self) -> None:
        if self.conn.closed:
            assert id(self.conn) not in self.context.events
            assert self.sock.closed
            return
        events = self.context.events[id(self.conn)]
        assert bool(events & Events.WRITE) == (self.pending > 0)
        reading = not (self.user_paused or self.flow_paused or self.closing)
        assert bool(events & Events.READ) == reading
        assert self.conn.events == events

    @invariant()
    def flow_callbacks_alternate(self) -> None:
        flow = [call for call in self.handler.calls if call in ("pause", "resume")]
        for i, call in enumerate(flow):
            assert call == ("pause" if i % 2 == 0 else "resume")
        if not self.conn.closed:
            assert (flow[-1:] == ["pause"]) == self.flow_paused

    @invariant()
    def eof_is_sent_after_the_data(self) -> None:
        if self.sock.shut_write:
            # write_eof(), or close(): both send EOF once the data is out.
            assert (self.eof_requested or self.closing) and self.pending == 0
        elif self.eof_requested and not self.closing:
            assert self.pending > 0

    @invariant()
    def connection_lost_once(self) -> None:
        assert len(self.handler.lost) == (1 if self.conn.closed else 0)
        assert self.handler.lost in ([], [None])


TestConnectionMachine = ConnectionMachine.TestCase
TestConnectionMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def _check_invariants(machine: ConnectionMachine) -> None:
    machine.bytes_arrive_in_order()
    machine.interest_matches_state()
    machine.flow_callbacks_alternate()
    machine.eof_is_sent_after_the_data()
    machine.connection_lost_once()


def test_random_walks() -> None:
    """Long seeded random walks over the same machine: hypothesis explores widely but
    shallowly; these reach deep buffers (many chunks, partial sends) every time."""
    for seed in range(60):
        rng = random.Random(seed)
        machine = ConnectionMachine()
        for _ in range(300):
            conn = machine.conn
            roll = rng.random()
            if conn.closed:
                break
            if roll < 0.35 and not conn.is_closing() and not machine.eof_requested:
                size = rng.choice([rng.randint(1, 100), rng.randint(1, 12_000)])
                machine.write(rng.randbytes(size), rng.choice(WRITE_KINDS))
            elif roll < 0.5 and not conn.is_closing() and not machine.eof_requested:
                machine.write_burst([rng.randbytes(rng.randint(1, 9000)) for _ in range(4)])
            elif roll < 0.9:
                machine.peer_reads(rng.choice([rng.randint(1, 3000), rng.randint(1, 40_000)]))
            elif roll < 0.97 and not conn.is_closing():
                machine.control(rng.choice(["pause", "resume"]))
            elif roll < 0.985 and not conn.is_closing():
                machine.control("write_eof")
            elif not conn.is_closing():
                machine.control("close")
            _check_invariants(machine)
