"""asycamore.aio: iterate and serve inside asyncio, and asyncio on asycamore loops."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import asycamore
from asycamore import Events, aio
from asycamore.echo import EchoProtocol
from asycamore.nesting import Readiness
from asycamore.servicemodel import Protocol, Service

AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]
HOSTED = [name for name in ("select", "poll", "epoll", "kqueue") if name in AVAILABLE]


class Reader:
    """Reads what arrives; records the thread each handler ran in."""

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
        self.threads.add(threading.get_ident())


class Bare:
    """A context with the bare protocol only (no fileno, no interest): "probe" mode."""

    def __init__(self, backend: str) -> None:
        self._inner = asycamore.create_dispatcher(backend)
        self.name = f"bare-{backend}"

    def register(self, target: Any, events: Events = Events.READ) -> None:
        self._inner.register(target, events)

    def modify(self, target: Any, events: Events) -> None:
        self._inner.modify(target, events)

    def unregister(self, target: Any) -> None:
        self._inner.unregister(target)

    def dispatch_once(self, timeout: float | None = None, error_in_handler: Any = None) -> int:
        return self._inner.dispatch_once(timeout, error_in_handler)

    def close(self) -> None:
        self._inner.close()

    def __contains__(self, target: object) -> bool:
        return target in self._inner

    def __len__(self) -> int:
        return len(self._inner)

    def __enter__(self) -> Bare:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(params=[*HOSTED, "bare"])
def dispatcher(request: pytest.FixtureRequest) -> Iterator[Any]:
    context = (
        Bare("poll") if request.param == "bare" else asycamore.create_dispatcher(request.param)
    )
    with context:
        yield context


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_modes() -> None:
    with asycamore.create_dispatcher("poll") as poll, Readiness(poll) as readiness:
        assert readiness.mode == "thread"
    if "epoll" in AVAILABLE:
        with asycamore.create_dispatcher("epoll") as epoll, Readiness(epoll) as readiness:
            assert readiness.mode == "fileno" and readiness.fileno() == epoll.fileno()
    with Bare("poll") as bare, Readiness(bare) as readiness:
        assert readiness.mode == "probe" and readiness.fileno() is None


# -- aio.iterate: iterate's contract ------------------------------------------------------


def test_rounds_follow_readiness_and_run_in_the_loop_thread(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    reader = Reader(a)
    dispatcher.register(reader)
    log: list[str] = []

    def before(d: Any, dv: Any) -> None:
        log.append("before")
        if len(reader.received) >= 3:
            raise StopIteration

    def after(d: Any, dv: Any) -> None:
        log.append("after")

    async def feeder() -> None:
        for _ in range(3):
            await asyncio.sleep(0.01)
            log.append("fed")
            b.send(b"x")

    async def main() -> int:
        await asyncio.gather(aio.iterate(dispatcher, None, -1, None, before, after), feeder())
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert reader.received == b"xxx"
    assert reader.threads == {loop_thread}
    # Each dispatch happened after a feed (readiness only): no round without one.
    rounds = log.count("after")
    assert rounds == 3, log
    assert log[-1] == "before"


def test_dispatchvars_in_place_count_and_callbacks_reread(dispatcher: Any) -> None:
    dispatchvars: dict[str, Any] = {"mine": 1}
    seen: list[tuple[int, Any]] = []

    def before(d: Any, dv: Any) -> None:
        seen.append((dv["count"], dv["timeout"]))
        if dv["count"] == 3:
            dv["timeout"] = 0.0  # re-read by this round's wait
        if dv["count"] == 2:
            dv["after_dispatch"] = None

    def after(d: Any, dv: Any) -> None:
        dv["mine"] += 1

    asyncio.run(aio.iterate(dispatcher, 0.001, 4, dispatchvars, before, after))
    assert seen == [(4, 0.001), (3, 0.001), (2, 0.0), (1, 0.0), (0, 0.0)]
    assert dispatchvars["count"] == 0
    assert dispatchvars["mine"] == 3  # after_dispatch ran twice, then was removed
    assert dispatchvars["before_dispatch"] is before


def test_count_zero_never_dispatches(dispatcher: Any) -> None:
    calls: list[str] = []
    asyncio.run(aio.iterate(dispatcher, None, 0, None, lambda d, dv: calls.append("b"), None))
    assert calls == ["b"]


def test_count_is_checked_as_iterate_checks_it(dispatcher: Any) -> None:
    """A count that is not an int is refused at the call (nothing runs, nothing is
    stored) and at the round that reads it, as asycamore.iterate refuses it."""
    dispatchvars: dict[str, Any] = {}
    with pytest.raises(TypeError, match="count"):
        asyncio.run(aio.iterate(dispatcher, 0, 1.5, dispatchvars))
    assert dispatchvars == {}

    def after(d: Any, dv: Any) -> None:
        dv["count"] = True

    rounds: list[int] = []
    with pytest.raises(TypeError, match="count"):
        asyncio.run(aio.iterate(dispatcher, 0, -1, None, lambda d, dv: rounds.append(1), after))
    assert rounds == [1, 1]


def test_stop_iteration_from_after_dispatch_and_other_errors(dispatcher: Any) -> None:
    def stop(d: Any, dv: Any) -> None:
        raise StopIteration

    asyncio.run(aio.iterate(dispatcher, 0, -1, None, None, stop))

    def boom(d: Any, dv: Any) -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        asyncio.run(aio.iterate(dispatcher, 0, -1, None, boom))


def test_timeout_rounds_and_other_tasks_run_between(dispatcher: Any) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> float:
        task = asyncio.create_task(ticker())
        start = time.monotonic()
        await aio.iterate(dispatcher, 0.02, 3)
        elapsed = time.monotonic() - start
        task.cancel()
        return elapsed

    elapsed = asyncio.run(main())
    assert elapsed >= 0.05  # three 20 ms rounds without readiness
    assert ticks >= 3

    # timeout 0: every round is one turn of the loop, and the other task gets it.
    async def busy() -> None:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        await aio.iterate(dispatcher, 0, 50)
        assert ticks - before >= 49
        task.cancel()

    asyncio.run(busy())


def test_error_in_handler_is_used_and_others_are_not_starved(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    c, d = socket.socketpair()
    with c, d:

        class Raising(Reader):
            def handle_read_event(self) -> None:
                self.sock.recv(10)
                raise ValueError("handler failed")

        raising = Raising(a)
        good = Reader(c)
        dispatcher.register(raising)
        dispatcher.register(good)
        errors: list[Exception] = []

        def before(disp: Any, dv: Any) -> None:
            if len(good.received) >= 3:
                raise StopIteration
            b.send(b"x")
            d.send(b"y")

        asyncio.run(
            aio.iterate(dispatcher, 5.0, 50, None, before, None, lambda t, e: errors.append(e))
        )
        assert good.received == b"yyy"
        assert len(errors) >= 2 and all(isinstance(e, ValueError) for e in errors)


def test_cancellation_leaves_the_context_usable(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    reader = Reader(a)
    dispatcher.register(reader)
    threads = _threads()

    async def main() -> None:
        task = asyncio.create_task(aio.iterate(dispatcher, None))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Hosted again at once, on the same loop.
        task = asyncio.create_task(aio.iterate(dispatcher, None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _threads() == threads  # the helper thread (if any) was joined
    b.send(b"z")
    assert dispatcher.dispatch_once(2.0) == 1
    assert reader.received == b"z"


def test_interest_changed_by_another_task_is_seen(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A target registered, and a WRITE interest added, while a round waits."""
    a, b = pair
    reader = Reader(a)
    writes: list[int] = []

    class Writer(Reader):
        def handle_write_event(self) -> None:
            writes.append(1)
            dispatcher.modify(self, Events.NONE)

    c, d = socket.socketpair()
    with c, d:
        writer = Writer(c)
        dispatcher.register(writer, Events.NONE)

        def before(disp: Any, dv: Any) -> None:
            if reader.received and writes:
                raise StopIteration

        async def other() -> None:
            await asyncio.sleep(0.02)
            dispatcher.register(reader)  # the round is waiting (timeout None)
            b.send(b"r")
            await asyncio.sleep(0.02)
            dispatcher.modify(writer, Events.WRITE)

        async def main() -> None:
            await asyncio.wait_for(
                asyncio.gather(aio.iterate(dispatcher, None, -1, None, before), other()), 10
            )

        asyncio.run(main())
        assert reader.received == b"r" and writes == [1]


