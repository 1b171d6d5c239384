"""asycamore's benchmark suite: every backend against its peers, in the same run.

    python benchmarks/run.py                  # everything, 3 rounds (about 15 minutes)
    python benchmarks/run.py --pythons 3.12,3.13   # and the peers on 3.12 and 3.13
    python benchmarks/run.py --quick          # a smoke run: tiny sizes, 1 round, no files
    python benchmarks/run.py --only pingpong,bulk --rounds 5 --seconds 3
    nox -s bench -- --rounds 5

Workloads
    dispatch       in-process: handler calls/s through iterate, 64 always-ready targets
    idle           in-process: cost of one dispatch with N idle targets and one active
    pingpong       echo, 64 connections, 64-byte messages, one in flight per connection
    pingpong-idle  the same with 10,000 idle connections open (and the server's RSS)
    bulk           echo, 4 streams of 64 KiB writes, every echoed byte verified
    connrate       connect, send 64 B, read the echo, close; 16 at a time
    connrate-idle  the same with 10,000 idle connections open

Suites (run only when named in --only, e.g. ``--only tls,udp,aio,compat,http``): the
scripts tls_bench.py, udp_bench.py, aio_bench.py, compat_bench.py and http_bench.py
beside this one, each with its own peers (asyncio, uvloop, pyasyncore) and load
generators (openssl, wrk) in the same sitting, and runnable alone.

Subjects: ``asycamore echo`` on every available backend; asyncio's echo server in three
configurations (``asyncio``: a plain ``asyncio.Protocol`` as a fresh process runs it;
``asyncio-tuned``: the same with glibc's malloc thresholds raised, see
``asycamore.bench.programs.MALLOC_TUNED``; ``asyncio-buffered``: a ``BufferedProtocol``);
the same server on uvloop (when importable); asyncore's poll loop (stdlib on 3.11,
``pyasyncore`` on 3.12+); a minimal hand-written selectors loop (on the default selector,
and on ``selectors.PollSelector``: the floor for the poll backend); a C epoll server (when
gcc exists); and ``asycamore echo --workers 1`` and ``--workers 2`` (pingpong and
connrate only; their CPU is the whole process tree's, and they are pinned to the one
server CPU like every subject, so they show the supervisor's and the kernel's share, not
scaling).  ``--pythons 3.12,3.13`` adds asycamore on epoll, the asyncio configurations
and uvloop run by those Pythons (``NAME@X.Y.Z``) on pingpong, bulk and connrate.

The load generator is ``benchmarks/c/loadgen.c`` (compiled at run time into a cache
directory outside the repository; without gcc the slower Python generator,
``benchmarks/loadgen.py``, is used and the results say so).  Servers
are pinned to one CPU and the generator to another; the server's CPU comes from /proc,
the generator reports its own, and a round where the generator used >= 95% of a CPU is
flagged: there the generator, not the server, set the pace.

Rounds are interleaved (for each round, every subject in turn) and the results are
medians over rounds, with the min-max spread, and ratios to the best of asyncio's
configurations run by the same Python in the same round (so that a ratio holds against
each of them).  Results go to ``benchmarks/results/`` as JSON, a text table, RST tables
for the docs (all workloads; asycamore against its peers) and the idle-scaling plot (PNG,
when matplotlib is installed), each replacing the last run's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# benchmarks/loadgen.py and probes.py, next to this file (``loadgen`` below is the C
# generator's path, hence the alias).
import loadgen as python_loadgen
import probes

from asycamore.bench import harness
from asycamore.bench.programs import MALLOC_TUNED, asycamore_echo_command
from asycamore.factory import list_backends
from asycamore.tables import text_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SERVERS = HERE / "servers"
C_SOURCES = HERE / "c"

ECHO_WORKLOADS = ("pingpong", "pingpong-idle", "bulk", "connrate", "connrate-idle")
IDLE_WORKLOADS = ("pingpong-idle", "connrate-idle")
INPROCESS_WORKLOADS = ("dispatch", "idle")
ALL_WORKLOADS = INPROCESS_WORKLOADS + ECHO_WORKLOADS
# Suites with load generators of their own (openssl, UDP peers, asyncio servers,
# asyncore), each a script beside this one that also runs alone; asked for by name
# with --only, they run after the echo workloads, in the same sitting.
SUITES = {
    "tls": ("tls_bench.py", "TLS bulk MB/s and handshakes/s: asycamore, asyncio, uvloop"),
    "udp": ("udp_bench.py", "UDP ping-pong datagrams/s: asycamore, asyncio, uvloop"),
    "aio": ("aio_bench.py", "asyncio on asycamore, and asycamore hosted by asyncio"),
    "compat": ("compat_bench.py", "asycamore.compat.asyncore against (py)asyncore"),
    "http": ("http_bench.py", "aiohttp hello world under wrk: asyncio, asycamore, uvloop"),
}

UNITS = {
    "dispatch": "calls/s",
    "pingpong": "msgs/s",
    "pingpong-idle": "msgs/s",
    "bulk": "MB/s",
    "connrate": "conns/s",
    "connrate-idle": "conns/s",
}


def log(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


# -- configuration ------------------------------------------------------------------------


@dataclass
class Config:
    """What to run and how long."""

    rounds: int
    seconds: float
    warmup: float
    inprocess_seconds: float
    idle_conns: int
    idle_sizes: tuple[int, ...]
    pingpong_conns: int = 64
    pingpong_size: int = 64
    bulk_streams: int = 4
    bulk_chunk: int = 65536
    bulk_window: int = 256 * 1024
    connrate_concurrency: int = 16
    quiet_wait: float = 20.0
    """Seconds to wait, before a measurement, for the pinned CPUs to be idle."""
    retries: int = 2
    """Measure again (at most this often) when other processes used the pinned CPUs."""
    max_foreign: float = 0.15
    """The share of a CPU other processes may use before a measurement is retried."""


FULL = Config(
    rounds=3,
    seconds=2.0,
    warmup=0.5,
    inprocess_seconds=0.5,
    idle_conns=10_000,
    idle_sizes=(10, 100, 1000, 10_000),
)
QUICK = Config(
    rounds=1,
    seconds=0.2,
    warmup=0.05,
    inprocess_seconds=0.05,
    idle_conns=200,
    idle_sizes=(10, 100),
    pingpong_conns=8,
    bulk_streams=2,
    connrate_concurrency=4,
    quiet_wait=0.0,
    retries=0,
)


# -- C programs ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where compiled C programs are kept (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asycamore-bench"


def compile_c(name: str) -> Path | None:
    """Compile ``benchmarks/c/<name>.c`` with gcc (cached by source hash).

    None without gcc, off Linux (the programs use epoll), or if the build fails.
    """
    source = C_SOURCES / f"{name}.c"
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None or not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = cache_dir() / f"{name}-{digest}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
        command = [compiler, "-O2", "-o", str(tmp), str(source)]
        build = subprocess.run(command, check=False, capture_output=True, text=True)
        if build.returncode != 0:
            log(f"could not build {source.name}: {build.stderr.strip()[-500:]}")
            return None
        tmp.replace(binary)
    return binary


# -- subjects ----------------------------------------------------------------------------------


@dataclass
class Subject:
    """A server under test."""

    name: str
    command: list[str]
    max_fds: int | None = None  # select: FD_SETSIZE
    workers: int | None = None  # asycamore echo --workers N
    workloads: tuple[str, ...] = ECHO_WORKLOADS
    env: dict[str, str] | None = None
    """Added to the server's environment."""
    python: str = ""
    """The ``X.Y.Z`` version of the Python that runs it (empty: not Python)."""
    asyncio_config: bool = False
    """One of asyncio's configurations: the best of them in a round is the reference."""


