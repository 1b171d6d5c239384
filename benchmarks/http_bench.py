"""HTTP benchmark: an unmodified aiohttp application under ``wrk``, on asyncio, asycamore
and uvloop, in the same run.

    python benchmarks/http_bench.py                  # 3 rounds x 5 s, 64 connections
    python benchmarks/http_bench.py --quick          # a smoke run: 1 round x 1 s, 8 connections
    python benchmarks/http_bench.py --rounds 5 --seconds 10 --conns 128

The server is ``servers/aiohttp_hello.py``: a plain aiohttp "Hello, World!" application
(access log off), the same code on every loop.  Subjects:

``asyncio``          the stock loop, ``asyncio.new_event_loop()``
``asycamore-epoll``  ``asycamore.aio.new_event_loop("epoll")`` (where there is no epoll,
                     the factory's best backend, and the subject is named after it)
``uvloop``           ``uvloop.new_event_loop()``, when importable

The load generator is ``wrk`` (C, one thread):
``wrk -t1 -cCONNS -dSECONDSs --latency --timeout 5s http://HOST:PORT/``.  The server is
pinned to one CPU and wrk to another where there are two or more (as run.py's echo
runs are).  Rounds are interleaved: each round runs every subject in turn (the order
rotates from round to round), each on a fresh server that first gets an unmeasured
1-second wrk warm-up.  The server's CPU time is read from /proc just before and just
after the measured wrk run: its CPU share (near 100%: the server set the pace) and its
CPU microseconds per request, the steadier figure on a shared machine.

The table shows medians over rounds with the min-max spread of req/s, the ratio to
asyncio (the median of the ratios to asyncio's run in the same round), the server's CPU
and wrk's latency percentiles.  A run with socket errors or non-2xx/3xx responses is
still counted, and the notes column says so for that round; a run whose server did not
start, died or never answered, or whose wrk failed, is marked failed (one line on
stderr, and in the notes), left out of the medians, and makes the exit status 1.

The report (a line saying when, with what command and on what machine and Python it was
measured, the aiohttp, uvloop and wrk versions, then the table) is printed and written
to ``benchmarks/results/http_bench.txt``, and every run's figures to ``http_bench.json``
(``--out DIR`` elsewhere, ``--no-save`` nowhere; ``--quick`` writes files only with
``--out``).  Without wrk or aiohttp this prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asycamore.bench import harness
from asycamore.factory import best_backend, list_backends
from asycamore.tables import text_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SERVER = HERE / "servers" / "aiohttp_hello.py"

DEFAULTS = {"rounds": 3, "seconds": 5, "conns": 64}
QUICK = {"rounds": 1, "seconds": 1, "conns": 8}
WARMUP_SECONDS = 1
PERCENTILES = ("50", "75", "90", "99")
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
# wrk picks the unit of each latency itself ("808.00us", then "0.93ms"): us, ms or s.
_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_PERCENTILE_LINE = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_SOCKET_ERRORS_LINE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def log(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


class RunFailed(Exception):
    """A run that measured nothing; its message is one line saying why."""


def one_line(text: str, limit: int = 200) -> str:
    """The last non-empty line of *text* (where a traceback says what went wrong), cut
    to *limit* characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else "(no output)"
    return last if len(last) <= limit else last[: limit - 3] + "..."


