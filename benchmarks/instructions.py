"""User-space instructions per operation, counted by valgrind: the loop's Python cost,
without the noise of a shared machine.

    PYTHONHASHSEED=0 python benchmarks/instructions.py [--only WORKLOADS] [--debug]
                                                       [--out FILE | --no-save]

The table is printed and written to ``benchmarks/results/instructions.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere), under a line saying when, with what command
and on what machine and Python it was counted, and one with ``PYTHONHASHSEED``.

Wall-clock and CPU-time figures on a virtual machine move by 10-20 % from run to run;
an instruction count does not (a few tenths of a percent).  Each workload runs in one
process under ``valgrind --tool=callgrind`` twice, with N and 2N operations, and the
difference divided by N is the instruction count of one operation: start-up and
set-up cancel out.  Only user-space instructions are counted, so the kernel's work in
the system calls (the same for every subject) is left out, and what remains is the
Python each loop runs around them.  The client side of each workload runs in the same
process and is the same for every subject, so differences between subjects are the
servers' alone.

Workloads and subjects:

    dispatch     one always-ready target; one dispatch with one handler call
    message      64 loopback connections, each round one 64-byte message on each
    connection   16 connections at a time: accept, 64-byte echo, EOF, close

    raw          a bare select.epoll loop (message only): the kernel interface's floor
    selectors    a minimal hand-written selectors loop (benchmarks/servers/selectors_echo.py),
                 the pure-Python floor every other figure is compared with
    asycamore    the echo service (Service, EchoProtocol, epoll); for dispatch, a Service
                 in serve_forever, as asycamore echo runs, with a do-nothing target

``--debug`` runs every child with ``ASYCAMORE_DEBUG=1``: the asycamore subjects then run
in debug mode (each round and handler call timed, thread checks), and the difference to a
run without it is what debug mode costs.

Needs valgrind (Linux); ``--child`` is how the script runs itself under it.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import report_file  # benchmarks/report_file.py, beside this file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MESSAGE = b"m" * 64
WORKLOADS = {
    # workload: (subjects, operations per run, operations per step)
    "dispatch": (("selectors", "asycamore"), 5000, 1),
    "message": (("raw", "selectors", "asycamore"), 100, 64),
    "connection": (("selectors", "asycamore"), 200, 16),
}


# -- the workloads, run in the child ------------------------------------------------------


def _selectors_echo(sel: selectors.BaseSelector) -> Callable[[socket.socket], None]:
    """selectors_echo.py's read callback (its write path never runs here)."""

    def on_read(conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            sel.unregister(conn)
            conn.close()
            return
        conn.send(data)

    return on_read


def dispatch(subject: str, count: int) -> None:
    """*count* dispatches of one always-ready target with a handler that does nothing."""
    a, b = socket.socketpair()
    a.send(b"x")  # never read: b stays readable
    calls = 0
    if subject == "selectors":
        sel = selectors.DefaultSelector()

        def callback(sock: object) -> None:
            nonlocal calls
            calls += 1

        sel.register(b, selectors.EVENT_READ, callback)
        while calls < count:
            for key, _ in sel.select():
                key.data(key.fileobj)
        return
    from asycamore import Events
    from asycamore.servicemodel import Service

    service = Service("epoll")

    class Ready:
        def fileno(self) -> int:
            return b.fileno()

        def handle_read_event(self) -> None:
            nonlocal calls
            calls += 1
            if calls == count:
                service.close()

        def handle_write_event(self) -> None:
            pass

    service.dispatcher.register(Ready(), Events.READ)
    service.serve_forever(handle_signals=False)


def message(subject: str, rounds: int) -> None:
    """*rounds* rounds of one 64-byte message on each of 64 connections."""
    import select

    step: Callable[[], int]  # one dispatch; returns how many messages it echoed
    if subject == "asycamore":
        from asycamore.echo import EchoProtocol
        from asycamore.servicemodel import Service

        service = Service("epoll")
        port = service.listen_tcp(EchoProtocol, "127.0.0.1", 0).port

        def step() -> int:
            # A round of the service's loop (its callbacks, then one dispatch); the 64
            # messages of a round share it, so how the loop is driven hardly counts.
            return service.run_once(None)
    else:
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        port = listener.getsockname()[1]
    clients = []
    for _ in range(64):
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(client)
    if subject == "asycamore":
        while service.connection_count < len(clients):
            service.run_once(0.1)
    else:
        servers = []
        for _ in clients:
            conn, _ = listener.accept()
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            servers.append(conn)
        if subject == "raw":
            ep = select.epoll()
            buf = memoryview(bytearray(65536))
            by_fd = {conn.fileno(): conn for conn in servers}
            for fd in by_fd:
                ep.register(fd, select.EPOLLIN)

            def step() -> int:
                ready = ep.poll(-1, len(by_fd))
                for fd, _ in ready:
                    conn = by_fd[fd]
                    got = conn.recv_into(buf)
                    conn.send(buf[:got])
                return len(ready)
        else:
            sel = selectors.DefaultSelector()
            on_read = _selectors_echo(sel)
            for conn in servers:
                sel.register(conn, selectors.EVENT_READ, on_read)

            def step() -> int:
                ready = sel.select()
                for key, _ in ready:
                    key.data(key.fileobj)
                return len(ready)

    for _ in range(rounds):
        for client in clients:
            client.send(MESSAGE)
        handled = 0
        while handled < len(clients):
            handled += step()
        for client in clients:
            got = 0
            while got < len(MESSAGE):
                got += len(client.recv(len(MESSAGE) - got))


def connection(subject: str, rounds: int) -> None:
    """*rounds* batches of 16 short connections, through conn_path.py's two servers."""
    import conn_path

    if subject == "selectors":
        address, step, close = conn_path.selectors_server()
    else:
        address, step, close = conn_path.asycamore_server("epoll")
    for _ in range(rounds):
        clients = conn_path.open_clients(address, 16)
        done = 0
        while done < 16:
            done += step()
        conn_path.finish_clients(clients)
    close()


# -- the parent: valgrind runs and the table ------------------------------------------------


def count_instructions(workload: str, subject: str, operations: int, debug: bool = False) -> int:
    """User-space instructions of one child run (callgrind's total); *debug*: with
    ``ASYCAMORE_DEBUG=1``."""
    env = {**os.environ, "ASYCAMORE_DEBUG": "1"} if debug else None
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            workload,
            subject,
            str(operations),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def per_operation(workload: str, subject: str, debug: bool = False) -> float:
    """Instructions per operation: the difference of an N and a 2N run, over N."""
    _, runs, per_step = WORKLOADS[workload]
    small = count_instructions(workload, subject, runs, debug)
    large = count_instructions(workload, subject, 2 * runs, debug)
    return (large - small) / (runs * per_step)


def main(argv: list[str] | None = None) -> int:
    """Count every workload for every subject and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--child", nargs=3, metavar=("WORKLOAD", "SUBJECT", "N"), help=argparse.SUPPRESS
    )
    parser.add_argument("--only", help="comma-separated workloads (dispatch,message,connection)")
    parser.add_argument(
        "--debug", action="store_true", help="run asycamore in debug mode (ASYCAMORE_DEBUG=1)"
    )
    report_file.add_arguments(parser, "instructions.txt")
    args = parser.parse_args(argv)
    if args.child:
        workload, subject, n = args.child
        # What was allocated before (this script's imports) is left out of the garbage
        # collector's passes, so that a collection costs what the workload's own objects
        # cost, not what happens to be imported.
        gc.collect()
        gc.freeze()
        {"dispatch": dispatch, "message": message, "connection": connection}[workload](
            subject, int(n)
        )
        return 0
    # Here, not at the top: the counted children run this file, and import only what
    # their workload needs.
    from asycamore.bench import harness

    if shutil.which("valgrind") is None:
        print("instructions.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    lines = [
        harness.provenance(),
        # The children inherit it, and string hashes (so dict and set probing) change
        # with it: a count is repeatable under the same seed.
        f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', 'unset')}",
        "",
        f"user-space instructions per operation, valgrind callgrind "
        f"(python {sys.version.split()[0]}; client side included, the same for every subject)"
        + ("; asycamore in debug mode" if args.debug else ""),
        f"{'workload':11s} {'subject':10s} {'instructions':>12s} {'vs selectors':>13s}",
    ]
    for workload in workloads:
        subjects = WORKLOADS[workload][0]
        counts = {}
        for subject in subjects:
            print(f"[{workload}] {subject} ...", file=sys.stderr, flush=True)
            counts[subject] = per_operation(workload, subject, args.debug)
        reference = counts["selectors"]
        for subject in subjects:
            lines.append(
                f"{workload:11s} {subject:10s} {counts[subject]:12,.0f} "
                f"{counts[subject] - reference:+13,.0f}"
            )
    report = "\n".join(lines)
    print(report)
    report_file.save(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
