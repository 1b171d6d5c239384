"""``asycamore bench``: a short, self-contained loopback benchmark, and its building blocks.

The command measures, for every available backend and for the stdlib :mod:`asyncio` loop
as the reference:

* **dispatch overhead** -- handler calls per second through :func:`asycamore.iterate` (for
  asyncio: ``add_reader`` callbacks per second) with many always-ready targets;
* **echo ping-pong** -- round trips per second against ``asycamore echo`` (and an
  ``asyncio.Protocol`` echo server) in a separate process, driven by a Python load
  generator in another process, each pinned to its own CPU where there are two or more.

It needs nothing beyond the standard library.  The full benchmark suite in the
repository's ``benchmarks/`` directory (C load generator, more peers, more workloads,
several rounds) reuses the pieces defined here: :class:`ServerProcess`,
:func:`run_loadgen`, :func:`dispatch_rate`, :func:`idle_dispatch_cost` and friends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import json
import os
import platform
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .dispatcher import Events, iterate
from .tables import text_table

__all__ = [
    "BenchResult",
    "LoadgenResult",
    "ServerProcess",
    "asyncio_dispatch_rate",
    "asyncio_idle_dispatch_cost",
    "cpu_layout",
    "cpu_shares",
    "cpu_times",
    "dispatch_rate",
    "idle_dispatch_cost",
    "machine_info",
    "raise_nofile_limit",
    "run_bench",
    "run_loadgen",
]

SATURATED = 0.95
"""A load generator using this fraction of a CPU or more is flagged as saturated."""

DISPATCH_TARGETS = 64
"""Always-ready targets in the dispatch-overhead measurement."""

_ECHO_STARTUP_TIMEOUT = 15.0


# -- machine -----------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit; return the new soft limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit (macOS) still has a kernel ceiling: try sizes below it.
    wanted = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 65536, 10240]
    for limit in wanted:
        if soft >= limit:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        except (ValueError, OSError):
            continue
        soft = limit
        break
    return int(soft)


def cpu_layout() -> tuple[int | None, int | None]:
    """``(server_cpu, generator_cpu)``: two distinct CPUs this process may use, or Nones.

    ``(None, None)`` on one CPU or where affinity cannot be set: nothing is pinned then.
    """
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None, None
    cpus = sorted(getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        _pin(cpu)
        raise_nofile_limit()

    return setup


def machine_info() -> dict[str, Any]:
    """What the numbers came from: CPU model and count, OS, Python, load average."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


# -- server processes ----------------------------------------------------------------------