PEER_WORKLOADS = ("pingpong", "bulk", "connrate")
"""The workloads run on the Pythons named by ``--pythons`` (the idle ones take long)."""


def python_version(python: str) -> str:
    """The ``X.Y.Z`` version of interpreter *python*."""
    probe = [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]
    return subprocess.run(probe, check=True, capture_output=True, text=True).stdout.strip()


def can_import(python: str, module: str) -> bool:
    """Whether interpreter *python* can import *module*."""
    probe = [python, "-c", f"import {module}"]
    try:
        return subprocess.run(probe, check=False, capture_output=True).returncode == 0
    except OSError:  # no such interpreter (yet)
        return False


def find_python(spec: str) -> str:
    """The interpreter named by *spec*: a path, or a version like ``3.12`` found on PATH
    as ``python3.12``.  Raises ValueError naming *spec* when there is none."""
    found = spec if os.sep in spec else shutil.which(f"python{spec}")
    if not found or not os.access(found, os.X_OK):
        raise ValueError(f"--pythons: no interpreter {spec!r} (a version like 3.12, or a path)")
    return found


def bench_python(spec: str) -> str:
    """An interpreter for the Python named by *spec* (``3.12`` or a path) that can import
    this tree's asycamore and uvloop: a venv made once in the cache directory.

    Raises ValueError naming *spec* when no such Python is found or the install fails.
    """
    found = find_python(spec)
    version = python_version(found)
    tree = HERE.parent
    # Keyed by the tree too: the install is editable, so it must run this checkout.
    tag = hashlib.sha256(str(tree).encode()).hexdigest()[:8]
    venv = cache_dir() / f"venv-{version}-{tag}"
    python = str(venv / "bin" / "python")
    if not can_import(python, "asycamore"):
        log(f"making {venv} (asycamore from {tree}, and uvloop) ...")
        subprocess.run([found, "-m", "venv", "--clear", str(venv)], check=True)
        install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if subprocess.run([*install, "-e", str(tree)], check=False).returncode != 0:
            raise ValueError(f"--pythons: could not install asycamore for {found}")
        # Without uvloop the run goes on, with a note saying so.
        subprocess.run([*install, "uvloop"], check=False)
    return python


def peer_subjects(python: str, suffix: str, workloads: tuple[str, ...]) -> list[Subject]:
    """asyncio's configurations and uvloop, run by *python*, named with *suffix*."""
    version = python_version(python)
    echo = [python, str(SERVERS / "asyncio_echo.py")]
    peers = [
        Subject(f"asyncio{suffix}", echo, workloads=workloads, python=version,
                asyncio_config=True),
        Subject(f"asyncio-tuned{suffix}", echo, workloads=workloads, env=MALLOC_TUNED,
                python=version, asyncio_config=True),
        Subject(f"asyncio-buffered{suffix}", [*echo, "--buffered"], workloads=workloads,
                python=version, asyncio_config=True),
    ]  # fmt: skip
    if can_import(python, "uvloop"):
        peers.append(Subject(f"uvloop{suffix}", [*echo, "--uvloop"], workloads=workloads,
                             python=version))  # fmt: skip
    return peers


