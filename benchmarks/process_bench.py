"""Child processes: pipe throughput through ``cat`` and the spawn rate of ``/bin/true``,
asycamore (``Service.spawn`` on epoll) against asyncio's subprocess transport on the
stock loop and on uvloop, in the same run.

    python benchmarks/process_bench.py                      # 1024 MB, 400 spawns, 5 rounds
    python benchmarks/process_bench.py --mb 256 --spawns 200 --rounds 3

The tables are printed and written to ``benchmarks/results/process_bench.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere), under a line saying when, with what command
and on what machine and Python they were measured.

Workloads, each at the protocol level (``ProcessProtocol`` / ``SubprocessProtocol``):

throughput
    spawn ``cat``, write *mb* MB to its stdin (a 256 KiB block, again and again, while
    the stdin transport is not paused: ``pause_writing``/``resume_writing``), read its
    stdout until EOF, and count the bytes; MB/s from the spawn to the exit, all output
    read.  The CPU time of the loop's process per GB is the steadier figure on a shared
    machine (``cat`` runs on the other CPU).
spawn
    spawn ``/bin/true`` (stdin, stdout and stderr pipes, the default), wait until its
    exit has been seen and its pipes have closed, then the next one: children per
    second, at most *spawns* of them and at most *seconds* seconds.

Each subject runs in a fresh interpreter (``--child``); rounds are interleaved (the
order of the subjects rotates from round to round) and the median is reported, with the
spread, and the ratio to the better median of asyncio's two configurations: ``asyncio``
as a fresh interpreter runs it, and ``asyncio-tuned``, with glibc's malloc thresholds
raised (asyncio reads pipes with ``os.read(256 KiB)``; see
``asycamore.bench.programs.MALLOC_TUNED``).  A subject whose loop is not importable
(uvloop) is skipped with a line saying so.  Every loop is bounded by count and by time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import report_file  # benchmarks/report_file.py, beside this file

HERE = Path(__file__).resolve()
BLOCK = memoryview(os.urandom(256 * 1024))
SUBJECTS = ("asycamore-epoll", "asyncio", "asyncio-tuned", "uvloop")
# asyncio reads a pipe with os.read(256 KiB): see asycamore.bench.programs.MALLOC_TUNED.
ASYNCIO_CONFIGS = ("asyncio", "asyncio-tuned")
"""The ratios are to the better of these."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the workloads, on asycamore ---------------------------------------------------------


def _asycamore(workload: str, mb: int, spawns: int, seconds: float) -> dict[str, float]:
    from asycamore.servicemodel import ProcessProtocol, Service

    with Service("epoll") as service:
        if workload == "throughput":
            total = mb * 1_000_000

            class Cat(ProcessProtocol):
                def __init__(self) -> None:
                    super().__init__()
                    self.left, self.received, self.paused, self.open = total, 0, False, 3

                def connection_made(self, process: Any) -> None:
                    super().connection_made(process)
                    self.stdin = process.get_pipe_transport(0)
                    self.pump()

                def pump(self) -> None:
                    while not self.paused and self.left > 0:
                        chunk = BLOCK[: min(self.left, len(BLOCK))]
                        self.left -= len(chunk)
                        self.stdin.write(chunk)
                    if self.left == 0 and not self.paused:
                        self.left = -1
                        self.stdin.write_eof()

                def pause_writing(self) -> None:
                    self.paused = True

                def resume_writing(self) -> None:
                    self.paused = False
                    self.pump()

                def pipe_data_received(self, fd: int, data: bytes) -> None:
                    self.received += len(data)

                def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
                    self.open -= 1
                    self.check()

                def process_exited(self) -> None:
                    self.check()

                def check(self) -> None:
                    process = self.process
                    if self.open == 0 and process is not None and process.returncode is not None:
                        service.stop()

            cpu, started = _cpu(), time.perf_counter()
            process = service.spawn(Cat, ["cat"])
            watchdog = service.call_later(max(seconds, 1.0) * 10, service.stop)
            service.serve_forever()
            watchdog.cancel()
            elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
            received = process.protocol.received  # type: ignore[attr-defined]
            return {"bytes": received, "seconds": elapsed, "cpu": cpu}

        done = [0]
        deadline = time.perf_counter() + seconds

        class True_(ProcessProtocol):
            def __init__(self) -> None:
                super().__init__()
                self.open = 3

            def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
                self.open -= 1
                self.check()

            def process_exited(self) -> None:
                self.check()

            def check(self) -> None:
                assert self.process is not None
                if self.open == 0 and self.process.returncode is not None:
                    done[0] += 1
                    if done[0] < spawns and time.perf_counter() < deadline:
                        service.spawn(True_, ["/bin/true"])
                    else:
                        service.stop()

        cpu, started = _cpu(), time.perf_counter()
        service.spawn(True_, ["/bin/true"])
        watchdog = service.call_later(seconds * 2 + 5, service.stop)
        service.serve_forever()
        watchdog.cancel()
        return {"count": done[0], "seconds": time.perf_counter() - started, "cpu": _cpu() - cpu}