def test_one_host_per_context_and_no_reentry(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    failures: list[BaseException] = []

    class Nesting(Reader):
        def handle_read_event(self) -> None:
            super().handle_read_event()
            coroutine = aio.iterate(dispatcher, 0, 1)
            try:
                coroutine.send(None)
            except BaseException as exc:
                failures.append(exc)
            finally:
                coroutine.close()

    dispatcher.register(Nesting(a))
    b.send(b"x")

    async def main() -> None:
        await aio.iterate(dispatcher, 5.0, 1)
        task = asyncio.create_task(aio.iterate(dispatcher, None))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="already hosted"):
            await aio.iterate(dispatcher, 0, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(failures) == 1 and isinstance(failures[0], RuntimeError)
    assert "already hosted" in str(failures[0])


# -- idle CPU and wake-up latency ---------------------------------------------------------


def test_idle_costs_no_cpu(dispatcher: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    """A busy-loop detector, not a timing test: 0.5 s idle on both loops."""
    a, _ = pair
    dispatcher.register(Reader(a))

    async def main() -> float:
        task = asyncio.create_task(aio.iterate(dispatcher, None))
        await asyncio.sleep(0.05)
        start = time.process_time()
        await asyncio.sleep(0.5)
        used = time.process_time() - start
        task.cancel()
        return used

    used = asyncio.run(main())
    # A busy poll burns ~0.5 s here; probe mode wakes ~20 times a second.
    assert used < 0.1, used


@pytest.mark.parametrize("backend", HOSTED)
def test_call_soon_threadsafe_from_another_thread_wakes_serve(backend: str) -> None:
    async def main() -> float:
        with Service(backend) as service:
            served = asyncio.create_task(aio.serve(service))
            await asyncio.sleep(0.05)
            woke = asyncio.get_running_loop().create_future()
            loop = asyncio.get_running_loop()
            start = time.monotonic()

            def from_thread() -> None:
                service.call_soon_threadsafe(
                    lambda: loop.call_soon(woke.set_result, time.monotonic())
                )

            threading.Thread(target=from_thread).start()
            when = await asyncio.wait_for(woke, 5)
            service.stop()
            await asyncio.wait_for(served, 5)
            return float(when - start)

    assert asyncio.run(main()) < 1.0


def test_a_deadline_moved_earlier_by_a_host_callback_is_met() -> None:
    async def main() -> float:
        with Service() as service:
            service.call_later(60, lambda: None)  # the round waits for this one
            served = asyncio.create_task(aio.serve(service))
            await asyncio.sleep(0.05)
            fired = asyncio.get_running_loop().create_future()
            start = time.monotonic()
            service.call_later(0.05, lambda: fired.set_result(time.monotonic()))
            when = await asyncio.wait_for(fired, 5)
            soon = asyncio.get_running_loop().create_future()
            service.call_soon(lambda: soon.set_result(None))
            await asyncio.wait_for(soon, 5)
            service.stop()
            await asyncio.wait_for(served, 5)
            return float(when - start)

    assert 0.04 <= asyncio.run(main()) < 1.0


@pytest.mark.parametrize("backend", AVAILABLE)
def test_an_idle_asyncio_loop_on_asycamore_costs_no_cpu(backend: str) -> None:
    async def main() -> float:
        await asyncio.sleep(0.05)
        start = time.process_time()
        await asyncio.sleep(0.5)
        return time.process_time() - start

    assert aio.run(main(), backend=backend) < 0.1


def test_a_reentrant_dispatch_once_from_a_hosted_handler_is_refused(
    dispatcher: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    failures: list[Exception] = []

    class Reentrant(Reader):
        def handle_read_event(self) -> None:
            super().handle_read_event()
            try:
                dispatcher.dispatch_once(0)
            except RuntimeError as exc:
                failures.append(exc)

    dispatcher.register(Reentrant(a))
    b.send(b"x")
    asyncio.run(aio.iterate(dispatcher, 5.0, 1))
    assert len(failures) == 1


# -- aio.serve ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", HOSTED)
def test_serve_echo_idle_timeout_and_graceful_stop(backend: str) -> None:
    lost: list[BaseException | None] = []

    class Recording(EchoProtocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    async def main() -> None:
        with Service(backend) as service:
            listener = service.listen_tcp(Recording, "127.0.0.1", 0, idle_timeout=0.2)
            served = asyncio.create_task(aio.serve(service))
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            # Idle: the service closes it after 0.2 s.
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            service.stop()  # from a host task: graceful
            assert await asyncio.wait_for(reader.read(), 5) == b""
            await asyncio.wait_for(served, 5)
            writer.close()
            assert not service.running
            assert len(lost) == 2

    asyncio.run(main())


def test_serve_does_not_touch_signals() -> None:
    import signal

    async def main() -> None:
        with Service() as service:
            before = signal.getsignal(signal.SIGINT), signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(before[1])
            served = asyncio.create_task(aio.serve(service))
            await asyncio.sleep(0.02)
            during = signal.getsignal(signal.SIGINT), signal.set_wakeup_fd(before[1])
            assert during == before
            service.stop()
            await served

    asyncio.run(main())


def test_serve_returns_when_the_service_is_closed() -> None:
    async def main() -> None:
        service = Service()
        served = asyncio.create_task(aio.serve(service))
        await asyncio.sleep(0.02)
        service.close()
        await asyncio.wait_for(served, 5)

    asyncio.run(main())


# -- shutdown in both orders ----------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


@pytest.mark.parametrize("backend", HOSTED)
def test_shutdown_loop_first_then_context(backend: str) -> None:
    fds, threads = _open_fds(), _threads()
    dispatcher = asycamore.create_dispatcher(backend)
    loop = asyncio.new_event_loop()
    watched = len(loop._selector.get_map())  # type: ignore[attr-defined]
    task = loop.create_task(aio.iterate(dispatcher, 0.01))
    loop.run_until_complete(asyncio.sleep(0.05))
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    # No reader and no timer left behind: the loop has nothing to wake up for.
    assert len(loop._selector.get_map()) == watched  # type: ignore[attr-defined]
    start = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert time.monotonic() - start < 1.0
    loop.close()
    dispatcher.dispatch_once(0)  # usable
    dispatcher.close()
    assert (_open_fds(), _threads()) == (fds, threads)


@pytest.mark.parametrize("backend", HOSTED)
def test_shutdown_loop_closed_under_a_pending_hosting(backend: str) -> None:
    """The loop closed with the hosting task still pending (no cancel): when the task's
    coroutine is collected, the hosting is undone all the same."""
    fds, threads = _open_fds(), _threads()
    dispatcher = asycamore.create_dispatcher(backend)
    loop = asyncio.new_event_loop()
    task = loop.create_task(aio.iterate(dispatcher, None))
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    coroutine = task.get_coro()
    del task
    assert coroutine is not None
    coroutine.close()  # what the garbage collector does to a pending coroutine
    dispatcher.close()
    assert (_open_fds(), _threads()) == (fds, threads)


@pytest.mark.parametrize("backend", HOSTED)
def test_shutdown_context_first_then_loop(backend: str) -> None:
    """Closing the context from a host task ends the hosting with the error iterate
    would raise (dispatch on a closed context), and nothing is left behind."""
    fds, threads = _open_fds(), _threads()

    async def main() -> None:
        dispatcher = asycamore.create_dispatcher(backend)
        with Service(dispatcher=dispatcher) as service:
            served = asyncio.create_task(aio.serve(service))
            await asyncio.sleep(0.02)
            dispatcher.close()
            service.close()
            await asyncio.wait_for(served, 5)
        # Plain iterate on a closed context: the error dispatch_once raises.
        with pytest.raises((ValueError, OSError)):
            await aio.iterate(dispatcher, 0, 1)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    assert (_open_fds(), _threads()) == (fds, threads)


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
# 3.12+ counts the OS's threads: one that earlier tests joined may not have exited yet.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_after_creating_a_loop() -> None:
    """What holds (see asycamore.aio): the child makes its own loop and context, and
    those work; the parent's keep working in the parent."""
    loop = aio.new_event_loop()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:

                async def child() -> None:
                    dispatcher = asycamore.create_dispatcher()
                    await aio.iterate(dispatcher, 0.01, 2)
                    dispatcher.close()

                aio.run(child())
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert loop.run_until_complete(asyncio.sleep(0.01, "parent")) == "parent"
    finally:
        loop.close()


# -- asyncio on asycamore -------------------------------------------------------------------


async def _streams_echo(rounds: int = 20) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = os.urandom(256 * 1024)
    for _ in range(rounds):
        writer.write(payload[:1000])
        assert await reader.readexactly(1000) == payload[:1000]
    writer.write(payload)  # more than a socket buffer: exercises write interest
    assert await reader.readexactly(len(payload)) == payload
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_streams_echo_on_every_backend(backend: str) -> None:
    aio.run(_streams_echo(), backend=backend)


def test_new_event_loop_and_policy() -> None:
    loop = aio.new_event_loop("poll")
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
        assert loop._selector.dispatcher.name == "poll"  # type: ignore[attr-defined]
    finally:
        loop.close()

    async def name() -> str:
        return str(asyncio.get_running_loop()._selector.dispatcher.name)  # type: ignore[attr-defined]

    assert aio.run(name(), backend="select") == "select"
    asyncio.set_event_loop_policy(aio.EventLoopPolicy("select"))
    try:
        assert asyncio.run(name()) == "select"
        asyncio.run(_streams_echo(2))
    finally:
        asyncio.set_event_loop_policy(None)
    assert aio.run(name()) == asycamore.best_backend()


def test_aio_run_debug_and_signals() -> None:
    import signal

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, True)
        os.kill(os.getpid(), signal.SIGUSR1)
        result = await asyncio.wait_for(got, 5)
        loop.remove_signal_handler(signal.SIGUSR1)
        return bool(result) and loop.get_debug()

    assert aio.run(main(), debug=True)


class _Counter(Protocol):
    """For aio.serve inside an aio.new_event_loop loop: both directions at once."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(str(len(data)).encode())


def test_serve_inside_an_asycamore_loop() -> None:
    async def main() -> bytes:
        with Service("poll") as service:
            listener = service.listen_tcp(_Counter, "127.0.0.1", 0)
            served = asyncio.create_task(aio.serve(service))
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"abc")
            answer = await reader.read(10)
            writer.close()
            service.stop()
            await served
            return answer

    assert aio.run(main(), backend="epoll" if "epoll" in AVAILABLE else None) == b"3"