def _proc_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of process *pid* from ``/proc`` (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU tick counters from ``/proc/stat`` (empty where there is none)."""
    times: dict[str, list[int]] = {}
    with contextlib.suppress(OSError), open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("cpu") and not line.startswith("cpu "):
                name, *values = line.split()
                times[name] = [int(v) for v in values[: len(_CPU_FIELDS)]]
    return times


def cpu_shares(
    before: dict[str, list[int]], after: dict[str, list[int]]
) -> dict[str, dict[str, float]]:
    """Per-CPU shares of each state between two :func:`cpu_times` samples, plus ``busy``."""
    shares: dict[str, dict[str, float]] = {}
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        delta = [b - a for a, b in zip(old, new, strict=False)]
        total = sum(delta)
        if total <= 0:
            continue
        share = {k: v / total for k, v in zip(_CPU_FIELDS, delta, strict=False)}
        share["busy"] = 1.0 - share.get("idle", 0.0) - share.get("iowait", 0.0)
        shares[name] = {k: round(v, 4) for k, v in share.items()}
    return shares


def _proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class ServerProcess:
    """An echo server under test in its own process.

    *command* must print ``listening on HOST:PORT`` on stdout and stop on SIGTERM.  The
    process is pinned to *cpu* (when given) and gets its ``RLIMIT_NOFILE`` raised.
    Use as a context manager: it is stopped (SIGTERM, then SIGKILL) on exit.
    """

    def __init__(self, command: Sequence[str], cpu: int | None = None) -> None:
        self.command = list(command)
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_child_setup(cpu),  # noqa: PLW1509 - no threads here
        )
        self.host, self.port = self._read_address()

    def _read_address(self) -> tuple[str, int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], _ECHO_STARTUP_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(
                f"{' '.join(self.command)!r} did not start: {line.strip()!r} {err.strip()[-500:]}"
            )
        host, _, port = line[len("listening on ") :].strip().rpartition(":")
        return host, int(port)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user+system) the server has used so far."""
        return _proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int | None:
        """The server's resident set size in KiB."""
        return _proc_rss_kib(self.pid)

    def fd_count(self) -> int | None:
        """How many descriptors the server holds open."""
        return _proc_fd_count(self.pid)

    def alive(self) -> bool:
        """Whether the server is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to *timeout* seconds, then SIGKILL; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- load generator --------------------------------------------------------------------------


@dataclass
class LoadgenResult:
    """One load-generator run: its own report plus the server's CPU over the same window."""

    mode: str
    rate: float
    """Round trips (pingpong), reads (bulk) or connections (connrate) per second."""
    mb_per_s: float
    wall: float
    generator_cpu: float
    """Fraction of one CPU the generator used during the measured window."""
    server_cpu: float | None
    """Fraction of one CPU the server used during the measured window."""
    errors: int
    generator: str
    raw: dict[str, Any] = field(default_factory=dict)
    cpus: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-CPU time shares over the window (``busy``, ``softirq``, ...) from /proc/stat."""
    generator_core_busy: float | None = None
    """How busy the generator's CPU was (any process, interrupts included), when pinned."""

    @property
    def generator_saturated(self) -> bool:
        """True when the generator, not the server, probably limited the rate.

        Either the generator used :data:`SATURATED` of a CPU itself, or it is pinned and
        its CPU was that busy (loopback TCP work in softirq, or another process, left it
        no room to go faster).
        """
        if self.generator_cpu >= SATURATED:
            return True
        return self.generator_core_busy is not None and self.generator_core_busy >= SATURATED


def python_loadgen_command() -> list[str]:
    """The command that runs the Python load generator (append its options)."""
    return [sys.executable, "-m", "asycamore.bench", "loadgen"]


def run_loadgen(
    command: Sequence[str],
    server: ServerProcess,
    *,
    cpu: int | None = None,
    timeout: float = 120.0,
) -> LoadgenResult:
    """Run a load generator *command* against *server* and collect both sides' CPU use.

    The generator prints ``measuring`` when its measured window starts and one JSON
    object at the end (the C generator in ``benchmarks/`` and the Python one here both
    do); the server's CPU time is sampled at those two moments.
    """
    proc = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_child_setup(cpu),  # noqa: PLW1509 - no threads here
    )
    deadline = time.monotonic() + timeout
    server_cpu0: float | None = None
    times0 = cpu_times()
    t0 = time.monotonic()
    report: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None
        for line in _lines_until(proc.stdout, deadline):
            if line.strip() == "measuring":
                server_cpu0 = server.cpu_seconds()
                times0 = cpu_times()
                t0 = time.monotonic()
            elif line.startswith("{"):
                report = json.loads(line)
                break
        t1 = time.monotonic()
        server_cpu1 = server.cpu_seconds()
        times1 = cpu_times()
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if report is None:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {stderr.strip()[-500:]}")
    server_cpu = None
    if server_cpu0 is not None and server_cpu1 is not None and t1 > t0:
        server_cpu = (server_cpu1 - server_cpu0) / (t1 - t0)
    shares = cpu_shares(times0, times1)
    gen_share = shares.get(f"cpu{cpu}", {}) if cpu is not None else {}
    return LoadgenResult(
        mode=str(report["mode"]),
        rate=float(report["rate"]),
        mb_per_s=float(report["mb_per_s"]),
        wall=float(report["wall"]),
        generator_cpu=float(report["cpu_frac"]),
        server_cpu=server_cpu,
        errors=int(report["errors"]),
        generator=str(report.get("generator", "?")),
        raw=report,
        cpus=shares,
        generator_core_busy=gen_share.get("busy"),
    )


def _lines_until(stream: IO[str], deadline: float) -> Iterator[str]:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("load generator did not finish in time")
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            continue
        line = stream.readline()
        if not line:
            return
        yield line


