"""asycamore.compat.asyncore against the asyncore it replaces, in one run.

    python benchmarks/compat_bench.py [--idle 10000] [--passes 50] [--roundtrips 20000]
                                      [--rounds 3] [--seconds 5] [--backend epoll]
                                      [--out FILE | --no-save]

The results are printed and written to ``benchmarks/results/compat_bench.txt`` (``--out
FILE`` elsewhere, ``--no-save`` nowhere), under a line saying when, with what command
and on what machine and Python they were measured.

The reference is the standard library's ``asyncore`` on Python 3.11 and ``pyasyncore``
(its verbatim copy, ``pip install pyasyncore``) on 3.12+; ours runs on the backend from
``--backend`` / ``ASYCAMORE_BACKEND`` or the best one here.  Loopback only; every loop
is bounded in count and time.

idle pass   One ``poll`` pass over a map of *--idle* idle dispatchers and one active one
            (a byte waits for it each pass): the time per pass, median of *--passes*.
            The idle ones are unmodified ``dispatcher_with_send`` instances on connected
            UDP sockets that nothing is sent to (one descriptor each, so 10,000 fit in
            the usual 20,000-descriptor hard limit; TCP pairs would need two).
            Reference: asyncore's poll loop (``poll2``, as ``loop(use_poll=True)``);
            ``select`` cannot take descriptors past FD_SETSIZE (1024).
ping-pong   One client and one echo handler, both ``dispatcher_with_send``, in one map,
            passing a 64-byte message back and forth: round trips per second over
            *--roundtrips* round trips (or *--seconds*).  Reference: asyncore's
            ``loop()`` with select (its default) and with poll.  Also with 64 pairs.

Both measure CPU time (user + system) of this one process, median of *--rounds*
interleaved rounds, so other load on a shared machine shifts both sides alike.

What bounds them.  A pass asks every dispatcher ``readable()`` and ``writable()`` on
both sides: with 10,000 dispatchers those calls are most of our pass, while asyncore
adds a ``register`` per descriptor and a kernel ``poll`` that visits (and, with a
timeout, queues a wait on) every descriptor -- the part epoll removes.  For a few busy
sockets the kernel work is small on both sides and what remains is Python per pass and
per event: asyncore's ``poll2`` is one function and ``readwrite`` one call per event,
while a dispatch through an asycamore context goes through its base class
(``dispatch_once`` -> ``_poll`` -> ``_dispatch``) and our per-map slot; that is why
ping-pong stays below asyncore.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import report_file  # benchmarks/report_file.py, beside this file

from asycamore.bench import harness
from asycamore.compat import asyncore as ours


def reference_asyncore() -> ModuleType:
    """The stdlib asyncore (3.11) or pyasyncore (3.12+), never ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = importlib.import_module("asyncore")
        except ImportError:
            sys.exit("no reference asyncore: on Python 3.12+ run `pip install pyasyncore`")
    if module is ours:
        sys.exit("`asyncore` is asycamore.compat's here (install() ran): no reference")
    return module


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(f"needs {needed} descriptors; RLIMIT_NOFILE hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- one pass over many idle dispatchers ------------------------------------------------


def idle_pass(module: ModuleType, poll: Callable[..., None], udp: list[socket.socket],
              passes: int, seconds: float) -> float:  # fmt: skip
    """Median seconds per pass over len(udp) idle dispatchers and one active one."""
    smap: dict[int, Any] = {}
    for sock in udp:
        module.dispatcher_with_send(sock, map=smap)
    ours_end, peer = socket.socketpair()

    class Active(module.dispatcher_with_send):  # type: ignore[name-defined,misc]
        reads = 0

        def handle_read(self) -> None:
            self.recv(16)
            self.reads += 1

    active = Active(ours_end, map=smap)
    times = []
    deadline = time.perf_counter() + seconds
    for i in range(passes + 3):  # three warm-up passes
        peer.send(b"x")
        # CPU time (user + system, the kernel's poll included): on a shared machine the
        # time other processes take is not this pass's.
        start = time.process_time()
        poll(1.0, smap)
        elapsed = time.process_time() - start
        if i >= 3:
            times.append(elapsed)
        if time.perf_counter() > deadline:
            break
    assert active.reads == i + 1, (active.reads, i)
    # Leave the UDP sockets open for the next module; only drop this map's dispatchers.
    smap.clear()
    ours.poll(0, smap)  # our context for an emptied map is released on the next pass
    ours_end.close()
    peer.close()
    return statistics.median(times)


# -- ping-pong ------------------------------------------------------------------------


def ping_pong(
    module: ModuleType, use_poll: bool, pairs: int, roundtrips: int, seconds: float
) -> float:
    """Round trips per CPU second over *pairs* client/echo pairs of dispatcher_with_send
    in one map, each pair with one 64-byte message in flight."""
    smap: dict[int, Any] = {}
    message = b"m" * 64
    state = {"left": roundtrips}

    class Echo(module.dispatcher_with_send):  # type: ignore[name-defined,misc]
        def handle_read(self) -> None:
            data = self.recv(4096)
            if data:
                self.send(data)

    class Client(module.dispatcher_with_send):  # type: ignore[name-defined,misc]
        pending = b""

        def handle_read(self) -> None:
            self.pending += self.recv(4096)
            if len(self.pending) >= len(message):
                self.pending = b""
                state["left"] -= 1
                if state["left"] <= 0:
                    raise module.ExitNow  # leaves loop() at once
                self.send(message)

    for _ in range(pairs):
        a, b = socket.socketpair()
        Echo(a, map=smap)
        Client(b, map=smap).send(message)
    # CPU time, not wall time: both sides run on one CPU, and on a shared machine the
    # time other processes take is not this loop's.
    start = time.process_time()
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            module.loop(timeout=1.0, use_poll=use_poll, map=smap, count=100)
    except module.ExitNow:
        pass
    elapsed = time.process_time() - start
    done = roundtrips - state["left"]
    module.close_all(map=smap)
    return done / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--roundtrips", type=int, default=20_000, help="per measurement")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="cap per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median)")
    parser.add_argument("--backend", help="ASYCAMORE_BACKEND for ours")
    report_file.add_arguments(parser, "compat_bench.txt")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["ASYCAMORE_BACKEND"] = args.backend
    reference = reference_asyncore()
    import asycamore

    backend = asycamore.best_backend()
    lines: list[str] = []

    def say(line: str) -> None:
        # Printed as each measurement ends (a full run takes minutes), and kept for the file.
        print(line, flush=True)
        lines.append(line)

    # Before the run, so that the load average is the machine's, not this benchmark's.
    say(harness.provenance())
    say("")
    say(f"Python {sys.version.split()[0]}; ours on {backend}; reference {reference.__file__}")

    raise_nofile(args.idle + 200)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    udp = []
    for _ in range(args.idle):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(sink.getsockname())
        udp.append(sock)
    # Interleaved rounds: a shared machine's noise hits both sides alike.
    idle: dict[str, list[float]] = {"reference": [], "ours": []}
    for _ in range(args.rounds):
        idle["reference"].append(
            idle_pass(reference, reference.poll2, udp, args.passes, args.seconds)
        )
        idle["ours"].append(idle_pass(ours, ours.poll, udp, args.passes, args.seconds))
    theirs, mine = (statistics.median(idle[side]) for side in ("reference", "ours"))
    say(
        f"idle pass ({args.idle} idle + 1 active): reference poll2 {theirs * 1e3:.2f} ms, "
        f"ours {mine * 1e3:.2f} ms per pass -> {theirs / mine:.2f}x"
    )
    for sock in udp:
        sock.close()
    sink.close()

    for pairs in args.pairs:
        for label, use_poll in (("select", False), ("poll", True)):
            rates: dict[str, list[float]] = {"reference": [], "ours": []}
            for _ in range(args.rounds):
                for side, module in (("reference", reference), ("ours", ours)):
                    rates[side].append(
                        ping_pong(module, use_poll, pairs, args.roundtrips, args.seconds)
                    )
            theirs, mine = (statistics.median(rates[side]) for side in ("reference", "ours"))
            say(
                f"ping-pong ({pairs} pair{'s' if pairs > 1 else ''}, dispatcher_with_send, "
                f"64 B): reference loop({label}) {theirs:,.0f}/s, ours {mine:,.0f}/s "
                f"-> {mine / theirs:.2f}x"
            )
    report_file.save(args, "\n".join(lines))


if __name__ == "__main__":
    main()