def echo_subjects(
    c_server: Path | None, baseline_python: str | None = None, pythons: tuple[str, ...] = ()
) -> tuple[list[Subject], list[str]]:
    """Every server this machine can run, and notes about the ones it cannot.

    *pythons* are more interpreters: each runs asycamore echo on epoll and the asyncio
    and uvloop peers, on :data:`PEER_WORKLOADS`, named ``NAME@X.Y.Z``.
    """
    py = sys.executable
    here = python_version(py)
    subjects: list[Subject] = []
    notes: list[str] = []
    backends = [info.name for info in list_backends() if info.available]
    if baseline_python:
        # An A/B of two installs in one run: the other one's echo, on epoll.
        command = [baseline_python, *asycamore_echo_command("epoll")[1:]]
        subjects.append(Subject("asycamore-epoll-baseline", command, python=here))
        notes.append(f"asycamore-epoll-baseline: asycamore echo run by {baseline_python}")
    for backend in backends:
        subjects.append(
            Subject(
                f"asycamore-{backend}",
                asycamore_echo_command(backend),
                1024 if backend == "select" else None,
                python=here,
            )
        )
    subjects += peer_subjects(py, "", ECHO_WORKLOADS)
    if not any(s.name == "uvloop" for s in subjects):
        notes.append("uvloop is not installed (pip install 'asycamore[bench]')")
    if probes.asyncore_importable():
        subjects.append(
            Subject(
                "asyncore-poll",
                [py, "-W", "ignore", str(SERVERS / "asyncore_echo.py")],
                python=here,
            )
        )
    else:
        notes.append("asyncore is not importable (pip install pyasyncore on Python 3.12+)")
    subjects.append(Subject("selectors", [py, str(SERVERS / "selectors_echo.py")], python=here))
    subjects.append(
        Subject(
            "selectors-poll",
            [py, str(SERVERS / "selectors_echo.py"), "--poll"],
            workloads=IDLE_WORKLOADS,
            python=here,
        )
    )
    if "epoll" in backends:
        for count in (1, 2):
            subjects.append(
                Subject(
                    f"asycamore-epoll-{count}w",
                    [*asycamore_echo_command("epoll"), "--workers", str(count)],
                    workers=count,
                    workloads=("pingpong", "connrate"),
                    python=here,
                )
            )
    if c_server is not None:
        subjects.append(Subject("c-epoll", [str(c_server)]))
    else:
        notes.append("no C epoll echo server (needs gcc on Linux)")
    for other in pythons:
        version = python_version(other)
        suffix = f"@{version}"
        command = [other, *asycamore_echo_command("epoll")[1:]]
        subjects.append(
            Subject(f"asycamore-epoll{suffix}", command, workloads=PEER_WORKLOADS, python=version)
        )
        subjects += peer_subjects(other, suffix, PEER_WORKLOADS)
        if not any(s.name == f"uvloop{suffix}" for s in subjects):
            notes.append(f"uvloop could not be installed for Python {version}")
    return subjects, notes


# -- echo workloads ------------------------------------------------------------------------------


def generator_command(
    loadgen: Path | None, cfg: Config, workload: str, port: int, host: str
) -> list[str]:
    """The load-generator command for *workload*: the C generator, else the Python one."""
    if workload in ("pingpong", "pingpong-idle"):
        mode, conns, size = "pingpong", cfg.pingpong_conns, cfg.pingpong_size
    elif workload == "bulk":
        mode, conns, size = "bulk", cfg.bulk_streams, cfg.bulk_chunk
    else:
        mode, conns, size = "connrate", cfg.connrate_concurrency, cfg.pingpong_size
    common = [
        "--host", host, "--port", str(port), "--mode", mode, "--conns", str(conns),
        "--size", str(size), "--seconds", str(cfg.seconds), "--warmup", str(cfg.warmup),
    ]  # fmt: skip
    if loadgen is not None:
        return [str(loadgen), *common, "--window", str(cfg.bulk_window)]
    return [*python_loadgen.command(), *common]


def server_rss_kib(pid: int) -> int | None:
    """The resident set size of process *pid* in KiB, from ``/proc`` (None without it)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of process *pid* and its live children (a worker pool's
    parent and workers), from ``/proc``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            pids += [int(child) for child in f.read().split()]
    except OSError:
        pass
    for each in pids:
        try:
            with open(f"/proc/{each}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        seen = True
    return total if seen else None


class PoolProcess(harness.ServerProcess):
    """A server that forks workers: its CPU is the whole process tree's."""

    def cpu_seconds(self) -> float | None:
        """CPU seconds of the parent and its workers."""
        return tree_cpu_seconds(self.pid)