class _Window:
    """The generator's measured window: a warm-up, then *seconds* of counting."""

    def __init__(self, seconds: float, warmup: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic() + warmup
        self.end = self.start + seconds
        self.measuring = False
        self.cpu0 = time.process_time()
        self.count = 0
        self.bytes = 0
        if warmup <= 0:
            self._begin(time.monotonic())

    def _begin(self, now: float) -> None:
        self.measuring = True
        self.count = self.bytes = 0
        self.start = now
        self.end = now + self.seconds
        self.cpu0 = time.process_time()
        print("measuring", flush=True)

    def tick(self) -> bool:
        """Start measuring after the warm-up; True once the window is over."""
        now = time.monotonic()
        if not self.measuring and now >= self.start:
            self._begin(now)
        return self.measuring and now >= self.end

    def report(self, mode: str, conns: int, size: int, errors: int) -> None:
        """Print the JSON report the C generator prints."""
        wall = max(time.monotonic() - self.start, 1e-9)
        cpu = time.process_time() - self.cpu0
        report = {
            "mode": mode,
            "conns": conns,
            "size": size,
            "wall": wall,
            "count": self.count,
            "bytes": self.bytes,
            "rate": self.count / wall,
            "mb_per_s": self.bytes / wall / 1e6,
            "cpu": cpu,
            "cpu_frac": cpu / wall,
            "errors": errors,
            "generator": "python",
        }
        print(json.dumps(report), flush=True)


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _python_loadgen(
    host: str, port: int, mode: str, conns: int, size: int, seconds: float, warmup: float
) -> int:
    """The Python load generator: the C generator's modes and output, slower.

    ``pingpong``, ``bulk`` (every byte verified), ``connrate`` and ``idle``; see
    ``benchmarks/c/loadgen.c`` for what each does.
    """
    raise_nofile_limit()
    address = (host, port)
    if mode == "idle":
        return _gen_idle(address, conns, seconds)
    if mode == "connrate":
        return _gen_connrate(address, conns, size, _Window(seconds, warmup))
    socks = [_connect(address) for _ in range(conns)]
    window = _Window(seconds, warmup)
    try:
        if mode == "pingpong":
            errors = _gen_pingpong(socks, size, window)
        elif mode == "bulk":
            errors = _gen_bulk(socks, size, window)
        else:
            print(f"loadgen: unknown mode {mode!r}", file=sys.stderr)
            return 2
    finally:
        for sock in socks:
            sock.close()
    window.report(mode, conns, size, errors)
    return 1 if errors else 0


def _gen_idle(address: tuple[str, int], conns: int, seconds: float) -> int:
    socks = [_connect(address) for _ in range(conns)]
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    print(f"ready {conns}", flush=True)
    end = time.monotonic() + seconds
    while not stop and time.monotonic() < end:
        time.sleep(0.02)
    for sock in socks:
        sock.close()
    return 0


def _gen_pingpong(socks: list[socket.socket], size: int, window: _Window) -> int:
    message = b"x" * size
    errors = 0
    with selectors.DefaultSelector() as sel:
        got = {}
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ, sock)
            got[sock] = 0
        for sock in socks:
            sock.send(message)
        while not window.tick():
            for key, _mask in sel.select(0.1):
                sock = key.data
                try:
                    data = sock.recv(size - got[sock])
                except BlockingIOError:
                    continue
                if not data:
                    errors += 1
                    sel.unregister(sock)
                    continue
                n = got[sock] + len(data)
                if n == size:
                    got[sock] = 0
                    window.count += 1
                    window.bytes += size
                    sock.send(message)
                else:
                    got[sock] = n
    return errors


_PERIOD = 251  # the byte at stream offset i is i % 251, as in the C generator


def _gen_bulk(socks: list[socket.socket], chunk: int, window: _Window) -> int:
    limit = 256 * 1024  # bytes in flight per stream
    pattern = bytes(i % _PERIOD for i in range(_PERIOD + max(chunk, limit)))
    sent = dict.fromkeys(socks, 0)
    received = dict.fromkeys(socks, 0)
    errors = 0
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sock)
        while not window.tick():
            for key, mask in sel.select(0.1):
                sock = key.data
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(chunk)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        errors += 1
                        sel.unregister(sock)
                        continue
                    if data:
                        offset = received[sock] % _PERIOD
                        if data != pattern[offset : offset + len(data)]:
                            errors += 1
                        received[sock] += len(data)
                        window.count += 1
                        window.bytes += len(data)
                room = limit - (sent[sock] - received[sock])
                if mask & selectors.EVENT_WRITE and room > 0:
                    offset = sent[sock] % _PERIOD
                    with contextlib.suppress(BlockingIOError):
                        sent[sock] += sock.send(pattern[offset : offset + min(room, chunk)])
                want = selectors.EVENT_READ
                if limit - (sent[sock] - received[sock]) > 0:
                    want |= selectors.EVENT_WRITE
                if want != key.events:
                    sel.modify(sock, want, sock)
    return errors


