"""Child processes and pipes (asycamore.processes, Service.spawn/connect_*_pipe).

Real processes (``cat``, ``sh -c``, ``sys.executable -c``) on every backend, through
the leak-checked ``service`` fixture of the pytest plugin.  Every wait is a bounded
loop: a deadline only bounds a failure, nothing is asserted about time.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asycamore
from asycamore import processes
from asycamore.processes import Process
from asycamore.servicemodel import ProcessProtocol, Protocol, Service

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")

CAT = ["cat"]
PY = sys.executable
HAVE_PIDFD = hasattr(os, "pidfd_open")


def pump(service: Service, until: Callable[[], bool], timeout: float = 60.0) -> None:
    """Run *service* until *until()* (bounded: fails after *timeout* seconds)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached in time"
        service.run_once(0.05)


class Recorder(ProcessProtocol):
    """Records every callback, in order; checks the order rules as they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Any, ...]] = []
        self.out = bytearray()
        self.err = bytearray()
        self.lost: dict[int, BaseException | None] = {}
        self.exits = 0
        self.paused = 0
        self.resumed = 0

    def connection_made(self, process: Process) -> None:
        assert not self.events, "connection_made must come first"
        super().connection_made(process)
        self.events.append(("made",))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        assert self.events and self.events[0] == ("made",)
        assert data
        (self.out if fd == 1 else self.err).extend(data)

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        assert fd not in self.lost, f"pipe {fd} lost twice"
        self.lost[fd] = exc
        self.events.append(("lost", fd, exc))

    def process_exited(self) -> None:
        process = self.process
        assert process is not None and process.returncode is not None
        # After the reap: the pid is no child of ours any more.
        with pytest.raises(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)
        self.exits += 1
        self.events.append(("exited", process.returncode))

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    @property
    def done(self) -> bool:
        """Exited, and every pipe closed."""
        process = self.process
        assert process is not None
        pipes = [process.get_pipe_transport(fd) for fd in (0, 1, 2)]
        return self.exits == 1 and all(p is None or p.closed for p in pipes)


@pytest.fixture(params=["pidfd", "sigchld", "thread"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of learning a child's exit, forced through Process.exit_watch."""
    watch: str = request.param
    if watch == "pidfd" and not HAVE_PIDFD:
        pytest.skip("no os.pidfd_open here")
    monkeypatch.setattr(Process, "exit_watch", watch)
    return watch


def spawn(service: Service, args: Any, **kwargs: Any) -> tuple[Process, Recorder]:
    recorders: list[Recorder] = []

    def factory() -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    process = service.spawn(factory, args, **kwargs)
    assert recorders[0].process is process
    return process, recorders[0]


# -- data through a child ---------------------------------------------------------------


def test_cat_moves_megabytes_both_ways_at_once(service: Service) -> None:
    """16 MiB through ``cat``, written under flow control while its output is read:
    byte-exact, and stdin's pauses never stop the reading of stdout (no deadlock)."""
    size = 16 * 1024 * 1024
    chunk = os.urandom(256 * 1024)
    expected = hashlib.sha256()
    sent = 0

    class Feeder(Recorder):
        def connection_made(self, process: Process) -> None:
            super().connection_made(process)
            self.feed()

        def resume_writing(self) -> None:
            super().resume_writing()
            self.feed()

        def feed(self) -> None:
            nonlocal sent
            assert self.process is not None
            stdin = self.process.get_pipe_transport(0)
            assert stdin is not None
            while sent < size and self.paused == self.resumed:
                stdin.write(chunk)
                expected.update(chunk)
                sent += len(chunk)
            if sent >= size:
                stdin.write_eof()

    rec = Feeder()
    process = service.spawn(lambda: rec, CAT, stderr=subprocess.DEVNULL)
    assert process.get_pipe_transport(2) is None
    pump(service, lambda: rec.done)
    assert rec.paused >= 1, "the pipe never filled: flow control not exercised"
    assert len(rec.out) == size
    assert hashlib.sha256(rec.out).digest() == expected.digest()
    assert process.returncode == 0
    assert rec.lost == {0: None, 1: None}