def server_fd_count(pid: int) -> int | None:
    """How many descriptors process *pid* holds open, from ``/proc`` (None without it)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@contextlib.contextmanager
def idle_connections(
    loadgen: Path | None, server: harness.ServerProcess, count: int, cpu: int | None
) -> Iterator[None]:
    """Hold *count* idle connections to *server* open; wait until it has accepted them."""
    baseline = server_fd_count(server.pid) or 0
    hold = str(600)
    if loadgen is not None:
        command = [str(loadgen), "--mode", "idle", "--conns", str(count), "--seconds", hold]
    else:
        command = [*python_loadgen.command(), "--mode", "idle", "--conns", str(count)]
        command += ["--seconds", hold]
    command += ["--host", server.host, "--port", str(server.port)]
    proc = harness.spawn(command, cpu)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"idle connections failed: {line!r} {err.strip()[-300:]}")
        deadline = time.monotonic() + 30 + count / 200
        # Without /proc (macOS) the server's descriptors cannot be counted: a pause
        # lets it accept the backlog instead.
        if server_fd_count(server.pid) is None:
            time.sleep(1.0 + count / 5000)
        while (server_fd_count(server.pid) or count + baseline) < count + baseline:
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError(
                    f"server accepted only {server_fd_count(server.pid)} of {count}"
                )
            time.sleep(0.05)
        yield
    finally:
        harness.terminate(proc, timeout=10)


def wait_quiet(
    cpus: tuple[int | None, int | None], max_wait: float, threshold: float = 0.9
) -> float:
    """Wait (up to *max_wait* s) until the pinned CPUs are at least *threshold* idle.

    On a shared machine this keeps other processes' bursts out of the measurements
    where it can; returns the seconds waited (a run on a busy machine still proceeds).
    """
    if cpus[0] is None or max_wait <= 0:
        return 0.0
    names = [f"cpu{c}" for c in cpus]
    start = time.monotonic()
    while True:
        before = harness.cpu_times()
        time.sleep(0.25)
        shares = harness.cpu_shares(before, harness.cpu_times())
        busy = [shares.get(n, {}).get("busy", 0.0) for n in names]
        waited = time.monotonic() - start
        if max(busy) <= 1 - threshold or waited >= max_wait:
            return waited


def measure_echo(
    subject: Subject,
    workload: str,
    cfg: Config,
    loadgen: Path | None,
    cpus: tuple[int | None, int | None],
) -> dict[str, Any]:
    """One round of one echo workload against one subject."""
    server_cpu, gen_cpu = cpus
    process = PoolProcess if subject.workers else harness.ServerProcess
    with process(subject.command, cpu=server_cpu, env=subject.env) as server:
        command = generator_command(loadgen, cfg, workload, server.port, server.host)
        idle = cfg.idle_conns if workload in IDLE_WORKLOADS else 0
        with contextlib.ExitStack() as stack:
            rss_idle = None
            if idle:
                stack.enter_context(idle_connections(loadgen, server, idle, gen_cpu))
                rss_idle = server_rss_kib(server.pid)
            result = harness.run_loadgen(command, server, cpu=gen_cpu, timeout=120 + cfg.seconds)
            rss = server_rss_kib(server.pid)
        status = server.stop()
    value = result.mb_per_s if workload == "bulk" else result.rate
    # CPU time on the two pinned CPUs that neither the server, the generator nor interrupt
    # work used: other processes on a shared machine.  Reported, so a noisy round shows.
    foreign = None
    if cpus[0] is not None and result.server_cpu is not None:
        pinned = [result.cpus.get(f"cpu{c}", {}) for c in cpus]
        # A process's CPU time includes the softirq work done on its behalf (this kernel
        # charges it to the interrupted task), so only busy time is compared.
        busy = sum(p.get("busy", 0.0) for p in pinned)
        foreign = max(0.0, busy - result.server_cpu - result.generator_cpu)
    return {
        "foreign_cpu": foreign,
        "value": value,
        "server_cpu": result.server_cpu,
        "generator_cpu": result.generator_cpu,
        "generator_core_busy": result.generator_core_busy,
        "generator_saturated": result.generator_saturated,
        "cpus": result.cpus,
        "errors": result.errors,
        "rss_kib": rss,
        "rss_idle_kib": rss_idle,
        "exit_status": status,
        "generator": result.generator,
    }


# -- statistics and output ------------------------------------------------------------------------


def summarize(
    rounds: list[dict[str, Any]], reference: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Median, spread and ratio to the reference (same rounds) of one subject's rounds."""
    values = [r["value"] for r in rounds if r.get("value") is not None]
    summary: dict[str, Any] = {"rounds": rounds}
    if not values:
        summary.update(median=None, min=None, max=None, ratio=None)
        return summary
    summary.update(median=statistics.median(values), min=min(values), max=max(values))
    ratios = []
    if reference is not None:
        for mine, ref in zip(rounds, reference, strict=False):
            if mine.get("value") is not None and ref.get("value"):
                ratios.append(mine["value"] / ref["value"])
    summary["ratios"] = ratios
    summary["ratio"] = statistics.median(ratios) if ratios else None
    for key in ("server_cpu", "generator_cpu", "rss_kib", "rss_idle_kib", "foreign_cpu"):
        found = [r[key] for r in rounds if r.get(key) is not None]
        if found:
            summary[key] = statistics.median(found)
    costs = [cost for r in rounds if (cost := _cpu_per_op(r))]
    if costs:
        # Server CPU seconds per unit of work: the server's cost whatever the pace, so it
        # stays meaningful in rounds where the generator set the pace.
        summary["cpu_per_op"] = statistics.median(costs)
    if reference is not None:
        cost_ratios = [
            theirs / cost
            for r, ref in zip(rounds, reference, strict=False)
            if (cost := _cpu_per_op(r)) and (theirs := _cpu_per_op(ref))
        ]
        if cost_ratios:
            summary["cost_ratio"] = statistics.median(cost_ratios)
    summary["generator_saturated_rounds"] = sum(bool(r.get("generator_saturated")) for r in rounds)
    return summary


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MB/s":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the main table: one per workload and subject, medians over the rounds."""
    rows: list[tuple[str, ...]] = [
        (
            "workload",
            "subject",
            "median",
            "spread (min-max)",
            "vs best asyncio",
            "server/gen CPU",
            "server CPU/op (best asyncio's/this)",
            "notes",
        )
    ]
    for workload, data in results["workloads"].items():
        unit = data["unit"]
        for subject, s in data["subjects"].items():
            notes = []
            if s.get("generator_saturated_rounds"):
                notes.append(
                    f"generator saturated in {s['generator_saturated_rounds']}/{len(s['rounds'])}"
                )
            if (s.get("foreign_cpu") or 0) >= 0.1:
                notes.append(f"other processes used {s['foreign_cpu']:.0%} of a CPU")
            if s.get("rss_idle_kib"):
                notes.append(f"RSS {s['rss_idle_kib'] / 1024:.0f} MiB with idle conns")
            elif s.get("rss_kib") and workload == "pingpong":
                notes.append(f"RSS {s['rss_kib'] / 1024:.0f} MiB")
            redone = sum(len(r.get("discarded", ())) for r in s["rounds"])
            if redone:
                notes.append(f"{redone} disturbed run(s) redone")
            for r in s["rounds"]:
                if r.get("note") and r["note"] not in notes:
                    notes.append(r["note"])
                if r.get("errors"):
                    notes.append(f"{r['errors']} errors")
            cpu = "-"
            if s.get("server_cpu") is not None:
                cpu = f"{s['server_cpu']:.0%}/{s.get('generator_cpu', 0):.0%}"
            spread = "-" if s["min"] is None else f"{_fmt(s['min'], unit)}-{_fmt(s['max'], unit)}"
            ratio = "-" if s.get("ratio") is None else f"{s['ratio']:.2f}x"
            per_op = "-"
            cost = s.get("cpu_per_op")
            if cost is not None:
                per_op = f"{cost * 1e3:.2f} ms/MB" if unit == "MB/s" else f"{cost * 1e6:.1f} us"
                if s.get("cost_ratio"):
                    per_op += f" ({s['cost_ratio']:.2f}x)"
            rows.append(
                (workload, subject, f"{_fmt(s['median'], unit)} {unit}" if s["median"] else "-",
                 spread, ratio, cpu, per_op, "; ".join(notes))
            )  # fmt: skip
    return rows