def _gen_connrate(address: tuple[str, int], concurrency: int, size: int, window: _Window) -> int:
    message = b"c" * size
    errors = 0
    got: dict[socket.socket, int] = {}

    def start(sel: selectors.BaseSelector) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(address)
        got[sock] = -1  # connecting
        sel.register(sock, selectors.EVENT_WRITE, sock)

    with selectors.DefaultSelector() as sel:
        for _ in range(concurrency):
            start(sel)
        while not window.tick():
            for key, _mask in sel.select(0.1):
                sock = key.data
                done = failed = False
                if got[sock] < 0:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        failed = True
                    else:
                        try:
                            sock.send(message)
                            got[sock] = 0
                            sel.modify(sock, selectors.EVENT_READ, sock)
                        except OSError:
                            failed = True
                else:
                    try:
                        data = sock.recv(size - got[sock])
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        failed = True
                    else:
                        got[sock] += len(data)
                        done = got[sock] == size
                if done or failed:
                    if failed:
                        errors += 1
                    else:
                        window.count += 1
                        window.bytes += size
                    sel.unregister(sock)
                    del got[sock]
                    sock.close()
                    start(sel)
        for sock in got:
            sock.close()
    window.report("connrate", concurrency, size, errors)
    # A few failed connections among many are reported, not fatal (as in the C one).
    return 1 if errors > window.count // 100 else 0


# -- echo servers ------------------------------------------------------------------------------