# -- the workloads, on asyncio (stock loop or uvloop) ------------------------------------


async def _asyncio(workload: str, mb: int, spawns: int, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    if workload == "throughput":
        total = mb * 1_000_000
        finished = loop.create_future()

        class Cat(asyncio.SubprocessProtocol):
            def __init__(self) -> None:
                self.left, self.received, self.paused = total, 0, False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.SubprocessTransport = transport  # type: ignore[assignment]
                self.stdin: Any = self.transport.get_pipe_transport(0)
                self.pump()

            def pump(self) -> None:
                while not self.paused and self.left > 0:
                    chunk = BLOCK[: min(self.left, len(BLOCK))]
                    self.left -= len(chunk)
                    self.stdin.write(chunk)
                if self.left == 0 and not self.paused:
                    self.left = -1
                    self.stdin.write_eof()

            def pause_writing(self) -> None:
                self.paused = True

            def resume_writing(self) -> None:
                self.paused = False
                self.pump()

            def pipe_data_received(self, fd: int, data: bytes) -> None:
                self.received += len(data)

            def connection_lost(self, exc: Exception | None) -> None:  # exited, pipes closed
                if not finished.done():
                    finished.set_result(None)

        cpu, started = _cpu(), time.perf_counter()
        transport, protocol = await loop.subprocess_exec(Cat, "cat")
        await asyncio.wait_for(finished, max(seconds, 1.0) * 10)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        transport.close()
        return {"bytes": protocol.received, "seconds": elapsed, "cpu": cpu}

    class True_(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.finished = loop.create_future()

        def connection_lost(self, exc: Exception | None) -> None:
            self.finished.set_result(None)

    count = 0
    deadline = time.perf_counter() + seconds
    cpu, started = _cpu(), time.perf_counter()
    while count < spawns and time.perf_counter() < deadline:
        child, watcher = await loop.subprocess_exec(True_, "/bin/true")
        await asyncio.wait_for(watcher.finished, 30)
        child.close()
        count += 1
    return {"count": count, "seconds": time.perf_counter() - started, "cpu": _cpu() - cpu}


def _child(subject: str, workload: str, mb: int, spawns: int, seconds: float) -> int:
    if subject == "asycamore-epoll":
        result = _asycamore(workload, mb, spawns, seconds)
    elif subject == "uvloop":
        import uvloop

        result = uvloop.run(_asyncio(workload, mb, spawns, seconds))  # type: ignore[attr-defined,unused-ignore]
    else:
        result = asyncio.run(_asyncio(workload, mb, spawns, seconds))
    print(json.dumps(result))
    return 0


# -- the driver ------------------------------------------------------------------------


def _run_child(
    subject: str, workload: str, mb: int, spawns: int, seconds: float
) -> dict[str, float]:
    command = [sys.executable, str(HERE), "--child", subject, "--workload", workload]
    command += ["--mb", str(mb), "--spawns", str(spawns), "--seconds", str(seconds)]
    limit = seconds * 3 + 60 + (mb / 20 if workload == "throughput" else 0)
    env = None
    if subject == "asyncio-tuned":
        from asycamore.bench.programs import MALLOC_TUNED

        env = {**os.environ, **MALLOC_TUNED}
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=limit, check=False, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{subject} {workload} failed: {proc.stderr.strip()[-1000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _table(
    title: str,
    unit: str,
    cpu_unit: str,
    rows: dict[str, list[tuple[float, float]]],
) -> list[str]:
    header = f"{'subject':<17}{unit:>12}{'spread':>22}{cpu_unit:>14}{'vs best asyncio':>17}"
    bases = [statistics.median(v for v, _ in rows[s]) for s in ASYNCIO_CONFIGS if s in rows]
    base = max(bases, default=None)
    lines = [title, header]
    for subject, values in rows.items():
        rates = [v for v, _ in values]
        median = statistics.median(rates)
        cpu = statistics.median(c for _, c in values)
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        ratio = f"{median / base:.2f}x" if base else "-"
        lines.append(f"{subject:<17}{median:>12,.0f}{spread:>22}{cpu:>14.2f}{ratio:>17}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="MB through cat per round")
    parser.add_argument("--spawns", type=int, default=400, help="at most this many children")
    parser.add_argument("--seconds", type=float, default=10.0, help="time bound per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="throughput,spawn", help="workloads, comma-separated")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    report_file.add_arguments(parser, "process_bench.txt")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.workload, args.mb, args.spawns, args.seconds)
    # Here, not at the top: the asyncio and uvloop children run this file and import no
    # asycamore.
    from asycamore.bench import harness

    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    lines: list[str] = []
    subjects = [s for s in args.subjects.split(",") if s]
    if "uvloop" in subjects and importlib.util.find_spec("uvloop") is None:
        lines.append("uvloop: skipped (not installed: pip install uvloop)")
        subjects.remove("uvloop")
    workloads = [w for w in args.only.split(",") if w]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {w: {} for w in workloads}
    short: list[str] = []  # throughput runs that did not get every byte back
    for round_ in range(args.rounds):
        shift = round_ % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            for workload in workloads:
                r = _run_child(subject, workload, args.mb, args.spawns, args.seconds)
                if workload == "throughput":
                    if r["bytes"] != args.mb * 1_000_000:
                        short.append(f"{subject} (round {round_ + 1}): {r['bytes']:,} bytes")
                    value, cpu = r["bytes"] / 1e6 / r["seconds"], r["cpu"] / (r["bytes"] / 1e9)
                else:
                    value, cpu = r["count"] / r["seconds"], r["cpu"] / r["count"] * 1e6
                results[workload].setdefault(subject, []).append((value, cpu))
    tables: dict[str, Callable[[], list[str]]] = {
        "throughput": lambda: _table(
            f"throughput: {args.mb} MB through cat, {args.rounds} rounds (median)",
            "MB/s",
            "CPU s/GB",
            results["throughput"],
        ),
        "spawn": lambda: _table(
            f"spawn: /bin/true, up to {args.spawns} children or {args.seconds:g} s, "
            f"{args.rounds} rounds (median)",
            "children/s",
            "CPU us/child",
            results["spawn"],
        ),
    }
    for workload in workloads:
        lines += [*tables[workload](), ""]
    if short:
        lines.append(f"short of {args.mb * 1_000_000:,} bytes: " + "; ".join(short))
    report = "\n".join([provenance, "", *lines]).rstrip()
    print(report)
    report_file.save(args, report)
    return 1 if any(line.startswith("asycamore") for line in short) else 0


if __name__ == "__main__":
    sys.exit(main())