# -- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests_per_second: float
    requests: int
    latency_ms: dict[str, float]
    """Latency percentiles ("50", "75", "90", "99") in milliseconds."""
    socket_errors: dict[str, int]
    non_2xx_3xx: int

    def problems(self) -> str:
        """The run's socket errors and non-2xx/3xx responses in words ("" if none)."""
        found = []
        errors = {kind: count for kind, count in self.socket_errors.items() if count}
        if errors:
            found.append(
                "socket errors: " + ", ".join(f"{kind} {n:,}" for kind, n in errors.items())
            )
        if self.non_2xx_3xx:
            found.append(f"{self.non_2xx_3xx:,} non-2xx/3xx responses")
        return ", ".join(found)


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of ``wrk --latency``; ValueError when a figure is missing.

    wrk prints the "Socket errors" and "Non-2xx or 3xx responses" lines only when
    there were some: their absence means zero.
    """
    rate = re.search(r"^Requests/sec:\s+([\d.]+)\s*$", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", text, re.MULTILINE)
    latency = {
        percent: round(float(value) * _TO_MS[unit], 6)
        for percent, value, unit in _PERCENTILE_LINE.findall(text)
    }
    if rate is None or total is None or not set(PERCENTILES) <= set(latency):
        raise ValueError(f"unexpected wrk output: {one_line(text)!r}")
    errors = _SOCKET_ERRORS_LINE.search(text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        requests=int(total.group(1)),
        latency_ms={p: latency[p] for p in PERCENTILES},
        socket_errors={
            kind: int(errors.group(i)) if errors else 0 for i, kind in enumerate(SOCKET_ERRORS, 1)
        },
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(url: str, conns: int, seconds: int) -> list[str]:
    """The wrk command line of a run: one thread, *conns* connections, *seconds* long."""
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s", url]


def run_wrk(url: str, conns: int, seconds: int, cpu: int | None) -> str:
    """Run wrk (pinned to *cpu*) against *url* and return its output; RunFailed when it
    fails or overruns its time by half a minute."""
    limit = seconds + 30
    try:
        proc = harness.spawn(wrk_command(url, conns, seconds), cpu)
    except OSError as exc:
        raise RunFailed(f"wrk did not start: {exc}") from None
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"wrk did not finish within {limit} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        raise RunFailed(f"wrk exited with status {proc.returncode}: {one_line(err or out)}")
    return out


def wrk_version() -> str:
    """The first line of ``wrk --version`` (which prints its usage after it)."""
    proc = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    lines = (proc.stdout or proc.stderr).splitlines()
    return lines[0].strip() if lines else "unknown"


# -- the runs ----------------------------------------------------------------------------


def subjects() -> tuple[dict[str, list[str]], list[str]]:
    """The servers compared (name: command), and notes on any left out."""
    server = [sys.executable, str(SERVER)]
    available = {info.name for info in list_backends() if info.available}
    backend = "epoll" if "epoll" in available else best_backend()
    found = {
        "asyncio": [*server, "--loop", "asyncio"],
        f"asycamore-{backend}": [*server, "--loop", "asycamore", "--backend", backend],
    }
    notes = []
    if importlib.util.find_spec("uvloop") is None:
        notes.append("uvloop: skipped (not installed: pip install uvloop)")
    else:
        found["uvloop"] = [*server, "--loop", "uvloop"]
    return found, notes


def _raise_if_exited(server: harness.ServerProcess) -> None:
    """RunFailed when *server* is no longer running (what it said last, if anything)."""
    if not server.alive():
        said = server.proc.stderr.read() if server.proc.stderr else ""
        raise RunFailed(
            f"the server exited with status {server.proc.returncode}: {one_line(said)}"
        )


def _wrk_against(server: harness.ServerProcess, conns: int, seconds: int, cpu: int | None) -> str:
    """run_wrk against *server*; when the server died, that is the failure reported."""
    url = f"http://{server.host}:{server.port}/"
    try:
        out = run_wrk(url, conns, seconds, cpu)
    except RunFailed:
        _raise_if_exited(server)
        raise
    _raise_if_exited(server)
    return out


def measure(
    command: list[str], conns: int, seconds: int, cpus: tuple[int | None, int | None]
) -> dict[str, Any]:
    """One run on a fresh server: the warm-up, then the measured wrk run with the
    server's CPU time read just before and after it; RunFailed when nothing was measured."""
    try:
        server = harness.ServerProcess(command, cpus[0])
    except (RuntimeError, ValueError, OSError) as exc:
        raise RunFailed(f"the server did not start: {one_line(str(exc))}") from None
    with server:
        _wrk_against(server, conns, WARMUP_SECONDS, cpus[1])
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        out = _wrk_against(server, conns, seconds, cpus[1])
        cpu_after, wall = server.cpu_seconds(), time.monotonic() - started
    try:
        result = parse_wrk(out)
    except ValueError as exc:
        raise RunFailed(str(exc)) from None
    if not result.requests:
        # A server that accepts connections but never answers: wrk counts no errors.
        raise RunFailed(f"no response in {seconds} s ({result.problems() or 'no errors'})")
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return asdict(result) | {
        "problems": result.problems(),
        "wall": wall,
        "server_cpu": None if cpu is None else cpu / wall,
        "server_cpu_us_per_request": None if cpu is None else cpu / result.requests * 1e6,
    }


