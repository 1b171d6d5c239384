"""Why the same asyncio echo server costs four times more CPU in one process than in another.

    python benchmarks/asyncio_cause.py                     # 3.11, 3.12, 3.13: about 2 minutes
    python benchmarks/asyncio_cause.py --pythons 3.12 --rounds 1 --no-save

asyncio's plain ``Protocol`` reads with ``recv(256 KiB)`` and shrinks the result to what
arrived.  glibc's malloc serves a request over its mmap threshold (128 KiB when a process
starts) with ``mmap``, and raises the threshold to a block's size the first time the
process frees such a block (``mallopt(3)``, ``M_MMAP_THRESHOLD``).  So in a process that
has never freed a block over 128 KiB, every read costs an ``mmap``, an ``mremap``, a
``munmap`` and a page fault; once anything frees one (a big file read, a large JSON
document), reads come from the heap and cost nothing of the kind.

This measures it, on each Python named, for three configurations of
``benchmarks/servers/asyncio_echo.py`` under ``run.py``'s ping-pong load (the C generator,
64 connections x 64-byte messages, server and generator pinned to their own CPUs):

plain
    the plain Protocol as a fresh process starts it;
tuned
    the same with ``GLIBC_TUNABLES`` raising the mmap and trim thresholds, where a process
    that has freed one big block already is (``run.py``'s ``asyncio-tuned``);
buffered
    ``asyncio.BufferedProtocol`` reading into one preallocated buffer.

Columns: messages/s, server CPU per message, minor page faults per message (from
``/proc``), and, where ``strace`` is installed, the memory system calls per ``recvfrom``
in a separate traced run (tracing slows the server, not what each read calls).  Writes
``benchmarks/results/asyncio_cause.txt`` and ``.json``.  Linux with glibc only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import run  # benchmarks/run.py, beside this file

from asycamore.bench import harness
from asycamore.bench.programs import MALLOC_TUNED
from asycamore.tables import text_table

CONFIGS: dict[str, tuple[list[str], dict[str, str] | None]] = {
    "plain": ([], None),
    "tuned": ([], MALLOC_TUNED),
    "buffered": (["--buffered"], None),
}
MEMORY_CALLS = ("mmap", "mremap", "munmap", "brk")


def minor_faults(pid: int) -> int:
    """Minor page faults of process *pid* so far (``/proc/PID/stat``, field 10)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[7])


class FaultCountingServer(harness.ServerProcess):
    """A server whose minor faults are sampled whenever its CPU time is: ``run_loadgen``
    samples that at the start and the end of the measured window, so the two samples
    bracket exactly the messages the generator counted."""

    def __init__(self, command: list[str], cpu: int | None, env: dict[str, str] | None) -> None:
        super().__init__(command, cpu, env)
        self.faults: list[int] = []

    def cpu_seconds(self) -> float | None:
        """CPU seconds so far; records the fault count at the same moment."""
        self.faults.append(minor_faults(self.pid))
        return super().cpu_seconds()


def measure(
    python: str, config: str, seconds: float, loadgen: Path, cpus: tuple[int | None, ...]
) -> dict[str, float]:
    """One ping-pong run: rate, server CPU and minor faults per message."""
    extra, env = CONFIGS[config]
    command = [python, str(run.SERVERS / "asyncio_echo.py"), *extra]
    with FaultCountingServer(command, cpu=cpus[0], env=env) as server:
        generator = [
            str(loadgen), "--port", str(server.port), "--mode", "pingpong", "--conns", "64",
            "--size", "64", "--seconds", str(seconds), "--warmup", "0.5",
        ]  # fmt: skip
        result = harness.run_loadgen(generator, server, cpu=cpus[1], timeout=60 + seconds)
    count = result.rate * result.wall
    return {
        "rate": result.rate,
        "cpu_us": (result.server_cpu or 0.0) / result.rate * 1e6,
        "faults": (server.faults[-1] - server.faults[0]) / count,
    }


def traced_calls(
    python: str, config: str, loadgen: Path, cpus: tuple[int | None, ...]
) -> dict[str, float] | None:
    """Memory system calls per ``recvfrom`` over one second of load, under ``strace -c``."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    extra, env = CONFIGS[config]
    command = [python, str(run.SERVERS / "asyncio_echo.py"), *extra]
    with harness.ServerProcess(command, cpu=cpus[0], env=env) as server:
        generator = [
            str(loadgen), "--port", str(server.port), "--mode", "pingpong", "--conns", "64",
            "--size", "64", "--seconds", "1.5", "--warmup", "0.2",
        ]  # fmt: skip
        load = harness.spawn(generator, cpus[1])
        time.sleep(0.4)
        trace = subprocess.run(
            ["timeout", "-s", "INT", "1", strace, "-c", "-f", "-p", str(server.pid),
             "-e", "trace=recvfrom," + ",".join(MEMORY_CALLS)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        harness.terminate(load)
    calls = {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$",
                             trace.stderr, re.MULTILINE)
    }  # fmt: skip
    reads = calls.get("recvfrom", 0)
    if not reads:
        return None
    return {name: calls.get(name, 0) / reads for name in MEMORY_CALLS}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, measure, print and save the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--pythons", default="3.11,3.12,3.13", help="versions or paths")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds (2)")
    parser.add_argument("--out", type=Path, default=run.RESULTS, help="results directory")
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("asyncio_cause: skipped: needs Linux (glibc's malloc, /proc)")
        return 0
    loadgen = run.compile_c("loadgen")
    if loadgen is None:
        print("asyncio_cause: skipped: needs gcc to build benchmarks/c/loadgen.c")
        return 0
    pythons: dict[str, str] = {}
    for spec in args.pythons.split(","):
        try:
            found = run.find_python(spec)
        except ValueError as exc:
            parser.error(str(exc))
        pythons[run.python_version(found)] = found
    cpus = harness.cpu_layout()
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    for number in range(args.rounds):
        for version, python in pythons.items():
            for config in CONFIGS:
                run.log(f"[round {number + 1}/{args.rounds}] Python {version} {config} ...")
                run.wait_quiet(cpus, 20.0)
                one = measure(python, config, args.seconds, loadgen, cpus)
                rounds.setdefault((version, config), []).append(one)
    rows: list[tuple[str, ...]] = [
        ("Python", "server", "msgs/s", "CPU us/msg", "minor faults/msg",
         *(f"{name}/read" for name in MEMORY_CALLS)),
    ]  # fmt: skip
    document: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": harness.machine_info(),
        "libc": " ".join(os.confstr("CS_GNU_LIBC_VERSION").split()),
        "provenance": harness.provenance(),
        "rounds": {f"{v} {c}": r for (v, c), r in rounds.items()},
        "traced": {},
    }
    for (version, config), measured in rounds.items():
        calls = traced_calls(pythons[version], config, loadgen, cpus)
        document["traced"][f"{version} {config}"] = calls
        median = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
        traced = ["-"] * len(MEMORY_CALLS) if calls is None else [
            f"{calls[name]:.2f}" for name in MEMORY_CALLS
        ]  # fmt: skip
        rows.append((version, config, f"{median['rate']:,.0f}", f"{median['cpu_us']:.1f}",
                     f"{median['faults']:.2f}", *traced))  # fmt: skip
    table = text_table(rows)
    header = (
        f"{document['provenance']}\n{document['libc']}; server CPU and faults per message"
        f" are medians of {args.rounds} interleaved rounds; calls per read from one traced run."
    )
    print(header)
    print(table)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "asyncio_cause.json").write_text(json.dumps(document, indent=1))
        (args.out / "asyncio_cause.txt").write_text(f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