def idle_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the idle-scaling table: microseconds per dispatch by subject and N."""
    idle = results.get("idle")
    if not idle:
        return []
    sizes = [str(n) for n in idle["sizes"]]
    rows = [("subject", *[f"N={n}" for n in sizes])]
    for subject, by_n in idle["subjects"].items():
        cells = []
        for n in sizes:
            median = by_n.get(n, {}).get("median")
            cells.append("FD_SETSIZE" if median is None else f"{median * 1e6:.2f} us")
        rows.append((subject, *cells))
    return rows


def rst_table(rows: list[tuple[str, ...]]) -> str:
    """An RST grid-less ("simple") table."""
    widths = [max(len(row[i]) for row in rows) or 1 for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    for row in rows[1:]:
        lines.append("  ".join((c or "-").ljust(w) for c, w in zip(row, widths, strict=True)))
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


def plot_idle(results: dict[str, Any], path: Path) -> bool:
    """Plot idle scaling (log-log) to *path*; False when matplotlib is missing."""
    if not probes.importable("matplotlib"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idle = results["idle"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for subject, by_n in idle["subjects"].items():
        xs = [n for n in idle["sizes"] if by_n.get(str(n), {}).get("median") is not None]
        ys = [by_n[str(n)]["median"] * 1e6 for n in xs]
        if xs:
            style = "-o" if subject.startswith("asycamore") else "--s"
            ax.plot(xs, ys, style, label=subject, markersize=4)
    if max(idle["sizes"]) >= 1024:
        ax.axvline(1024, linestyle=":", color="grey")
        ax.text(
            1024, 0.98, " FD_SETSIZE: select stops", fontsize=7, va="top",
            transform=ax.get_xaxis_transform(),
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("idle targets registered (N)")
    ax.set_ylabel("microseconds per dispatch (one ready target)")
    ax.set_title("Idle scaling: cost of one dispatch with N idle targets")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# -- main ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected workloads and return the results document."""
    cfg = QUICK if args.quick else FULL
    if args.rounds:
        cfg.rounds = args.rounds
    if args.seconds:
        cfg.seconds = args.seconds
    if args.idle_conns:
        cfg.idle_conns = args.idle_conns
    if args.quiet_wait is not None:
        cfg.quiet_wait = args.quiet_wait
    if args.retries is not None:
        cfg.retries = args.retries
    workloads = [w for w in ALL_WORKLOADS if w in args.only] if args.only else list(ALL_WORKLOADS)
    harness.raise_nofile_limit()
    cpus = harness.cpu_layout()
    loadgen = None if args.python_generator else compile_c("loadgen")
    c_server = compile_c("epoll_echo")
    subjects, notes = echo_subjects(c_server, args.baseline_python, args.pythons)
    if args.subjects:
        subjects = [s for s in subjects if s.name in args.subjects]
    if loadgen is None:
        notes.append(
            "load generator: Python (benchmarks/loadgen.py), slower than the C one: expect it to"
            " be saturated, and compare the servers by their CPU per operation"
        )
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": harness.machine_info(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "generator": "c" if loadgen is not None else "python",
        "pinning": {"server_cpu": cpus[0], "generator_cpu": cpus[1]},
        "config": vars(cfg) | {"idle_sizes": list(cfg.idle_sizes)},
        "provenance": harness.provenance(),
        "notes": notes,
        "subjects": {
            s.name: {"python": s.python, "command": s.command, "env": s.env or {}}
            for s in subjects
        },
        "workloads": {},
    }
    with harness.pinned(cpus[0]):  # in-process measurements run on the server's CPU
        inproc, extra = probes.inprocess_subjects()
        if args.subjects:
            inproc = [s for s in inproc if s in args.subjects]
            extra = [s for s in extra if s in args.subjects]

        if "dispatch" in workloads:
            rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in inproc}
            for r in range(cfg.rounds):
                for subject in inproc:
                    log(f"[dispatch round {r + 1}/{cfg.rounds}] {subject} ...")
                    wait_quiet(cpus, cfg.quiet_wait)
                    rounds[subject].append(
                        {"value": probes.dispatch_measure(subject, cfg.inprocess_seconds)}
                    )
            ref = rounds.get("asyncio")
            results["workloads"]["dispatch"] = {
                "unit": UNITS["dispatch"],
                "subjects": {s: summarize(v, ref) for s, v in rounds.items()},
            }

        if "idle" in workloads:
            subjects_idle = inproc + extra
            per: dict[str, dict[str, list[float | None]]] = {
                s: {str(n): [] for n in cfg.idle_sizes} for s in subjects_idle
            }
            for r in range(cfg.rounds):
                for n in cfg.idle_sizes:
                    for subject in subjects_idle:
                        if subject == "asyncore-poll" and n > 1000 and r > 0:
                            continue  # O(N) Python per round: one round says enough
                        log(f"[idle round {r + 1}/{cfg.rounds}] {subject} N={n} ...")
                        wait_quiet(cpus, cfg.quiet_wait)
                        per[subject][str(n)].append(
                            probes.idle_measure(subject, n, cfg.inprocess_seconds)
                        )
            idle_doc: dict[str, Any] = {
                "sizes": list(cfg.idle_sizes),
                "unit": "seconds/dispatch",
                "subjects": {},
            }
            for subject, by_n in per.items():
                idle_doc["subjects"][subject] = {}
                for size_key, vals in by_n.items():
                    got = [v for v in vals if v is not None]
                    idle_doc["subjects"][subject][size_key] = {
                        "rounds": vals,
                        "median": statistics.median(got) if got else None,
                        "min": min(got) if got else None,
                        "max": max(got) if got else None,
                    }
            results["idle"] = idle_doc

    for workload in [w for w in workloads if w in ECHO_WORKLOADS]:
        rounds_echo: dict[str, list[dict[str, Any]]] = {
            s.name: [] for s in subjects if workload in s.workloads
        }
        for round_no in range(cfg.rounds):
            for server in subjects:
                if workload not in server.workloads:
                    continue
                tag = f"[{workload} round {round_no + 1}/{cfg.rounds}] {server.name}"
                if (
                    workload in IDLE_WORKLOADS
                    and server.max_fds
                    and cfg.idle_conns + 100 > server.max_fds
                ):
                    rounds_echo[server.name].append({"value": None, "note": "FD_SETSIZE"})
                    continue
                log(f"{tag} ...")
                discarded: list[dict[str, Any]] = []
                for attempt in range(1 + cfg.retries):
                    waited = wait_quiet(cpus, cfg.quiet_wait)
                    try:
                        result = measure_echo(server, workload, cfg, loadgen, cpus)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        log(f"    failed: {exc}")
                        result = {"value": None, "note": f"failed: {exc}"[:200]}
                        break
                    result["waited_for_quiet"] = round(waited, 2)
                    foreign = result.get("foreign_cpu") or 0.0
                    if foreign < cfg.max_foreign or attempt == cfg.retries:
                        break
                    # Another process took a share of the pinned CPUs: measure again.
                    log(f"    other processes used {foreign:.0%} of a CPU: again")
                    discarded.append({"value": result["value"], "foreign_cpu": foreign})
                if discarded:
                    result["discarded"] = discarded
                rounds_echo[server.name].append(result)
                if result.get("value") is not None:
                    cpu = result.get("server_cpu") or 0
                    gen = result["generator_cpu"]
                    log(f"    {result['value']:,.1f} {UNITS[workload]}  server CPU {cpu:.0%}  "
                        f"generator CPU {gen:.0%}")  # fmt: skip
        summaries = {}
        for server in subjects:
            if server.name in rounds_echo:
                ref = best_asyncio(rounds_echo, subjects, server.python)
                summaries[server.name] = summarize(rounds_echo[server.name], ref)
        results["workloads"][workload] = {"unit": UNITS[workload], "subjects": summaries}
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = evaluate_targets(results)
    return results


