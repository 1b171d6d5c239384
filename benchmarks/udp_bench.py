"""UDP ping-pong: ``asycamore echo --udp`` against asyncio (and uvloop) in the same run.

    python benchmarks/udp_bench.py                     # 3 rounds of 2 s per subject
    python benchmarks/udp_bench.py --rounds 5 --seconds 3 --clients 16 --size 64

The table is printed and written to ``benchmarks/results/udp_bench.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere), under a line saying when, with what command
and on what machine and Python it was measured.

Each subject is an echo server in its own process, on 127.0.0.1: ``asycamore echo
--udp`` on each available backend (or those named with ``--backends``), an
``asyncio.DatagramProtocol`` echo on the default loop (``asyncio``, as a fresh process
runs it, and ``asyncio-tuned``, with glibc's malloc thresholds raised: asyncio reads each
datagram with ``recvfrom(256 KiB)``, see ``asycamore.bench.programs.MALLOC_TUNED``), and
the same on uvloop when it is importable.  The load generator is this process:
*clients* connected UDP sockets, one datagram of *size* bytes in flight on each (a
datagram lost on loopback is re-sent after 200 ms), every echo checked byte for byte.
The server is pinned to one CPU and the generator to another when the machine has two
or more.

Reported per subject: datagrams echoed per second (median over rounds, with the
spread), the server's CPU time per datagram (from /proc, the steadier figure on a
shared machine) and the generator's CPU share (near 100%: the generator, not the
server, set the pace).  Rounds are interleaved, and ratios are to the better of the two
asyncio configurations in the same round.  Loopback only; every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import report_file  # benchmarks/report_file.py, beside this file

HERE = Path(__file__).resolve()
TICKS = os.sysconf("SC_CLK_TCK")
ASYNCIO_CONFIGS = ("asyncio", "asyncio-tuned")
"""The ratios are to the better of these in each round."""


# -- the reference servers (run as `udp_bench.py --serve asyncio|uvloop`) ------------------


class _AsyncioEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)


async def _serve_asyncio() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_AsyncioEcho, local_addr=("127.0.0.1", 0))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on 127.0.0.1:{transport.get_extra_info('sockname')[1]}", flush=True)
    await stop.wait()
    transport.close()


def _serve(kind: str) -> int:
    if kind == "uvloop":
        import uvloop

        uvloop.run(_serve_asyncio())
    else:
        asyncio.run(_serve_asyncio())
    return 0


# -- the generator ---------------------------------------------------------------------


@dataclass
class Subject:
    name: str
    cmd: list[str]
    env: dict[str, str] | None = None
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    gen_cpu: list[float] = field(default_factory=list)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _start(subject: Subject, server_cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    def pin() -> None:
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})

    proc = subprocess.Popen(
        subject.cmd,
        env={**os.environ, **subject.env} if subject.env else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin,  # noqa: PLW1509 - only sched_setaffinity, before exec
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        raise RuntimeError(f"{subject.name} did not start")
    line = proc.stdout.readline().decode()
    return proc, int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _pingpong(port: int, clients: int, size: int, seconds: float) -> tuple[int, float]:
    """Echo round trips on *clients* sockets for *seconds*; (count, generator CPU s)."""
    payload = os.urandom(size)
    socks = []
    poller = select.epoll()
    try:
        for _ in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            socks.append(sock)
            poller.register(sock.fileno(), select.EPOLLIN)
        by_fd = {sock.fileno(): sock for sock in socks}
        for sock in socks:
            sock.send(payload)
        count = 0
        warmup_end = time.monotonic() + min(0.3, seconds / 4)
        measuring = False
        cpu0 = time.process_time()
        end = warmup_end + seconds
        while True:
            now = time.monotonic()
            if not measuring and now >= warmup_end:
                measuring, count, cpu0 = True, 0, time.process_time()
            if now >= end:
                break
            events = poller.poll(0.2)
            if not events:  # a datagram was lost: put one back in flight everywhere
                for sock in socks:
                    sock.send(payload)
                continue
            for fd, _ in events:
                sock = by_fd[fd]
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if data != payload:
                    raise AssertionError("the echo is not byte-exact")
                count += 1
                sock.send(payload)
        return count, time.process_time() - cpu0
    finally:
        poller.close()
        for sock in socks:
            sock.close()


def _subjects(backends: list[str] | None) -> tuple[list[Subject], list[str]]:
    from asycamore.bench.programs import MALLOC_TUNED
    from asycamore.factory import list_backends

    py = sys.executable
    notes = []
    names = backends or [info.name for info in list_backends() if info.available]
    subjects = [
        Subject(
            f"asycamore-{name}",
            [py, "-m", "asycamore", "echo", "--udp", "--backend", name, "--port", "0"],
        )
        for name in names
    ]
    subjects.append(Subject("asyncio", [py, str(HERE), "--serve", "asyncio"]))
    # asyncio reads each datagram with recvfrom(256 KiB): see MALLOC_TUNED.
    subjects.append(Subject("asyncio-tuned", [py, str(HERE), "--serve", "asyncio"], MALLOC_TUNED))
    if importlib.util.find_spec("uvloop") is not None:
        subjects.append(Subject("uvloop", [py, str(HERE), "--serve", "uvloop"]))
    else:
        notes.append("uvloop is not installed (pip install uvloop)")
    return subjects, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["asyncio", "uvloop"], help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (1-20)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (0.1-30)")
    parser.add_argument("--clients", type=int, default=16, help="sockets in flight (1-256)")
    parser.add_argument("--size", type=int, default=64, help="datagram size (1-65507)")
    parser.add_argument("--backends", help="comma-separated asycamore backends (default: all)")
    report_file.add_arguments(parser, "udp_bench.txt")
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve)
    # Here, not at the top: the reference servers run this file and import no asycamore.
    from asycamore.bench import harness

    if not (
        1 <= args.rounds <= 20
        and 0.1 <= args.seconds <= 30
        and 1 <= args.clients <= 256
        and 1 <= args.size <= 65507
    ):
        parser.error("a value is out of range (see --help)")
    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    subjects, notes = _subjects(args.backends.split(",") if args.backends else None)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) >= 2 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus[1:]))
    else:
        notes.append("one CPU: server and generator share it")
    ratios: dict[str, list[float]] = {s.name: [] for s in subjects}
    for round_ in range(1, args.rounds + 1):
        rates = {}
        for subject in subjects:
            proc, port = _start(subject, server_cpu)
            try:
                cpu_before = _cpu_seconds(proc.pid)
                count, gen_cpu = _pingpong(port, args.clients, args.size, args.seconds)
                cpu = _cpu_seconds(proc.pid) - cpu_before
            finally:
                _stop(proc)
            rate = count / args.seconds
            rates[subject.name] = rate
            subject.rates.append(rate)
            subject.cpu_us.append(cpu / max(count, 1) * 1e6)
            subject.gen_cpu.append(gen_cpu / args.seconds)
            print(
                f"round {round_}/{args.rounds}  {subject.name:<18} {rate:>10,.0f} datagrams/s",
                file=sys.stderr,
                flush=True,
            )
        best = max(rates[name] for name in ASYNCIO_CONFIGS)
        for name, rate in rates.items():
            ratios[name].append(rate / best)
    header = f"{'subject':<18} {'datagrams/s':>12} {'spread':>19} {'server us/dgram':>16}"
    lines = [
        f"UDP ping-pong: {args.clients} sockets x 1 datagram of {args.size} B in flight, "
        f"{args.rounds} rounds x {args.seconds:g} s, Python {sys.version.split()[0]}",
        header + f" {'gen CPU':>8} {'vs best asyncio':>16}",
    ]
    for s in subjects:
        spread = f"{min(s.rates):,.0f}-{max(s.rates):,.0f}"
        lines.append(
            f"{s.name:<18} {statistics.median(s.rates):>12,.0f} {spread:>19} "
            f"{statistics.median(s.cpu_us):>16.2f} {statistics.median(s.gen_cpu):>7.0%} "
            f"{statistics.median(ratios[s.name]):>15.2f}x"
        )
    lines += [f"note: {note}" for note in notes]
    report = "\n".join([provenance, "", *lines])
    print(report)
    report_file.save(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