class _AsyncioEcho(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def _asyncio_echo(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(_AsyncioEcho, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await stop
    server.close()


def asyncio_echo_command() -> list[str]:
    """The command that runs the reference asyncio echo server (``--port 0``)."""
    return [sys.executable, "-m", "asycamore.bench", "asyncio-echo"]


def asycamore_echo_command(backend: str) -> list[str]:
    """The command that runs ``asycamore echo`` on *backend* (``--port 0``)."""
    return [sys.executable, "-m", "asycamore", "echo", "--backend", backend, "--port", "0"]


def echo_available() -> bool:
    """Whether this installation has ``asycamore echo``."""
    import importlib.util

    return importlib.util.find_spec("asycamore.echo") is not None


# -- in-process dispatch measurements ------------------------------------------------------------


class _Counter:
    """A target whose handlers only count: the dispatch path with no work in it."""

    __slots__ = ("calls", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:
        self.calls += 1

    def handle_write_event(self) -> None:
        self.calls += 1


class _Idle:
    """A target that is never ready."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_read_event(self) -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle target was dispatched")

    def handle_write_event(self) -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle target was dispatched")


@contextlib.contextmanager
def ready_sockets(count: int) -> Iterator[list[socket.socket]]:
    """*count* sockets that stay readable (their peer sent a byte nobody reads)."""
    pairs = [socket.socketpair() for _ in range(count)]
    try:
        for _, b in pairs:
            b.send(b"!")
        yield [a for a, _ in pairs]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@contextlib.contextmanager
def idle_sockets(count: int) -> Iterator[list[socket.socket]]:
    """*count* connected sockets that never become ready (both ends of socketpairs)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            a, b = socket.socketpair()
            socks.append(a)
            socks.append(b)
        yield socks[:count]
    finally:
        for sock in socks:
            sock.close()


def _timed(run_chunk: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Call *run_chunk* until *seconds* have passed; return (units done, elapsed)."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += run_chunk()
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


def dispatch_rate(backend: str, seconds: float, targets: int = DISPATCH_TARGETS) -> float:
    """Handler calls per second through :func:`iterate` with *targets* always-ready targets."""
    from .factory import create_dispatcher

    with ready_sockets(targets) as socks, create_dispatcher(backend) as dispatcher:
        counters = [_Counter(sock) for sock in socks]
        for counter in counters:
            dispatcher.register(counter, Events.READ)

        def chunk() -> int:
            before = sum(c.calls for c in counters)
            iterate(dispatcher, timeout=1.0, count=50)
            return sum(c.calls for c in counters) - before

        chunk()  # warm up
        calls, elapsed = _timed(chunk, seconds)
    return calls / elapsed


def idle_dispatch_cost(backend: str, idle: int, seconds: float) -> float | None:
    """Seconds per ``dispatch_once`` (one ready target's handler) with *idle* idle targets.

    Returns None when the backend refuses that many descriptors (``select`` stops at
    ``FD_SETSIZE``).
    """
    from .factory import create_dispatcher

    with (
        idle_sockets(idle) as idlers,
        ready_sockets(1) as active,
        create_dispatcher(backend) as dispatcher,
    ):
        try:
            for sock in idlers:
                dispatcher.register(_Idle(sock), Events.READ)
            counter = _Counter(active[0])
            dispatcher.register(counter, Events.READ)
        except ValueError:
            return None
        dispatch_once = dispatcher.dispatch_once

        def chunk() -> int:
            for _ in range(20):
                dispatch_once(1.0)
            return 20

        chunk()
        dispatches, elapsed = _timed(chunk, seconds)
        if counter.calls != dispatches + 20:
            raise RuntimeError(f"{backend}: {counter.calls} handler calls for {dispatches + 20}")
    return elapsed / dispatches


def _new_loop(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> Any:
    return (loop_factory or asyncio.new_event_loop)()


def asyncio_dispatch_rate(
    seconds: float,
    targets: int = DISPATCH_TARGETS,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> float:
    """``add_reader`` callbacks per second on an asyncio loop with always-ready descriptors."""
    loop = _new_loop(loop_factory)
    calls = 0

    def callback() -> None:
        nonlocal calls
        calls += 1

    try:
        with ready_sockets(targets) as socks:
            for sock in socks:
                loop.add_reader(sock.fileno(), callback)
            loop.call_later(min(0.05, seconds), loop.stop)
            loop.run_forever()  # warm up
            calls = 0
            start = time.perf_counter()
            loop.call_later(seconds, loop.stop)
            loop.run_forever()
            elapsed = time.perf_counter() - start
            for sock in socks:
                loop.remove_reader(sock.fileno())
    finally:
        loop.close()
    return calls / elapsed


def asyncio_idle_dispatch_cost(
    idle: int,
    seconds: float,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> float:
    """Seconds per loop iteration (one ready reader's callback) with *idle* idle readers."""
    loop = _new_loop(loop_factory)
    calls = 0

    def callback() -> None:
        nonlocal calls
        calls += 1

    def never() -> None:  # pragma: no cover - never ready
        raise AssertionError("an idle reader was called")

    try:
        with idle_sockets(idle) as idlers, ready_sockets(1) as active:
            for sock in idlers:
                loop.add_reader(sock.fileno(), never)
            loop.add_reader(active[0].fileno(), callback)
            loop.call_later(min(0.05, seconds), loop.stop)
            loop.run_forever()
            calls = 0
            start = time.perf_counter()
            loop.call_later(seconds, loop.stop)
            loop.run_forever()
            elapsed = time.perf_counter() - start
            for sock in [*idlers, *active]:
                loop.remove_reader(sock.fileno())
    finally:
        loop.close()
    return elapsed / max(calls, 1)


# -- the command ------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """One row of ``asycamore bench``'s table."""

    workload: str
    subject: str
    value: float | None
    unit: str
    note: str = ""
    ratio: float | None = None
    """*value* divided by asyncio's in the same workload."""
    details: dict[str, Any] = field(default_factory=dict)


def _progress(step: int, total: int, text: str) -> None:
    print(f"[{step}/{total}] {text} ...", file=sys.stderr, flush=True)


def _available_backends() -> list[str]:
    from .factory import list_backends

    return [info.name for info in list_backends() if info.available]


def _pingpong(
    server_command: list[str], seconds: float, conns: int, size: int
) -> tuple[float, str, dict[str, Any]]:
    server_cpu, gen_cpu = cpu_layout()
    warmup = min(0.25, seconds)
    with ServerProcess(server_command, cpu=server_cpu) as server:
        gen = [
            *python_loadgen_command(),
            "--port",
            str(server.port),
            "--host",
            server.host,
            "--conns",
            str(conns),
            "--size",
            str(size),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
        ]
        result = run_loadgen(gen, server, cpu=gen_cpu, timeout=60 + 2 * seconds)
    notes = []
    if result.generator_saturated:
        notes.append("generator saturated")
    if result.errors:
        notes.append(f"{result.errors} errors")
    details = {
        "server_cpu": result.server_cpu,
        "generator_cpu": result.generator_cpu,
        "generator": result.generator,
    }
    return result.rate, ", ".join(notes), details


def run_bench(seconds: float = 1.0, as_json: bool = False) -> int:
    """Run the ``asycamore bench`` command; return the exit status.

    Each measurement lasts about *seconds*.  Progress goes to stderr, the table (or JSON
    with *as_json*) to stdout.
    """
    raise_nofile_limit()
    backends = _available_backends()
    has_echo = echo_available()
    steps: list[tuple[str, str, Callable[[], BenchResult]]] = []

    def dispatch_step(backend: str) -> BenchResult:
        return BenchResult("dispatch", backend, dispatch_rate(backend, seconds), "calls/s")

    def asyncio_dispatch_step() -> BenchResult:
        return BenchResult("dispatch", "asyncio", asyncio_dispatch_rate(seconds), "calls/s")

    def echo_step(subject: str, command: list[str]) -> BenchResult:
        rate, note, details = _pingpong(command, seconds, conns=64, size=64)
        return BenchResult("ping-pong", subject, rate, "msgs/s", note, details=details)

    for backend in backends:
        steps.append(("dispatch", backend, functools.partial(dispatch_step, backend)))
    steps.append(("dispatch", "asyncio", asyncio_dispatch_step))
    if has_echo:
        for backend in backends:
            command = asycamore_echo_command(backend)
            steps.append(("ping-pong", backend, functools.partial(echo_step, backend, command)))
    steps.append(("ping-pong", "asyncio", lambda: echo_step("asyncio", asyncio_echo_command())))

    results: list[BenchResult] = []
    failed = False
    for number, (workload, subject, step) in enumerate(steps, 1):
        _progress(number, len(steps), f"{subject} {workload}")
        try:
            results.append(step())
        except Exception as exc:
            failed = True
            print(f"    failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            results.append(BenchResult(workload, subject, None, "", f"failed: {exc}"))
    if not has_echo:
        for backend in backends:
            results.append(
                BenchResult("ping-pong", backend, None, "msgs/s", "asycamore.echo not installed")
            )
    _add_ratios(results)
    if as_json:
        payload = {
            "machine": machine_info(),
            "seconds": seconds,
            "results": [vars(r) for r in results],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(results))
        server_cpu, _ = cpu_layout()
        layout = "server and generator pinned to separate CPUs" if server_cpu is not None else ""
        print(f"\nratio: to asyncio in the same run (higher is better). {layout}".rstrip())
    return 1 if failed else 0


def _add_ratios(results: list[BenchResult]) -> None:
    reference = {r.workload: r.value for r in results if r.subject == "asyncio"}
    for r in results:
        ref = reference.get(r.workload)
        if r.value is not None and ref:
            r.ratio = r.value / ref


def format_table(results: Sequence[BenchResult]) -> str:
    """The results as an aligned text table."""
    header = ("WORKLOAD", "SUBJECT", "RESULT", "RATIO", "NOTE")
    rows = [header]
    for r in results:
        value = "-" if r.value is None else f"{r.value:,.0f} {r.unit}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        rows.append((r.workload, r.subject, value, ratio, r.note))
    return text_table(rows)


# -- ``python -m asycamore.bench`` helpers ------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    """Helper processes for the benchmark: ``loadgen`` and ``asyncio-echo``."""
    parser = argparse.ArgumentParser(prog="python -m asycamore.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("loadgen", help="the Python load generator")
    gen.add_argument("--host", default="127.0.0.1")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument(
        "--mode", default="pingpong", choices=["pingpong", "bulk", "connrate", "idle"]
    )
    gen.add_argument("--window", type=int, help="ignored (the C generator's option)")
    gen.add_argument("--conns", type=int, default=16)
    gen.add_argument("--size", type=int, default=64)
    gen.add_argument("--seconds", type=float, default=1.0)
    gen.add_argument("--warmup", type=float, default=0.2)
    echo = commands.add_parser("asyncio-echo", help="the reference asyncio echo server")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "loadgen":
        try:
            return _python_loadgen(
                args.host, args.port, args.mode, args.conns, args.size, args.seconds, args.warmup
            )
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                print(f"loadgen: nothing listens on {args.host}:{args.port}", file=sys.stderr)
                return 1
            raise
    asyncio.run(_asyncio_echo(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