# -- the targets ---------------------------------------------------------------


def _rounds(results: dict[str, Any], workload: str, subject: str) -> list[dict[str, Any]]:
    data = results["workloads"].get(workload, {}).get("subjects", {}).get(subject)
    return list(data["rounds"]) if data else []


def _cpu_per_op(round_: dict[str, Any]) -> float | None:
    """Server CPU seconds per operation (every run of a workload lasts as long)."""
    if "cpu_per_op" in round_:
        return round_["cpu_per_op"]  # type: ignore[no-any-return]
    cpu, value = round_.get("server_cpu"), round_.get("value")
    return cpu / value if cpu and value else None


def best_asyncio(
    rounds: dict[str, list[dict[str, Any]]], subjects: list[Subject], python: str
) -> list[dict[str, Any]] | None:
    """The reference rounds for a subject run by Python *python*: in each round, the best
    rate and the lowest server CPU per operation of asyncio's configurations on that
    Python (None when it ran none, as for the C server).

    A ratio to the best configuration in the same round is one that holds against every
    configuration, whichever state malloc happened to be in.
    """
    configs = [
        rounds[s.name]
        for s in subjects
        if s.asyncio_config and s.python == python and s.name in rounds
    ]
    if not python or not configs:
        return None
    best = []
    for measured in zip(*configs, strict=True):
        values = [r["value"] for r in measured if r.get("value")]
        costs = [cost for r in measured if (cost := _cpu_per_op(r))]
        best.append({
            "value": max(values) if values else None,
            "cpu_per_op": min(costs) if costs else None,
        })  # fmt: skip
    return best


