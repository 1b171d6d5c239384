"""``asycamore bench``: a short, self-contained loopback benchmark.

The command measures, for every available backend and for the stdlib :mod:`asyncio` loop
as the reference:

* **dispatch overhead** -- handler calls per second through :func:`asycamore.iterate` (for
  asyncio: ``add_reader`` callbacks per second) with many always-ready targets, in this
  process;
* **echo ping-pong** -- round trips per second against ``asycamore echo`` (and an
  ``asyncio.Protocol`` echo server) in a separate process, driven by a Python load
  generator in another process, each pinned to its own CPU where there are two or more.

It needs nothing beyond the standard library.  The package's modules:

* this one -- the command and the in-process dispatch measurement;
* :mod:`asycamore.bench.harness` -- the parent side of an echo measurement: the
  machine, pinned child processes, a load-generator run and its CPU accounting;
* :mod:`asycamore.bench.programs` -- what runs in those child processes: the Python load
  generator and the reference asyncio echo server (``python -m asycamore.bench``).

The full benchmark suite in the repository's ``benchmarks/`` directory (C load
generator, more peers, more workloads, several rounds) builds on all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..dispatcher import Events, iterate
from ..tables import text_table
from .harness import ServerProcess, cpu_layout, machine_info, raise_nofile_limit, run_loadgen
from .programs import (
    MALLOC_TUNED,
    asycamore_echo_command,
    asyncio_echo_command,
    loadgen_command,
)

__all__ = [
    "DISPATCH_TARGETS",
    "BenchResult",
    "CountingTarget",
    "asyncio_dispatch_rate",
    "dispatch_rate",
    "format_table",
    "ready_sockets",
    "run_bench",
    "timed",
]

DISPATCH_TARGETS = 64
"""Always-ready targets in the dispatch-overhead measurement."""


# -- in-process dispatch measurements ------------------------------------------------------------


class CountingTarget:
    """A target whose handlers only count their calls: the dispatch path with no work in it."""

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


def timed(run_chunk: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Call *run_chunk* until *seconds* have passed; return (units it did, elapsed seconds)."""
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
    from ..factory import create_dispatcher

    with ready_sockets(targets) as socks, create_dispatcher(backend) as dispatcher:
        counters = [CountingTarget(sock) for sock in socks]
        for counter in counters:
            dispatcher.register(counter, Events.READ)

        def chunk() -> int:
            before = sum(c.calls for c in counters)
            iterate(dispatcher, timeout=1.0, count=50)
            return sum(c.calls for c in counters) - before

        chunk()  # warm up
        calls, elapsed = timed(chunk, seconds)
    return calls / elapsed


def asyncio_dispatch_rate(
    seconds: float,
    targets: int = DISPATCH_TARGETS,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> float:
    """``add_reader`` callbacks per second on an asyncio loop with always-ready descriptors."""
    loop = (loop_factory or asyncio.new_event_loop)()
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
    from ..factory import list_backends

    return [info.name for info in list_backends() if info.available]


def _pingpong(
    server_command: list[str],
    seconds: float,
    conns: int,
    size: int,
    env: dict[str, str] | None = None,
) -> tuple[float, str, dict[str, Any]]:
    server_cpu, gen_cpu = cpu_layout()
    warmup = min(0.25, seconds)
    with ServerProcess(server_command, cpu=server_cpu, env=env) as server:
        gen = [
            *loadgen_command(),
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
    steps: list[tuple[str, str, Callable[[], BenchResult]]] = []

    def dispatch_step(backend: str) -> BenchResult:
        return BenchResult("dispatch", backend, dispatch_rate(backend, seconds), "calls/s")

    def asyncio_dispatch_step() -> BenchResult:
        return BenchResult("dispatch", "asyncio", asyncio_dispatch_rate(seconds), "calls/s")

    def echo_step(
        subject: str, command: list[str], env: dict[str, str] | None = None
    ) -> BenchResult:
        rate, note, details = _pingpong(command, seconds, conns=64, size=64, env=env)
        return BenchResult("ping-pong", subject, rate, "msgs/s", note, details=details)

    for backend in backends:
        steps.append(("dispatch", backend, functools.partial(dispatch_step, backend)))
    steps.append(("dispatch", "asyncio", asyncio_dispatch_step))
    for backend in backends:
        command = asycamore_echo_command(backend)
        steps.append(("ping-pong", backend, functools.partial(echo_step, backend, command)))
    asyncio_echo = functools.partial(echo_step, "asyncio", asyncio_echo_command(), MALLOC_TUNED)
    steps.append(("ping-pong", "asyncio", asyncio_echo))

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
        print(
            "\nratio: to asyncio in the same run (higher is better; asyncio's echo server"
            " runs with glibc's malloc thresholds raised, as a warmed-up process has them)."
            f" {layout}".rstrip()
        )
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
