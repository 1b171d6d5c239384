"""TLS benchmarks: ``asycamore echo --tls-*`` against asyncio and uvloop, same run.

    python benchmarks/tls_bench.py                   # 3 rounds, about a minute
    python benchmarks/tls_bench.py --rounds 5 --seconds 3 --json results.json

The tables are printed and written to ``benchmarks/results/tls_bench.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere; ``--json FILE`` as well, as JSON), under a line
saying when, with what command and on what machine and Python they were measured.

Workloads (loopback only, every one bounded in count and time):

bulk
    *--streams* ``openssl s_client -nbio -quiet`` processes at once each stream
    *--megabytes* of random bytes to the echo server and read the echo back; MB/s is
    the one-way volume over the wall time until the last echoed byte arrived (every
    echo is compared with what was sent).  One s_client cannot keep a server busy:
    several can, and the server's CPU share is shown so that a run where the server was
    not the bottleneck is visible.
handshakes
    *--clients* ``openssl s_time -new`` processes at once make full handshakes (a new
    session each time, TLS 1.3, ECDSA P-256 certificate) for *--seconds*; handshakes/s
    over the measured wall time.

The load generators are OpenSSL's own C programs, so the Python servers, not the
client, set the pace; each server runs in its own process, pinned to CPU 0 when there
are two or more (the generator to CPU 1).  Rounds are interleaved (each round runs every
subject in turn) and the table shows medians with the min-max spread, and ratios to the
better of asyncio's two configurations and to uvloop.  Subjects: asycamore's echo command
(the code users run); an ``asyncio.Protocol`` TLS echo server written the fast way, as a
fresh process runs it (``asyncio``) and with glibc's malloc thresholds raised
(``asyncio-tuned``: asyncio decrypts with ``SSLObject.read(256 KiB)``, see
``asycamore.bench.programs.MALLOC_TUNED``); and the same server on uvloop (when
importable).  No assertions: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import report_file  # benchmarks/report_file.py, beside this file

HERE = Path(__file__).resolve()


# -- the peer servers (run as: tls_bench.py --serve asyncio|uvloop CERT KEY) -------------------


def serve(kind: str, cert: str, key: str) -> None:
    import asyncio

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def pause_writing(self) -> None:
            self.transport.pause_reading()

        def resume_writing(self) -> None:
            self.transport.resume_reading()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context, backlog=1024)
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set_result, None)
        await stop
        server.close()

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- harness -----------------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


PINNING = True


def pin(pid: int, cpu: int) -> None:
    if PINNING and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def make_certificate(where: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (openssl req)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


# asyncio decrypts with SSLObject.read(256 KiB): see asycamore.bench.programs.MALLOC_TUNED.
ASYNCIO_CONFIGS = ("asyncio", "asyncio-tuned")
"""The ratios are to the better of these."""


def subjects() -> list[str]:
    found = ["asycamore", *ASYNCIO_CONFIGS]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        log("uvloop is not installed: skipped (pip install uvloop)")
    else:
        found.append("uvloop")
    return found


@contextlib.contextmanager
def server(subject: str, cert: Path, key: str | Path) -> Iterator[tuple[int, int]]:
    if subject == "asycamore":
        args = [sys.executable, "-m", "asycamore", "echo", "--tls-cert", str(cert),
                "--tls-key", str(key)]  # fmt: skip
    else:
        kind = subject.removesuffix("-tuned")
        args = [sys.executable, str(HERE), "--serve", kind, str(cert), str(key)]
    env = None
    if subject == "asyncio-tuned":
        from asycamore.bench.programs import MALLOC_TUNED

        env = {**os.environ, **MALLOC_TUNED}
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    try:
        pin(proc.pid, 0)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready:
            raise RuntimeError(f"{subject} server did not start")
        line = proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{subject} server said {line!r}")
        yield int(line.rsplit(":", 1)[1]), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """CPU time of process *pid* so far: nanoseconds from /proc/PID/schedstat (clock
    ticks of /proc/PID/stat are too coarse for runs of a second or two), else 0."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_bulk(
    port: int, server_pid: int, blob: Path, digest: str, streams: int, limit: float
) -> tuple[float, float]:
    """(MB/s, server CPU share) of *streams* s_client streams each echoing *blob*
    at once; verified byte-exact."""
    size = blob.stat().st_size
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        outs = [Path(tmp) / f"echoed-{i}" for i in range(streams)]
        procs = []
        cpu_before = cpu_seconds(server_pid)
        started = time.perf_counter()
        for out_path in outs:
            stdin = stack.enter_context(blob.open("rb"))
            out = stack.enter_context(out_path.open("wb"))
            proc = subprocess.Popen(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-nbio"],
                stdin=stdin, stdout=out, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(proc.wait, 5)
            stack.callback(proc.kill)
            pin(proc.pid, 1)
            procs.append(proc)
        deadline = started + limit
        while any(out_path.stat().st_size < size for out_path in outs):
            if time.perf_counter() > deadline or any(p.poll() is not None for p in procs):
                echoed = sum(out_path.stat().st_size for out_path in outs)
                raise RuntimeError(f"bulk: {echoed} of {size * streams} bytes echoed")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server_pid) - cpu_before
        for out_path in outs:
            if hashlib.sha256(out_path.read_bytes()).hexdigest() != digest:
                raise RuntimeError("bulk: the echo differs from what was sent")
    return size * streams / elapsed / 1e6, cpu / elapsed