def pair_ratio(
    results: dict[str, Any], workload: str, subject: str, other: str, key: str = "value"
) -> float | None:
    """Median over rounds of ``subject[key] / other[key]`` measured in the same round.

    ``key="cpu"`` compares the server CPU per operation, the other way round
    (``other``'s over ``subject``'s, so that higher is better here too): the fair
    figure where the load generator, not the server, set the pace.
    """
    pairs = zip(
        _rounds(results, workload, subject), _rounds(results, workload, other), strict=False
    )
    ratios = []
    for a, b in pairs:
        if key == "cpu":
            mine, theirs = _cpu_per_op(a), _cpu_per_op(b)
            if mine and theirs:
                ratios.append(theirs / mine)
        elif a.get(key) and b.get(key):
            ratios.append(a[key] / b[key])
    return statistics.median(ratios) if ratios else None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for ``asycamore echo``, checked against this run's medians."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, higher_is_better: bool = True) -> None:
        met = None if value is None else (value >= goal if higher_is_better else value <= goal)
        targets.append({"target": name, "value": value, "goal": goal, "met": met})

    # Issue 14: the pure-Python floor is the hand-written selectors loop.
    for workload, what in (
        ("pingpong", "ping-pong"),
        ("pingpong-idle", "ping-pong with 10,000 idle"),
        ("connrate", "connection rate"),
        ("connrate-idle", "connection rate with 10,000 idle"),
    ):
        add(
            f"{what}: epoll >= 0.97x the selectors loop",
            pair_ratio(results, workload, "asycamore-epoll", "selectors"),
            0.97,
        )
        add(
            f"{what}, by server CPU per op: epoll >= 0.97x the selectors loop",
            pair_ratio(results, workload, "asycamore-epoll", "selectors", key="cpu"),
            0.97,
        )
    add(
        "ping-pong with 10,000 idle: poll >= 0.97x a bare PollSelector loop",
        pair_ratio(results, "pingpong-idle", "asycamore-poll", "selectors-poll"),
        0.97,
    )
    return targets


def target_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the targets table."""
    rows: list[tuple[str, ...]] = [("target", "measured", "met")]
    for t in results.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:.2f}x"
        met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        rows.append((t["target"], value, met))
    return rows


def peer_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the peers table: asycamore on epoll against asyncio's best configuration
    and against uvloop, on each Python, by rate and by server CPU per operation."""
    rows: list[tuple[str, ...]] = [
        ("workload", "Python", "vs best asyncio", "by CPU/op", "vs uvloop", "by CPU/op")
    ]
    meta = results.get("subjects", {})
    for workload in PEER_WORKLOADS:
        data = results["workloads"].get(workload)
        if not data:
            continue
        for name, s in data["subjects"].items():
            base, _, version = name.partition("@")
            if base != "asycamore-epoll":
                continue
            uvloop = f"uvloop@{version}" if version else "uvloop"
            cells = [
                s.get("ratio"),
                s.get("cost_ratio"),
                pair_ratio(results, workload, name, uvloop),
                pair_ratio(results, workload, name, uvloop, key="cpu"),
            ]
            python = meta.get(name, {}).get("python", version or "?")
            rows.append((workload, python, *("-" if c is None else f"{c:.2f}x" for c in cells)))
    return rows if len(rows) > 1 else []


