"""Profile ``asycamore echo`` (or any Python echo server) under the C load generator.

    python benchmarks/profile_echo.py --backend epoll --workload pingpong
    python benchmarks/profile_echo.py --backend poll --workload pingpong-idle
    python benchmarks/profile_echo.py --server benchmarks/servers/selectors_echo.py

The server runs under :mod:`cProfile` in its own process (pinned like in ``run.py``), the
generator drives it for ``--seconds``, the server is stopped with SIGTERM and the profile
is printed: functions by own time and by cumulative time, plus the server's CPU cost per
operation measured without the profiler in a second run (cProfile inflates Python-level
costs; the unprofiled cost is the one to compare with the peers).
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
import tempfile
from pathlib import Path

from asycamore.bench import harness

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # benchmarks/run.py, next to this file


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", default="epoll", help="asycamore backend (default epoll)")
    parser.add_argument("--server", help="a Python echo server script instead of asycamore")
    parser.add_argument("--workload", default="pingpong", choices=run.ECHO_WORKLOADS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--idle-conns", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=25, help="rows per listing")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)

    harness.raise_nofile_limit()
    loadgen = run.compile_c("loadgen")
    cfg = run.Config(**(vars(run.FULL) | {"seconds": args.seconds, "idle_conns": args.idle_conns}))
    cpus = harness.cpu_layout()
    if args.server:
        target = [args.server]
        name = Path(args.server).stem
    else:
        target = ["-m", "asycamore", "echo", "--backend", args.backend, "--port", "0"]
        name = f"asycamore-{args.backend}"

    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "echo.prof"
        profiled = run.Subject(name, [sys.executable, "-m", "cProfile", "-o", str(prof), *target])
        plain = run.Subject(name, [sys.executable, *target])
        base = run.measure_echo(plain, args.workload, cfg, loadgen, cpus)
        under = run.measure_echo(profiled, args.workload, cfg, loadgen, cpus)
        out = io.StringIO()
        unit = run.UNITS[args.workload]
        print(f"{name} {args.workload}: {base['value']:,.1f} {unit} unprofiled, "
              f"server CPU {base['server_cpu']:.0%}, generator CPU {base['generator_cpu']:.0%}",
              file=out)  # fmt: skip
        if base["value"] and base.get("server_cpu"):
            per_op = base["server_cpu"] / base["value"]
            print(f"server CPU per operation (unprofiled): {per_op * 1e6:.2f} us", file=out)
        print(f"under cProfile: {under['value']:,.1f} {unit}\n", file=out)
        stats = pstats.Stats(str(prof), stream=out)
        stats.strip_dirs()
        total_calls = stats.total_calls  # type: ignore[attr-defined]
        ops = (under["value"] or 0) * cfg.seconds
        print(f"{total_calls} Python calls; about {total_calls / max(ops, 1):.1f} per operation "
              "(warm-up and start-up included)\n", file=out)  # fmt: skip
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    report = out.getvalue()
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