def measure_handshakes(
    port: int, server_pid: int, seconds: float, clients: int
) -> tuple[float, float]:
    """(handshakes/s, server CPU share) of *clients* ``s_time -new`` runs at once (one
    s_time makes one handshake at a time: alone it measures latency, not capacity)."""
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "openssl",
                "s_time",
                "-connect",
                f"127.0.0.1:{port}",
                "-new",
                "-time",
                str(max(1, round(seconds))),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    total = 0
    try:
        for proc in procs:
            pin(proc.pid, 1)
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 30)
            for line in out.splitlines():
                if "connections in" in line and "real seconds" in line:
                    total += int(line.split()[0])
                    break
            else:
                raise RuntimeError(f"s_time said: {out[-300:]} {err[-300:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    elapsed = time.perf_counter() - started
    share = (cpu_seconds(server_pid) - cpu_before) / elapsed
    return total / elapsed, share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per handshake run")
    parser.add_argument("--megabytes", type=int, default=32, help="per bulk stream")
    parser.add_argument("--streams", type=int, default=4, help="bulk streams at once")
    parser.add_argument("--clients", type=int, default=4, help="s_time processes at once")
    parser.add_argument("--only", default="bulk,handshakes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    report_file.add_arguments(parser, "tls_bench.txt")
    parser.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place server and generators"
    )
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "CERT", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    # Here, not at the top: the reference servers run this file and import no asycamore.
    from asycamore.bench import harness

    global PINNING
    PINNING = not args.no_pin
    if shutil.which("openssl") is None:
        log("needs the openssl command")
        return 2
    if not 1 <= args.rounds <= 20 or not 0 < args.seconds <= 30 or not 1 <= args.megabytes <= 1024:
        log("--rounds 1..20, --seconds up to 30, --megabytes 1..1024")
        return 2
    workloads = [w for w in args.only.split(",") if w]
    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    names = subjects()
    results: dict[str, dict[str, list[float]]] = {w: {n: [] for n in names} for w in workloads}
    cpu: dict[str, dict[str, list[float]]] = {w: {n: [] for n in names} for w in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        cert, key = make_certificate(where)
        blob = where / "blob"
        blob.write_bytes(os.urandom(args.megabytes * 1_000_000))
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        for round_ in range(1, args.rounds + 1):
            for name in names:
                with server(name, cert, key) as (port, pid):
                    for workload in workloads:
                        if workload == "bulk":
                            value, share = measure_bulk(
                                port, pid, blob, digest, args.streams, limit=60
                            )
                        else:
                            value, share = measure_handshakes(
                                port, pid, args.seconds, args.clients
                            )
                        results[workload][name].append(value)
                        cpu[workload][name].append(share)
                        log(f"round {round_}/{args.rounds}  {workload:<10} {name:<13} "
                            f"{value:10.1f}   server CPU {share:4.0%}")  # fmt: skip
    units = {"bulk": "MB/s", "handshakes": "handshakes/s"}
    lines = [f"TLS echo, {args.rounds} rounds, medians (min-max); Python {sys.version.split()[0]},"
             f" {ssl.OPENSSL_VERSION}"]  # fmt: skip
    summary: dict[str, Any] = {}
    for workload in workloads:
        unit = units.get(workload, "")
        lines += ["", f"{workload}: {unit} (wall), and per second of the server's CPU"]
        medians = {n: statistics.median(v) for n, v in results[workload].items()}
        # The load generators can be the bottleneck (2 cores): the work per CPU-second
        # of the server is then the measure that compares the servers.
        per_cpu = {
            n: statistics.median(v / c for v, c in zip(results[workload][n], cpu[workload][n],
                                                       strict=True) if c > 0)
            if any(c > 0 for c in cpu[workload][n]) else float("nan")
            for n in names
        }  # fmt: skip
        peers = {
            "best asyncio": (max(medians[c] for c in ASYNCIO_CONFIGS),
                             max(per_cpu[c] for c in ASYNCIO_CONFIGS)),
        }  # fmt: skip
        if "uvloop" in medians:
            peers["uvloop"] = (medians["uvloop"], per_cpu["uvloop"])
        for name, values in results[workload].items():
            ratios = "  ".join(
                f"{medians[name] / wall:.2f}x/{per_cpu[name] / by_cpu:.2f}x {peer}"
                for peer, (wall, by_cpu) in peers.items()
                if peer != name
            )
            share = statistics.median(cpu[workload][name])
            lines.append(f"  {name:<13} {medians[name]:8.1f} ({min(values):.1f}-{max(values):.1f})"
                         f"  CPU {share:4.0%}  {per_cpu[name]:8.1f}/CPU-s  {ratios}")  # fmt: skip
        summary[workload] = {"unit": unit, "values": results[workload], "medians": medians,
                             "server_cpu": cpu[workload], "per_cpu_second": per_cpu}  # fmt: skip
    report = "\n".join([provenance, "", *lines])
    print(report)
    report_file.save(args, report)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