def test_a_child_that_never_reads_pauses_writes(service: Service) -> None:
    """Writes to a child that does not read stop at the high-water mark (memory stays
    bounded); killed, the child's exit and the broken stdin are reported."""
    process, rec = spawn(service, [PY, "-c", "import time; time.sleep(60)"])
    stdin = process.get_pipe_transport(0)
    assert stdin is not None
    high, _ = stdin.write_buffer_limits
    chunk = b"x" * 65536
    writes = 0
    while not rec.paused:
        stdin.write(chunk)
        writes += 1
        assert writes < 1000, "pause_writing never came"
        service.run_once(0)
    assert stdin.get_write_buffer_size() <= high + len(chunk)
    # The child keeps running, not reading: the buffer does not drain.
    for _ in range(5):
        service.run_once(0.01)
    assert rec.resumed == 0 and process.returncode is None
    process.kill()
    pump(service, lambda: rec.done)
    assert process.returncode == -signal.SIGKILL
    assert isinstance(rec.lost[0], BrokenPipeError)
    assert rec.lost[1] is None and rec.lost[2] is None


def test_a_child_closing_stdout_early_keeps_running(service: Service) -> None:
    script = "import os, sys; os.close(1); sys.stdin.buffer.read(); sys.exit(4)"
    process, rec = spawn(service, [PY, "-c", script])
    pump(service, lambda: 1 in rec.lost)
    assert rec.lost[1] is None
    for _ in range(5):
        service.run_once(0.01)
    assert process.returncode is None and rec.exits == 0
    stdin = process.get_pipe_transport(0)
    assert stdin is not None
    stdin.write(b"bye")
    stdin.write_eof()
    pump(service, lambda: rec.done)
    assert process.returncode == 4


def test_a_flood_on_stderr_does_not_block_stdout(service: Service) -> None:
    """The program wants stdout only; the child writes 8 MiB to stderr first."""
    script = (
        "import sys; sys.stderr.buffer.write(b'e' * (8 << 20)); sys.stderr.flush(); "
        "sys.stdout.write('done'); sys.stdout.flush()"
    )
    process, rec = spawn(service, [PY, "-c", script], stdin=subprocess.DEVNULL)
    pump(service, lambda: rec.done)
    assert bytes(rec.out) == b"done"
    assert len(rec.err) == 8 << 20
    assert process.returncode == 0 and process.get_pipe_transport(0) is None


def test_stderr_to_stdout(service: Service) -> None:
    process, rec = spawn(service, ["sh", "-c", "echo out; echo err >&2"], stderr=subprocess.STDOUT)
    assert process.get_pipe_transport(2) is None
    pump(service, lambda: rec.done)
    assert sorted(bytes(rec.out).split()) == [b"err", b"out"]


def test_writing_to_an_exited_child_is_a_lost_pipe(service: Service) -> None:
    """EPIPE is ``pipe_connection_lost(0, exc)``, not a traceback."""
    process, rec = spawn(service, [PY, "-c", "pass"])
    # Wait for the exit without reaping it and without running the loop: the write
    # below is the first to learn that the reader has gone.
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    stdin = process.get_pipe_transport(0)
    assert stdin is not None
    stdin.write(b"anyone there?")
    assert isinstance(rec.lost.get(0), BrokenPipeError)
    assert rec.lost[0].errno == errno.EPIPE  # type: ignore[union-attr]
    pump(service, lambda: rec.done)
    assert process.returncode == 0


# -- exits, signals and the ways of learning them ---------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_codes(service: Service, code: int) -> None:
    process, rec = spawn(service, ["sh", "-c", f"exit {code}"])
    pump(service, lambda: rec.done)
    assert process.returncode == code and rec.exits == 1


def test_exit_and_signals_on_every_watch(service: Service, exit_watch: str) -> None:
    code, rec_code = spawn(service, [PY, "-c", "import sys; sys.exit(3)"])
    term, rec_term = spawn(service, [PY, "-c", "import time; time.sleep(60)"])
    kill, rec_kill = spawn(service, [PY, "-c", "import time; time.sleep(60)"])
    assert {p.watched_by for p in (code, term, kill)} == {exit_watch}
    term.terminate()
    kill.kill()
    pump(service, lambda: rec_code.done and rec_term.done and rec_kill.done)
    assert code.returncode == 3
    assert term.returncode == -signal.SIGTERM
    assert kill.returncode == -signal.SIGKILL
    assert code.watched_by == ""
    kill.kill()  # a reaped child is not signalled (its pid may be someone else's)
    assert service.statistics().processes_exited == 3
    assert service.statistics().processes_running == 0


def test_hundreds_of_short_children(service: Service, exit_watch: str) -> None:
    """300 children, at most 40 at once: every one reaped once (no zombie), and the
    service fixture checks that no descriptor is left."""
    total, running, started = 300, 40, 0
    recorders: list[Recorder] = []
    pids: list[int] = []

    def live() -> int:
        return sum(1 for rec in recorders if not rec.done)

    while started < total or live():
        while started < total and live() < running:
            process, rec = spawn(service, ["true"], stdin=subprocess.DEVNULL)
            recorders.append(rec)
            pids.append(process.pid)
            started += 1
        service.run_once(0.05)
    assert all(rec.exits == 1 for rec in recorders)
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert service.statistics().processes_exited == total


