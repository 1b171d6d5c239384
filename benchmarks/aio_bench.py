"""asycamore.aio's benchmark: the cost of each direction of the asyncio integration.

    python benchmarks/aio_bench.py                 # 3 rounds x 2 s: pingpong, bulk, inprocess
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

``inprocess`` runs asyncio_echo.py's BufferedProtocol server and a client on one loop,
stock against ``aio.new_event_loop("epoll")``, and ``asycamore echo``'s protocol with
asycamore clients in one Service, ``serve_forever`` against ``aio.serve``; it compares
the process's CPU time per message (the loop's share is doubled and no other process
takes part, so these ratios hold on a busy machine).

Targets (issue 12): ``aio-loop-epoll`` >= 0.95x ``asyncio`` (and the same for the
BufferedProtocol pair, which does not allocate per read); ``aio-serve-epoll`` >= 0.9x
``asycamore-epoll``.  Each is shown as a rate ratio and as a ratio of server CPU per
operation (the robust one on a shared machine), both medians over rounds of values
measured in the same round (rounds interleave the subjects).  It reuses run.py's load
generator (C when gcc exists), pinning, quiet-CPU wait and per-round measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

# benchmarks/run.py (next to this file) and benchmarks/servers/asyncio_echo.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
import asyncio_echo
import run as suite

from asycamore import aio, bench
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Protocol, Service, StreamTransport

SERVERS = suite.SERVERS
WORKLOADS = ("pingpong", "bulk", "inprocess")
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


class _PingPongClient(asyncio.BufferedProtocol):
    """One connection of the in-process workload: a 64-byte message in flight."""

    def __init__(self, messages: int, done: asyncio.Future[None]) -> None:
        self.left = messages
        self.done = done
        self.buffer = bytearray(65536)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"x" * 64)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.left -= 1
        if self.left > 0:
            self.transport.write(b"x" * 64)
        else:
            self.transport.close()
            self.done.set_result(None)


async def _inprocess_pingpong(messages: int, conns: int = 16) -> float:
    """Server CPU and client CPU in one process: CPU microseconds per message."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio_echo.BufferedEchoProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    start = time.process_time()
    done = []
    for _ in range(conns):
        future = loop.create_future()
        done.append(future)
        client = functools.partial(_PingPongClient, messages // conns, future)
        await loop.create_connection(client, "127.0.0.1", port)
    await asyncio.gather(*done)
    used = time.process_time() - start
    server.close()
    await server.wait_closed()
    return used / messages * 1e6


def inprocess(rounds: int, messages: int) -> dict[str, Any]:
    """asyncio_echo.py's BufferedProtocol server and a client on one loop, stock vs
    ``aio.new_event_loop("epoll")``, interleaved: the loop's share of the CPU is twice
    what it is in a server alone, and no other process takes part, so this ratio is the
    steady one on a busy machine."""
    stock, ours = [], []
    for _ in range(rounds):
        stock.append(asyncio.run(_inprocess_pingpong(messages)))
        ours.append(aio.run(_inprocess_pingpong(messages), backend="epoll"))
    return {
        "unit": "CPU us/msg",
        "asyncio": statistics.median(stock),
        "aio-loop-epoll": statistics.median(ours),
        "ratio": statistics.median(s / o for s, o in zip(stock, ours, strict=True)),
    }


class _ServicePingPong(Protocol):
    """A client connection of the in-process Service workload (64 B in flight)."""

    def __init__(self, messages: int, service: Service, finished: list[int]) -> None:
        super().__init__()
        self.left = messages
        self.service = service
        self.finished = finished

    def connection_made(self, transport: StreamTransport) -> None:
        super().connection_made(transport)
        transport.write(b"x" * 64)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.left -= 1
        if self.left > 0:
            self.transport.write(b"x" * 64)
            return
        self.finished.append(1)
        self.transport.close()
        if len(self.finished) == _CONNS:
            self.service.stop()


_CONNS = 16


def _service_pingpong(messages: int, hosted: bool) -> float:
    """``asycamore echo``'s protocol and asycamore clients in one Service, run by
    serve_forever or by aio.serve on a stock asyncio loop: CPU us per message."""
    with Service("epoll") as service:
        listener = service.listen_tcp(EchoProtocol, "127.0.0.1", 0)
        finished: list[int] = []
        start = time.process_time()
        client = functools.partial(_ServicePingPong, messages // _CONNS, service, finished)
        for _ in range(_CONNS):
            service.connect_tcp(client, "127.0.0.1", listener.port)
        if hosted:
            asyncio.run(aio.serve(service))
        else:
            service.serve_forever(handle_signals=False)
        used = time.process_time() - start
    return used / messages * 1e6


def inprocess_serve(rounds: int, messages: int) -> dict[str, Any]:
    """:func:`_service_pingpong` standalone and hosted, interleaved."""
    alone, hosted = [], []
    for _ in range(rounds):
        alone.append(_service_pingpong(messages, hosted=False))
        hosted.append(_service_pingpong(messages, hosted=True))
    return {
        "unit": "CPU us/msg",
        "asycamore-epoll": statistics.median(alone),
        "aio-serve-epoll": statistics.median(hosted),
        "ratio": statistics.median(a / h for a, h in zip(alone, hosted, strict=True)),
    }


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
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["aio_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "workloads": {},
    }
    if "inprocess" in workloads:
        suite.log("[inprocess] asyncio vs aio-loop-epoll, one process ...")
        messages = 2_000 if args.quick else 20_000
        doc["inprocess"] = inprocess(max(cfg.rounds, 3), messages)
        suite.log("[inprocess] asycamore echo's Service: serve_forever vs aio.serve ...")
        doc["inprocess_serve"] = inprocess_serve(max(cfg.rounds, 3), messages)
    for workload in [w for w in workloads if w != "inprocess"]:
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
    if "inprocess" in doc:
        got = doc["inprocess"]
        print(
            f"\ninprocess (BufferedProtocol server and client on one loop, CPU us/msg)\n"
            f"  asyncio {got['asyncio']:.2f}  aio-loop-epoll {got['aio-loop-epoll']:.2f}"
            f"  target aio-loop-epoll / asyncio >= 0.95: {got['ratio']:.3f}"
            f" ({'met' if got['ratio'] >= 0.95 else 'MISSED'})"
        )
    if "inprocess_serve" in doc:
        got = doc["inprocess_serve"]
        print(
            f"inprocess (asycamore echo's Service and asycamore clients, CPU us/msg)\n"
            f"  asycamore-epoll {got['asycamore-epoll']:.2f}"
            f"  aio-serve-epoll {got['aio-serve-epoll']:.2f}"
            f"  target aio-serve-epoll / asycamore-epoll >= 0.9: {got['ratio']:.3f}"
            f" ({'met' if got['ratio'] >= 0.9 else 'MISSED'})"
        )
    doc["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
