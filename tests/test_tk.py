"""asycamore.tk: a Tcl interpreter's event loop hosts asycamore (headless: tkinter.Tcl)."""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asycamore
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Service

tkinter = pytest.importorskip("tkinter")
tk = pytest.importorskip("asycamore.tk")

AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]
HOSTED = [name for name in ("select", "poll", "epoll", "kqueue") if name in AVAILABLE]


@pytest.fixture(scope="module")
def tcl() -> Iterator[Any]:
    """One interpreter for the module, released in this thread.

    A Tcl interpreter must be deleted by the thread that made it (Tcl aborts the
    process otherwise): one left to the garbage collector can be collected in whatever
    thread triggers a collection -- here, the tests' client threads.
    """
    try:
        interpreter = tkinter.Tcl()
    except tkinter.TclError as exc:  # pragma: no cover - a Python without Tcl
        pytest.skip(f"no Tcl: {exc}")
    yield interpreter
    del interpreter
    gc.collect()


def run_until(tcl: Any, done: Callable[[], bool], limit: float = 10.0) -> None:
    """Tcl's event loop (what mainloop() is for Tk) until *done*, at most *limit* s."""
    stop = time.monotonic() + limit
    guard = tcl.after(int(limit * 1000), lambda: None)  # wakes dooneevent at the limit
    while not done():
        assert time.monotonic() < stop, "the Tcl loop did not get there in time"
        tcl.dooneevent()
    tcl.after_cancel(guard)


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self.threads: set[int] = set()

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        self.threads.add(threading.get_ident())
        self.received += self.sock.recv(4096)

    def handle_write_event(self) -> None:
        pass


@pytest.fixture(params=HOSTED)
def dispatcher(request: pytest.FixtureRequest) -> Iterator[Any]:
    with asycamore.create_dispatcher(request.param) as context:
        yield context


def test_rounds_in_the_tcl_loop(tcl: Any, dispatcher: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a)
        dispatcher.register(reader)
        rounds: list[int] = []
        tcl.after(20, lambda: b.send(b"x"))
        tcl.after(40, lambda: b.send(b"y"))

        def before(d: Any, dv: Any) -> None:
            if len(reader.received) == 2:
                raise StopIteration

        hosting = tk.iterate(
            tcl, dispatcher, None, -1, None, before, lambda d, dv: rounds.append(1)
        )
        run_until(tcl, lambda: hosting.done)
        assert reader.received == b"xy"
        assert reader.threads == {threading.get_ident()}
        assert len(rounds) == 2  # readiness only: one round per send
        assert hosting.exception is None
        # The context is usable, and can be hosted again.
        b.send(b"z")
        assert dispatcher.dispatch_once(1) == 1
        again = tk.iterate(tcl, dispatcher, 0.01, 3)
        run_until(tcl, lambda: again.done)
        assert again.dispatchvars["count"] == 0


def test_exception_and_cancel(tcl: Any, dispatcher: Any) -> None:
    def boom(d: Any, dv: Any) -> None:
        raise ZeroDivisionError

    ended: list[Any] = []
    hosting = tk.iterate(tcl, dispatcher, 0.01, -1, None, None, boom, on_done=ended.append)
    run_until(tcl, lambda: hosting.done)
    assert isinstance(hosting.exception, ZeroDivisionError) and ended == [hosting]

    hosting = tk.iterate(tcl, dispatcher, None)
    tcl.after(20, hosting.cancel)
    run_until(tcl, lambda: hosting.done)
    assert hosting.exception is None
    with pytest.raises(RuntimeError, match="already hosted"):
        first = tk.iterate(tcl, dispatcher, None)
        try:
            tk.iterate(tcl, dispatcher, None)
        finally:
            first.cancel()


def test_count_is_checked_as_iterate_checks_it(tcl: Any, dispatcher: Any) -> None:
    """A count that is not an int is refused at the call, and at the round that reads
    it (which ends the hosting with the TypeError), as asycamore.iterate refuses it."""
    dispatchvars: dict[str, Any] = {}
    with pytest.raises(TypeError, match="count"):
        tk.iterate(tcl, dispatcher, 0, 1.5, dispatchvars)
    assert dispatchvars == {}

    def after(d: Any, dv: Any) -> None:
        dv["count"] = True

    ended: list[Any] = []
    hosting = tk.iterate(tcl, dispatcher, 0, -1, None, None, after, on_done=ended.append)
    run_until(tcl, lambda: hosting.done)
    assert isinstance(hosting.exception, TypeError) and ended == [hosting]


def test_idle_tcl_and_context_cost_no_cpu(tcl: Any, dispatcher: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        dispatcher.register(Reader(a))
        hosting = tk.iterate(tcl, dispatcher, None)
        flag: list[int] = []
        tcl.after(50, lambda: flag.append(0))
        run_until(tcl, lambda: bool(flag))
        start = time.process_time()
        tcl.after(500, lambda: flag.append(1))
        run_until(tcl, lambda: len(flag) == 2)
        assert time.process_time() - start < 0.1
        hosting.cancel()


@pytest.mark.parametrize("backend", HOSTED)
def test_serve_echo_and_stop(tcl: Any, backend: str) -> None:
    with Service(backend) as service:
        listener = service.listen_tcp(EchoProtocol, "127.0.0.1", 0)
        hosting = tk.serve(tcl, service)
        answers: list[bytes] = []

        def client() -> None:
            with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
                sock.sendall(b"hello")
                answers.append(sock.recv(5))
            service.call_soon_threadsafe(service.stop)

        thread = threading.Thread(target=client)
        thread.start()
        run_until(tcl, lambda: hosting.done)
        thread.join()
        assert answers == [b"hello"] and hosting.exception is None
        assert not service.running


def test_serve_a_deadline_moved_earlier(tcl: Any) -> None:
    with Service() as service:
        service.call_later(60, lambda: None)
        hosting = tk.serve(tcl, service)
        fired: list[float] = []
        started: list[float] = []

        def schedule() -> None:  # a Tk callback, while the round waits for 60 s
            started.append(time.monotonic())
            service.call_later(0.05, lambda: fired.append(time.monotonic()))

        tcl.after(30, schedule)
        run_until(tcl, lambda: bool(fired))
        assert fired[0] - started[0] < 1.0
        service.stop()
        run_until(tcl, lambda: hosting.done)