def machine_rst(results: dict[str, Any]) -> str:
    """A paragraph naming the machine and how busy it was."""
    m = results["machine"]
    pin = results["pinning"]
    pinning = (
        f"server pinned to CPU {pin['server_cpu']}, load generator to CPU {pin['generator_cpu']}"
        if pin["server_cpu"] is not None
        else "nothing pinned (one CPU)"
    )
    pythons = sorted({s["python"] for s in results.get("subjects", {}).values() if s["python"]})
    return (
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['platform']}, "
        f"{m['implementation']} {', '.join(pythons) or m['python']} (a subject without"
        f" ``@`` runs on {m['python']}); {pinning}; "
        f"load generator: {results['generator']}.  Load average (1, 5, 15 min) "
        f"{results['loadavg_before']} before the run, {results['loadavg_after']} after."
    )


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """JSON, text table, RST tables for the docs (``latest-table.rst``, and
    ``latest-peers.rst`` when asycamore ran beside its peers) and the plot, each replacing
    the last run's: git keeps the history, and a stale figure is not left beside a new
    one."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    (out / "latest.json").write_text(text)
    body = [results["provenance"], text_table(table_rows(results))]
    if peer_rows(results):
        body.append(text_table(peer_rows(results)))
    if results.get("targets"):
        body.append(text_table(target_rows(results)))
    if idle_rows(results):
        body.append(text_table(idle_rows(results)))
    (out / "latest.txt").write_text("\n\n".join(body) + "\n")
    rst = [results["provenance"].replace("`", "``"), ""]
    rst += [machine_rst(results), ""]
    if peer_rows(results):
        # Its own file, so that the page can show it first.
        peers = [*rst, rst_table(peer_rows(results))]
        (out / "latest-peers.rst").write_text("\n".join(peers) + "\n")
    else:
        (out / "latest-peers.rst").unlink(missing_ok=True)
    if results.get("targets"):
        rst += [
            "The issue's targets for ``asycamore echo``:",
            "",
            rst_table(target_rows(results)),
            "",
        ]
    rst += [f"note: {note}" for note in results["notes"]]
    rst += ["", "All workloads:", ""]
    rst.append(rst_table(table_rows(results)))
    if idle_rows(results):
        rst += [
            "",
            "Idle scaling, microseconds per dispatch (median):",
            "",
            rst_table(idle_rows(results)),
        ]
    (out / "latest-table.rst").write_text("\n".join(rst) + "\n")
    plot = out / "idle_scaling.png"
    if "idle" in results and plot_idle(results, plot):
        log(f"plot: {plot}")
    else:
        plot.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print the tables, save the results."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (1 round, short)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 3)")
    parser.add_argument("--seconds", type=float, help="measured seconds per echo run (default 2)")
    parser.add_argument("--idle-conns", type=int, help="idle connections in pingpong-idle (10000)")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        help=f"comma-separated workloads: {','.join(ALL_WORKLOADS)}; suites (only when"
        f" named): {','.join(SUITES)}",
    )
    parser.add_argument(
        "--subjects", type=lambda s: s.split(","), help="comma-separated subject names"
    )
    parser.add_argument(
        "--python-generator", action="store_true", help="do not use the C generator"
    )
    parser.add_argument(
        "--quiet-wait", type=float, help="max seconds to wait for idle CPUs before each run (20)"
    )
    parser.add_argument(
        "--retries", type=int, help="re-measure a run other processes disturbed (default 2)"
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PYTHON",
        help="also run asycamore echo (epoll) with this interpreter's install, as subject"
        " asycamore-epoll-baseline (an A/B of two installs, interleaved in one run)",
    )
    parser.add_argument(
        "--pythons",
        type=lambda s: tuple(s.split(",")),
        default=(),
        metavar="3.12,3.13",
        help="also run asycamore (epoll), asyncio and uvloop on these Pythons (versions found"
        f" on PATH, or paths) for {', '.join(PEER_WORKLOADS)}: each gets a venv, made once,"
        " with this tree installed (editable) and uvloop",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    suites = []
    if args.only:
        unknown = set(args.only) - set(ALL_WORKLOADS) - set(SUITES)
        if unknown:
            parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
        suites = [name for name in SUITES if name in args.only]
        args.only = [name for name in args.only if name not in SUITES]
    if args.quick and args.out == RESULTS:
        args.no_save = True
    if suites and not args.only:
        return run_suites(suites, args)
    try:
        args.pythons = tuple(bench_python(spec) for spec in args.pythons)
    except (ValueError, subprocess.CalledProcessError) as exc:
        parser.error(str(exc))
    results = run(args)
    print(text_table(table_rows(results)))
    if idle_rows(results):
        print("\nIdle scaling (median time per dispatch):")
        print(text_table(idle_rows(results)))
    if peer_rows(results):
        print("\nasycamore (epoll) against its peers on the same Python:")
        print(text_table(peer_rows(results)))
    if any(t["met"] is not None for t in results["targets"]):
        print("\nThe issue's targets:")
        print(text_table(target_rows(results)))
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"load average before/after: {results['loadavg_before']} / {results['loadavg_after']}")
    if not args.no_save:
        write_outputs(results, args.out)
        log(f"results written to {args.out}")
    return run_suites(suites, args) if suites else 0


def run_suites(names: list[str], args: argparse.Namespace) -> int:
    """Run the named suite scripts one after the other, with this run's ``--rounds`` and
    ``--no-save`` (which ``--quick`` implies)."""
    status = 0
    for name in names:
        script, what = SUITES[name]
        command = [sys.executable, str(Path(__file__).with_name(script))]
        if args.rounds is not None:
            command += ["--rounds", str(args.rounds)]
        if args.no_save and name != "aio":  # aio_bench.py writes only with --out
            command.append("--no-save")
        log(f"suite {name}: {what}")
        status = max(status, subprocess.run(command, check=False).returncode)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