def test_children_of_other_code_are_never_reaped(service: Service, exit_watch: str) -> None:
    other = os.posix_spawnp("sh", ["sh", "-c", "exit 5"], os.environ)
    try:
        _, rec = spawn(service, ["sh", "-c", "sleep 0.2"])
        pump(service, lambda: rec.done)
    finally:
        _, status = os.waitpid(other, 0)  # ChildProcessError if asycamore had reaped it
    assert os.waitstatus_to_exitcode(status) == 5


def test_a_fork_does_not_signal_or_reap_the_parents_children(service: Service) -> None:
    process, rec = spawn(service, [PY, "-c", "import time; time.sleep(60)"])
    forked = os.fork()
    if forked == 0:  # pragma: no cover - the fork
        try:
            process.kill()
            ok = process.wait() == -1 and process.returncode is None
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(forked, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.kill(process.pid, 0)  # still running
    assert process.returncode is None
    process.kill()
    pump(service, lambda: rec.done)
    assert process.returncode == -signal.SIGKILL


# -- the service ends what it spawned ------------------------------------------------------

IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def test_stop_terminates_then_kills(service: Service) -> None:
    stubborn, rec_stubborn = spawn(service, [PY, "-c", IGNORES_TERM])
    polite, rec_polite = spawn(service, [PY, "-c", "print('ready', flush=True); input()"])
    pump(service, lambda: b"ready" in rec_stubborn.out and b"ready" in rec_polite.out)
    service.call_soon(service.stop, 0.5)
    service.serve_forever(handle_signals=False)
    # serve_forever returned: both reaped, each told once.
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert rec_polite.exits == rec_stubborn.exits == 1
    assert service.statistics().processes_running == 0
    pump(service, lambda: rec_polite.done and rec_stubborn.done)


def test_close_kills_and_reaps(asycamore_backend: str) -> None:
    service = Service(asycamore_backend)
    try:
        process, rec = spawn(service, [PY, "-c", IGNORES_TERM])
        stdin = process.get_pipe_transport(0)
    finally:
        service.close()
    assert process.returncode == -signal.SIGKILL and rec.exits == 1
    assert stdin is not None and stdin.closed
    assert set(rec.lost) == {0, 1, 2}
    with pytest.raises(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)


def test_close_closes_the_pipes_a_grandchild_holds(asycamore_backend: str) -> None:
    """The child has exited, its own child still holds stdout open: the service's
    close closes that pipe too."""
    script = "import subprocess; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True)"
    service = Service(asycamore_backend)
    grandchild = 0
    try:
        process, rec = spawn(service, [PY, "-c", script], stdin=subprocess.DEVNULL)
        pump(service, lambda: rec.exits == 1 and rec.out.endswith(b"\n"))
        grandchild = int(rec.out)
        stdout = process.get_pipe_transport(1)
        assert stdout is not None and not stdout.closed
        assert service.statistics().processes_running == 0
    finally:
        service.close()
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)
    assert stdout.closed and rec.lost[1] is None


def test_spawn_refuses_text_mode_and_missing_programs(service: Service) -> None:
    with pytest.raises(ValueError, match="text"):
        service.spawn(Recorder, ["cat"], text=True)
    with pytest.raises(FileNotFoundError):
        service.spawn(Recorder, ["/nonexistent/program"])
    assert service.statistics().processes_running == 0


def test_spawn_without_a_service() -> None:
    """The transport layer on a bare context, on asycamore.iterate."""
    with asycamore.create_dispatcher() as dispatcher:
        rec = Recorder()
        process = processes.spawn(dispatcher, lambda: rec, ["sh", "-c", "cat; exit 2"])
        stdin = process.get_pipe_transport(0)
        assert stdin is not None
        stdin.write(b"bare")
        stdin.write_eof()

        def until_done(dispatcher: Any, dispatchvars: Any) -> None:
            if rec.done:
                raise StopIteration

        asycamore.iterate(dispatcher, timeout=1.0, count=1000, before_dispatch=until_done)
        assert rec.done and bytes(rec.out) == b"bare" and process.returncode == 2
        assert len(dispatcher) == 0


# -- pipes -----------------------------------------------------------------------------------


