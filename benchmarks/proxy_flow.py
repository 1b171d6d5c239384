#!/usr/bin/env python3
"""What flow control across a proxy's two sides saves: examples/proxy.py measured.

Starts ``asycamore echo`` (the upstream) and ``examples/proxy.py --measure`` in front of
it, each in its own process, on 127.0.0.1; then a client sends --megabytes through
the proxy and does not read the echo for --pause seconds, then reads all of it back
and checks it (or reports where the exchange stalled: nothing for --stall seconds).
Reported for the proxy, with the wiring (the default) and without it
(``--no-flow-control``): the most bytes its transports held in their write buffers
(sampled every 10 ms by the proxy itself) and its peak resident memory (``VmHWM``
from ``/proc/PID/status``; Linux), before the client connected and at the end.

    python benchmarks/proxy_flow.py --megabytes 50 --pause 3

The table is printed and written to ``benchmarks/results/proxy_flow.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere), under a line saying when, with what command
and on what machine and Python it was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import report_file  # benchmarks/report_file.py, beside this file

from asycamore.bench import harness

PROXY = Path(__file__).resolve().parent.parent / "examples" / "proxy.py"


def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """A server that prints ``listening on HOST:PORT``, and its port."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        raise SystemExit(f"{args} did not start")
    line = proc.stdout.readline().decode()
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, wait (bounded), and return its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return stderr.decode()


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def run_client(port: int, payload: bytes, pause: float, stall: float) -> str:
    """Send *payload* through the proxy without reading for *pause* s, then read it
    all back; return how long the exchange took, or where it stalled (nothing
    received for *stall* seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=stall) as sock:
        sender = threading.Thread(target=_send_all, args=(sock, payload), daemon=True)
        sender.start()
        time.sleep(pause)
        digest, received = hashlib.sha256(), 0
        try:
            while received < len(payload):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
        except TimeoutError:
            return f"stalled at {received / 1e6:.1f} MB"
        sender.join(stall)
        if received != len(payload) or digest.digest() != hashlib.sha256(payload).digest():
            raise SystemExit(f"echo mismatch: {received} of {len(payload)} bytes")
    return f"{time.monotonic() - started:.1f} s"


def _send_all(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # a stalled run times out
        sock.sendall(payload)


def measure(
    upstream_port: int, payload: bytes, pause: float, stall: float, wired: bool
) -> dict[str, str]:
    args = [str(PROXY), "--port", "0", "--upstream", f"127.0.0.1:{upstream_port}", "--measure"]
    if not wired:
        args.append("--no-flow-control")
    proxy, port = start(*args)
    try:
        idle = vm_hwm_kib(proxy.pid)
        outcome = run_client(port, payload, pause, stall)
        peak = vm_hwm_kib(proxy.pid)
    finally:
        stderr = stop(proxy)
    buffered = next(
        (line.split()[2] for line in stderr.splitlines() if line.startswith("peak buffered:")),
        "?",
    )
    return {
        "proxy": "with the wiring" if wired else "--no-flow-control",
        "peak buffered (bytes)": f"{int(buffered):,}" if buffered.isdigit() else buffered,
        "VmHWM idle (KiB)": f"{idle:,}",
        "VmHWM end (KiB)": f"{peak:,}",
        "growth (KiB)": f"{peak - idle:,}",
        "exchange": outcome,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=50, help="MB the client sends")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds it does not read")
    parser.add_argument("--runs", type=int, default=1, help="runs of each variant")
    parser.add_argument(
        "--stall", type=float, default=10.0, help="give up after this long without data"
    )
    report_file.add_arguments(parser, "proxy_flow.txt")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("VmHWM is read from /proc: Linux only", file=sys.stderr)
        return 2

    # Before the run, so that the load average is the machine's, not this benchmark's.
    provenance = harness.provenance()
    payload = os.urandom(args.megabytes * 1_000_000)
    echo, upstream_port = start("-m", "asycamore", "echo", "--port", "0")
    try:
        rows = [
            measure(upstream_port, payload, args.pause, args.stall, wired)
            for _ in range(args.runs)
            for wired in (False, True)
        ]
    finally:
        stop(echo)
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = [
        f"{args.megabytes} MB through examples/proxy.py to `asycamore echo`, "
        f"the client not reading for {args.pause:g} s:",
        "  ".join(key.ljust(width) for key, width in widths.items()),
    ]
    lines += ["  ".join(row[key].ljust(width) for key, width in widths.items()) for row in rows]
    report = "\n".join([provenance, "", *lines])
    print(report)
    report_file.save(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
