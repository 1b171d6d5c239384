"""asycamore.aio's benchmark: the cost of each direction of the asyncio integration.

    python benchmarks/aio_bench.py                 # 3 rounds x 2 s, pingpong and bulk
    python benchmarks/aio_bench.py --quick         # a smoke run
    python benchmarks/aio_bench.py --rounds 5 --seconds 3 --out results/aio.json

Subjects (echo servers, loopback, each in its own process pinned like run.py's):

``asyncio``            asyncio_echo.py's ``asyncio.Protocol`` server, stock loop
``aio-loop-epoll``     the same server, unchanged, on ``aio.new_event_loop("epoll")``
``uvloop``             the same server on uvloop (when installed)
``asyncio-buffered``   asyncio_echo.py ``--buffered`` (a BufferedProtocol), stock loop
``aio-loop-epoll-buffered``  the same on ``aio.new_event_loop("epoll")``
``asycamore-epoll``    ``asycamore echo --backend epoll``, standalone
``aio-serve-epoll``    ``asycamore echo``'s protocol in a Service hosted by ``aio.serve``
                       on a stock asyncio loop

Targets (issue 12): ``aio-loop-epoll`` >= 0.95x ``asyncio`` (and the same for the
BufferedProtocol pair, which does not allocate per read); ``aio-serve-epoll`` >= 0.9x
``asycamore-epoll``.  Each is shown as a rate ratio and as a ratio of server CPU per
operation (the robust one on a shared machine), both medians over rounds of values
measured in the same round (rounds interleave the subjects).  It reuses run.py's load
generator (C when gcc exists), pinning, quiet-CPU wait and per-round measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # benchmarks/run.py, next to this file

from asycamore import bench

SERVERS = suite.SERVERS
WORKLOADS = ("pingpong", "bulk")
TARGETS = (
    ("aio-loop-epoll", "asyncio", 0.95),
    ("aio-loop-epoll-buffered", "asyncio-buffered", 0.95),
    ("aio-serve-epoll", "asycamore-epoll", 0.90),
)


def subjects() -> list[suite.Subject]:
    """The servers compared (uvloop only when importable)."""
    py = sys.executable
    out = [
        suite.Subject("asyncio", [py, str(SERVERS / "asyncio_echo.py")]),
        suite.Subject(
            "aio-loop-epoll",
            [py, str(SERVERS / "aio_echo.py"), "--mode", "loop", "--backend", "epoll"],
        ),
        suite.Subject("asyncio-buffered", [py, str(SERVERS / "asyncio_echo.py"), "--buffered"]),
        suite.Subject(
            "aio-loop-epoll-buffered",
            [
                py,
                str(SERVERS / "aio_echo.py"),
                "--mode",
                "loop",
                "--backend",
                "epoll",
                "--buffered",
            ],
        ),
        suite.Subject("asycamore-epoll", bench.asycamore_echo_command("epoll")),
        suite.Subject(
            "aio-serve-epoll",
            [py, str(SERVERS / "aio_echo.py"), "--mode", "serve", "--backend", "epoll"],
        ),
    ]
    if suite._importable("uvloop"):
        out.insert(2, suite.Subject("uvloop", [py, str(SERVERS / "asyncio_echo.py"), "--uvloop"]))
    return out


def ratio(rounds: dict[str, list[dict[str, Any]]], subject: str, reference: str) -> float | None:
    """Median over rounds of subject/reference, each pair measured in the same round."""
    pairs = [
        a["value"] / b["value"]
        for a, b in zip(rounds.get(subject, []), rounds.get(reference, []), strict=False)
        if a.get("value") and b.get("value")
    ]
    return statistics.median(pairs) if pairs else None


def cpu_ratio(
    rounds: dict[str, list[dict[str, Any]]], subject: str, reference: str
) -> float | None:
    """Median over rounds of the reference's server CPU per operation over the
    subject's (> 1: the subject needs less CPU per operation).

    On a shared machine the server often gets less than a whole CPU, and then its rate
    says more about the neighbours than about the server; the CPU it spent per
    operation does not.
    """

    def per_op(result: dict[str, Any]) -> float | None:
        cpu, value = result.get("server_cpu"), result.get("value")
        return cpu / value if cpu and value else None

    pairs = []
    for a, b in zip(rounds.get(subject, []), rounds.get(reference, []), strict=False):
        mine, theirs = per_op(a), per_op(b)
        if mine and theirs:
            pairs.append(theirs / mine)
    return statistics.median(pairs) if pairs else None


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print a table and the target ratios; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--quiet-wait", type=float, help="seconds to wait for idle CPUs before a measurement"
    )
    args = parser.parse_args(argv)
    cfg = suite.QUICK if args.quick else suite.FULL
    if args.rounds:
        cfg.rounds = args.rounds
    if args.seconds:
        cfg.seconds = args.seconds
    if args.quiet_wait is not None:
        cfg.quiet_wait = args.quiet_wait
    workloads = [w for w in WORKLOADS if w in args.only.split(",")]
    bench.raise_nofile_limit()
    cpus = bench.cpu_layout()
    loadgen = suite.compile_c("loadgen")
    servers = subjects()
    doc: dict[str, Any] = {
        "machine": bench.machine_info(),
        "generator": "c" if loadgen is not None else "python",
        "config": {"rounds": cfg.rounds, "seconds": cfg.seconds},
        "command": " ".join(["aio_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "workloads": {},
    }
    for workload in workloads:
        rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        for number in range(cfg.rounds):
            for server in servers:
                suite.log(f"[{workload} {number + 1}/{cfg.rounds}] {server.name} ...")
                suite.wait_quiet(cpus, cfg.quiet_wait)
                result = suite.measure_echo(server, workload, cfg, loadgen, cpus)
                rounds[server.name].append(result)
                suite.log(
                    f"    {result['value']:,.1f} {suite.UNITS[workload]}"
                    f"  server CPU {result.get('server_cpu') or 0:.0%}"
                    f"  generator CPU {result['generator_cpu']:.0%}"
                )
        doc["workloads"][workload] = {
            "unit": suite.UNITS[workload],
            "medians": {
                name: statistics.median(r["value"] for r in results)
                for name, results in rounds.items()
            },
            "targets": [
                {
                    "subject": s,
                    "reference": ref,
                    "goal": goal,
                    "ratio": ratio(rounds, s, ref),
                    "cpu_ratio": cpu_ratio(rounds, s, ref),
                }
                for s, ref, goal in TARGETS
            ],
            "vs_asyncio": {name: ratio(rounds, name, "asyncio") for name in rounds},
            "rounds": {
                name: [{k: r.get(k) for k in ("value", "server_cpu", "generator_cpu")} for r in rs]
                for name, rs in rounds.items()
            },
        }
    for workload, data in doc["workloads"].items():
        print(f"\n{workload} ({data['unit']}, median of {cfg.rounds} rounds)")
        for name, value in data["medians"].items():
            vs = data["vs_asyncio"][name]
            print(f"  {name:18} {value:>14,.1f}   {vs:.2f}x asyncio" if vs else f"  {name}")
        for target in data["targets"]:
            shown = []
            for key, label in (("ratio", "rate"), ("cpu_ratio", "CPU per op")):
                got = target[key]
                verdict = "n/a" if got is None else ("met" if got >= target["goal"] else "MISSED")
                shown.append(f"{label} {'-' if got is None else f'{got:.3f}'} ({verdict})")
            print(
                f"  target {target['subject']} / {target['reference']} >= {target['goal']}: "
                + ", ".join(shown)
            )
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