class PipeRecorder(Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.paused = 0

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1


@contextlib.contextmanager
def fd_pair(kind: str) -> Iterator[tuple[int, int]]:
    """A (read, write) pair of descriptors: a pipe, or a socket pair."""
    if kind == "pipe":
        r, w = os.pipe()
    else:
        a, b = socket.socketpair()
        r, w = a.detach(), b.detach()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_connect_read_pipe(service: Service, kind: str) -> None:
    with fd_pair(kind) as (r, w):
        rec = PipeRecorder()
        transport = service.connect_read_pipe(lambda: rec, r)
        assert service.connections == [transport]
        assert transport.get_extra_info("pipe") == r
        os.write(w, b"through the pipe")
        pump(service, lambda: bytes(rec.data) == b"through the pipe")
        transport.pause_reading()
        os.write(w, b"later")
        for _ in range(3):
            service.run_once(0.01)
        assert bytes(rec.data) == b"through the pipe"
        transport.resume_reading()
        os.close(w)
        pump(service, lambda: bool(rec.lost))
        assert rec.lost == [None] and bytes(rec.data).endswith(b"later")
        assert transport.closed and not service.connections
        with pytest.raises(OSError):
            os.fstat(r)  # the transport owned it, and closed it
        with pytest.raises(RuntimeError):
            transport.write(b"x")


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_connect_write_pipe(service: Service, kind: str) -> None:
    with fd_pair(kind) as (r, w):
        rec = PipeRecorder()
        transport = service.connect_write_pipe(lambda: rec, w)
        transport.set_write_buffer_limits(high=4096)
        transport.write(b"y" * (1 << 20))  # more than the pipe takes: buffered
        assert rec.paused == 1 and transport.get_write_buffer_size() > 0
        received = bytearray()
        os.set_blocking(r, False)
        deadline = time.monotonic() + 60
        while len(received) < 1 << 20:
            assert time.monotonic() < deadline
            with contextlib.suppress(BlockingIOError):
                received += os.read(r, 1 << 16)
            service.run_once(0.01)
        transport.write(b"z" * (1 << 20))
        os.close(r)  # the reader goes away with data still to send
        pump(service, lambda: bool(rec.lost))
        assert isinstance(rec.lost[0], BrokenPipeError)


def test_a_regular_file_is_refused(service: Service, tmp_path: Any) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"data")
    with open(path, "rb") as file:
        with pytest.raises(ValueError, match="regular file"):
            service.connect_read_pipe(PipeRecorder, file)
        with pytest.raises(ValueError, match="regular file"):
            service.connect_read_pipe(PipeRecorder, file.fileno())
        assert not file.closed and file.read() == b"data"
    assert not service.connections


def test_dev_null_is_refused_on_epoll(service: Service, asycamore_backend: str) -> None:
    if asycamore_backend != "epoll":
        pytest.skip("epoll refuses /dev/null; poll and select watch it")
    with open(os.devnull, "rb") as file:
        with pytest.raises(OSError):
            service.connect_read_pipe(PipeRecorder, file)
        assert not file.closed and os.get_blocking(file.fileno())
        assert file.read() == b""
    assert not service.connections and len(service.dispatcher) == 1  # the waker alone


def test_pipe_arguments_are_checked_at_the_call(service: Service) -> None:
    with pytest.raises(TypeError, match="factory"):
        service.connect_read_pipe(PipeRecorder(), 0)
    with pytest.raises(TypeError, match="file object"):
        service.connect_write_pipe(PipeRecorder, "stdout")


def test_sigchld_is_refused_outside_the_main_thread(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the main thread can handle a signal: insisting on SIGCHLD elsewhere raises
    at the call, before anything is started."""
    monkeypatch.setattr(Process, "exit_watch", "sigchld")
    errors: list[BaseException] = []

    def spawn_here() -> None:
        try:
            service.spawn(Recorder, ["true"])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=spawn_here)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert service.statistics().processes_running == 0


def test_spawn_in_a_service_hosted_by_asyncio(asycamore_backend: str) -> None:
    """aio.serve runs the service's rounds from asyncio: the pidfd (or the wake-up
    socket) is watched like any target, and the child's output and exit arrive."""
    import asyncio

    from asycamore import aio

    async def main() -> Recorder:
        with Service(asycamore_backend) as service:
            code = "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(3)"
            process, recorder = spawn(service, [sys.executable, "-c", code])
            stdin = process.get_pipe_transport(0)
            assert stdin is not None
            stdin.write(b"hosted")
            stdin.write_eof()

            def watch() -> None:
                if recorder.done:
                    service.stop()
                else:
                    service.call_later(0.01, watch)

            watch()
            await asyncio.wait_for(aio.serve(service), 30)
            return recorder

    recorder = asyncio.run(main())
    assert bytes(recorder.out) == b"HOSTED"
    assert recorder.exits == 1 and ("exited", 3) in recorder.events
