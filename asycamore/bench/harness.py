"""The benchmark's parent side: the machine, pinned child processes, a load-generator run.

A loopback echo measurement runs two programs in child processes, each pinned to its own
CPU where there are two or more: a server under test (:class:`ServerProcess`) and a load
generator (:func:`run_loadgen`).  The parent only starts them, samples CPU time from
``/proc`` at the moments the generator names, and stops them.

The protocol between a load generator and :func:`run_loadgen`, which the Python
generator in :mod:`asycamore.bench.programs` and the C one in the repository's
``benchmarks/`` both follow: the generator prints ``measuring`` when its measured window
starts and one JSON object (see :class:`LoadgenResult` for the keys read) when it ends.

The repository's benchmark suite builds on these functions; they are public for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    "SATURATED",
    "LoadgenResult",
    "ServerProcess",
    "cpu_layout",
    "cpu_shares",
    "cpu_times",
    "machine_info",
    "pinned",
    "raise_nofile_limit",
    "run_loadgen",
    "spawn",
    "terminate",
]

SATURATED = 0.95
"""A load generator using this fraction of a CPU or more is flagged as saturated."""

_STARTUP_TIMEOUT = 15.0


# -- the machine -------------------------------------------------------------------------


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


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the body with this process pinned to *cpu*, then restore its CPU affinity.

    With None, or where affinity cannot be set, the body runs as the process is.
    """
    if cpu is None or not hasattr(os, "sched_getaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    _pin(cpu)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous)


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


# -- child processes -------------------------------------------------------------------------


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        _pin(cpu)
        raise_nofile_limit()

    return setup


def spawn(
    command: Sequence[str], cpu: int | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start *command* as a benchmark's child process, pinned to *cpu* (when given).

    Its stdin is ``/dev/null``, its stdout and stderr are text pipes, and its
    ``RLIMIT_NOFILE`` is raised before it runs (thousands of connections need it).
    *env* adds to (or overrides) this process's environment for the child.
    """
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env else None,
        preexec_fn=_child_setup(cpu),  # noqa: PLW1509 - no threads here
    )


def terminate(proc: subprocess.Popen[str], timeout: float = 5.0) -> int | None:
    """SIGTERM, wait up to *timeout* seconds, then SIGKILL; close the pipes; return the status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


class ServerProcess:
    """An echo server under test in its own process.

    *command* must print ``listening on HOST:PORT`` on stdout and stop on SIGTERM.  The
    process is started with :func:`spawn` (pinned to *cpu* when given, with *env* added
    to its environment).  Use as a context manager: it is stopped (SIGTERM, then
    SIGKILL) on exit.
    """

    def __init__(
        self,
        command: Sequence[str],
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.proc = spawn(self.command, cpu, env)
        self.host, self.port = self._read_address()

    def _read_address(self) -> tuple[str, int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], _STARTUP_TIMEOUT)
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

    def alive(self) -> bool:
        """Whether the server is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to *timeout* seconds, then SIGKILL; return the exit status."""
        return terminate(self.proc, timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- a load-generator run --------------------------------------------------------------------


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


def run_loadgen(
    command: Sequence[str],
    server: ServerProcess,
    *,
    cpu: int | None = None,
    timeout: float = 120.0,
) -> LoadgenResult:
    """Run a load generator *command* against *server* and collect both sides' CPU use.

    The generator prints ``measuring`` when its measured window starts and one JSON
    object at the end (the module docstring has the protocol); the server's CPU time
    is sampled at those two moments.
    """
    proc = spawn(command, cpu)
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