def run_rounds(
    servers: dict[str, list[str]],
    rounds: int,
    conns: int,
    seconds: int,
    cpus: tuple[int | None, int | None],
) -> dict[str, list[dict[str, Any]]]:
    """Every subject once per round, the order rotating; a failed run is recorded with
    its reason (``failed``) instead of figures."""
    names = list(servers)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(1, rounds + 1):
        # A subject always first would always meet the machine as the previous round
        # left it.
        shift = (round_ - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            where = f"round {round_}/{rounds}  {name:<16}"
            try:
                run = measure(servers[name], conns, seconds, cpus)
            except RunFailed as exc:
                log(f"{where} failed: {exc}")
                runs[name].append({"round": round_, "failed": str(exc)})
                continue
            cpu = "-" if run["server_cpu"] is None else f"{run['server_cpu']:.0%}"
            problems = f"  ({run['problems']})" if run["problems"] else ""
            log(
                f"{where} {run['requests_per_second']:>10,.0f} req/s  server CPU {cpu:>4}"
                f"  p99 {run['latency_ms']['99']:.2f} ms{problems}"
            )
            runs[name].append({"round": round_, "failed": None} | run)
    return runs


# -- the results -------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per subject: medians over its measured runs, the median same-round ratio to
    asyncio, and notes naming the rounds that failed or had errors."""
    baseline = {r["round"]: r for r in runs.get("asyncio", []) if r["failed"] is None}
    summary = {}
    for name, subject_runs in runs.items():
        ok = [r for r in subject_runs if r["failed"] is None]
        rates = [r["requests_per_second"] for r in ok]
        ratios = [
            r["requests_per_second"] / baseline[r["round"]]["requests_per_second"]
            for r in ok
            if r["round"] in baseline and baseline[r["round"]]["requests_per_second"] > 0
        ]
        notes = [
            f"round {r['round']}: failed: {r['failed']}"
            if r["failed"] is not None
            else f"round {r['round']}: {r['problems']}"
            for r in subject_runs
            if r["failed"] is not None or r["problems"]
        ]
        summary[name] = {
            "requests_per_second": _median(rates),
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "vs_asyncio": _median(ratios),
            "server_cpu": _median([r["server_cpu"] for r in ok]),
            "server_cpu_us_per_request": _median([r["server_cpu_us_per_request"] for r in ok]),
            "latency_ms": {p: _median([r["latency_ms"][p] for r in ok]) for p in PERCENTILES},
            "notes": notes,
        }
    return summary


def _fmt(value: float | None, spec: str) -> str:
    """*value* formatted with *spec*, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The results as a text table, one row per subject."""
    rows: list[tuple[str, ...]] = [
        (
            "subject",
            "req/s",
            "spread",
            "vs asyncio",
            "server CPU",
            "CPU us/req",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "notes",
        )
    ]
    for name, s in summary.items():
        spread = "-" if s["min"] is None else f"{s['min']:,.0f}-{s['max']:,.0f}"
        ratio = _fmt(s["vs_asyncio"], ".2f")
        rows.append(
            (
                name,
                _fmt(s["requests_per_second"], ",.0f"),
                spread,
                ratio if ratio == "-" else ratio + "x",
                _fmt(s["server_cpu"], ".0%"),
                _fmt(s["server_cpu_us_per_request"], ".1f"),
                *(_fmt(s["latency_ms"][p], ".2f") for p in ("50", "90", "99")),
                "; ".join(s["notes"]),
            )
        )
    return text_table(rows)


def report(document: dict[str, Any]) -> str:
    """The header lines (what was run, where, with what) and the table."""
    v, c = document["versions"], document["config"]
    pinning = document["pinning"]
    pinned = (
        f"server on CPU {pinning['server_cpu']}, wrk on CPU {pinning['wrk_cpu']}"
        if pinning["server_cpu"] is not None
        else "not pinned"
    )
    lines = [
        document["provenance"],
        f"aiohttp {v['aiohttp']}, uvloop {v['uvloop'] or '-'}; {document['wrk']}",
        f"aiohttp hello world under wrk -t1 -c{c['conns']} -d{c['seconds']}s --latency"
        f" --timeout 5s after a {c['warmup']} s warm-up; {pinned}; {c['rounds']} round(s),"
        f" medians; load average {', '.join(f'{x:.2f}' for x in document['loadavg_after'])}"
        " after",
        *document["notes"],
        "",
        document["table"],
    ]
    return "\n".join(lines)


def _version(package: str) -> str | None:
    """The installed version of *package* (None when it is not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the rounds, print the table, save the results."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--quick", action="store_true", help="1 round x 1 s, 8 connections")
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--seconds", type=int, help="measured seconds per run (default 5)")
    parser.add_argument("--conns", type=int, help="wrk connections (default 64)")
    parser.add_argument("--out", type=Path, help=f"results directory (default {RESULTS})")
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else DEFAULTS
    rounds = defaults["rounds"] if args.rounds is None else args.rounds
    seconds = defaults["seconds"] if args.seconds is None else args.seconds
    conns = defaults["conns"] if args.conns is None else args.conns
    if rounds < 1 or seconds < 1 or conns < 1:
        parser.error("--rounds, --seconds and --conns must be positive")
    if shutil.which("wrk") is None:
        print("http: skipped: wrk is not installed (Debian: apt-get install wrk)")
        return 0
    if importlib.util.find_spec("aiohttp") is None:
        print("http: skipped: aiohttp is not installed (pip install aiohttp)")
        return 0

    servers, notes = subjects()
    for note in notes:
        log(note)
    cpus = harness.cpu_layout()
    document: dict[str, Any] = {
        # Before the run, so that its load average is the machine's, not this benchmark's.
        "provenance": harness.provenance(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": harness.machine_info(),
        "python": sys.version.split()[0],
        "versions": {"aiohttp": _version("aiohttp"), "uvloop": _version("uvloop")},
        "wrk": wrk_version(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {"rounds": rounds, "seconds": seconds, "conns": conns, "warmup": WARMUP_SECONDS},
        "pinning": {"server_cpu": cpus[0], "wrk_cpu": cpus[1]},
        "notes": notes,
    }
    runs = run_rounds(servers, rounds, conns, seconds, cpus)
    summary = summarize(runs)
    document |= {
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "summary": summary,
        "table": table(summary),
    }
    text = report(document)
    print(text)
    if not args.no_save and not (args.quick and args.out is None):
        out = args.out or RESULTS
        out.mkdir(parents=True, exist_ok=True)
        (out / "http_bench.json").write_text(json.dumps(document, indent=1) + "\n")
        (out / "http_bench.txt").write_text(text + "\n")
        log(f"results written to {out}")
    return 1 if any(r["failed"] for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
