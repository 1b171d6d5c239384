"""The ``asycamore`` command line: ``backends``, ``echo`` and ``bench``.

Bad input ends a command with exit status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import BackendError, UsageError
from .tables import text_table

__all__ = ["UsageError", "main"]

EXIT_USAGE = 2
MAX_WORKERS = 64  # asycamore.workers.MAX_WORKERS, without importing it to parse arguments
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?", re.ASCII)
MIN_BENCH_SECONDS = 0.01
"""The shortest ``asycamore bench --seconds``: below it a measurement is noise."""
MAX_BENCH_SECONDS = 600.0
"""The longest ``asycamore bench --seconds``: each backend is measured several times, so
a longer one is a mistake (``inf`` would never end)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block; the contract is one line.
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="asycamore", description="A small, fast I/O dispatch framework.")
    parser.add_argument("--version", action="version", version=f"asycamore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    backends = commands.add_parser("backends", help="list the installed backends")
    backends.add_argument("--json", action="store_true", help="print a JSON list")
    backends.set_defaults(run=_cmd_backends)

    echo = commands.add_parser("echo", help="run a TCP echo service until SIGINT/SIGTERM")
    echo.add_argument("--backend", metavar="NAME", help="backend to use (default: the best)")
    echo.add_argument(
        "--host",
        default="127.0.0.1",
        help="address or name to serve on, every address it resolves to (IPv6: ::1 or [::1])",
    )
    echo.add_argument("--port", type=_port, default=0, help="port (0: any free port)")
    echo.add_argument(
        "--udp", action="store_true", help="echo UDP datagrams instead of TCP (not with TLS)"
    )
    echo.add_argument(
        "--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate chain"
    )
    echo.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    echo.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help=f"serve from N processes (1-{MAX_WORKERS}) under a supervisor",
    )
    echo.set_defaults(run=_cmd_echo)

    bench = commands.add_parser("bench", help="a short loopback benchmark of every backend")
    bench.add_argument(
        "--seconds",
        type=_seconds,
        default=1.0,
        help=f"duration of each measurement (at most {MAX_BENCH_SECONDS:g})",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(run=_cmd_bench)
    return parser


def _port(text: str) -> int:
    # ASCII digits only: int() would also take ' 80 ', '1_000' and other scripts' digits.
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535, digits only)")
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def _workers(text: str) -> int:
    # ASCII decimal digits only, as for ports: int() would also take " 3", "1_0", "٣".
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}")
    count = int(text)
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"worker count {count} is out of range 1-{MAX_WORKERS}")
    return count


def _seconds(text: str) -> float:
    # Plain decimal notation only: float() would also take " 1", "1_0" and "nan".
    if not _DECIMAL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid number {text!r}")
    value = float(text)
    if not MIN_BENCH_SECONDS <= value <= MAX_BENCH_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} is not a number of seconds in [{MIN_BENCH_SECONDS:g}, {MAX_BENCH_SECONDS:g}]"
        )
    return value


def _cmd_backends(args: argparse.Namespace) -> int:
    from .factory import best_backend, list_backends

    infos = list_backends()
    no_default = ""
    try:
        default: str | None = best_backend()
    except BackendError as exc:
        # Say why (a bad $ASYCAMORE_BACKEND, say), not just that there is no default.
        default, no_default = None, str(exc)
    if args.json:
        rows = [
            {
                "name": info.name,
                "available": info.available,
                "priority": info.priority,
                "reason": info.reason,
                "origin": info.origin,
                "entry_point": info.entry_point,
                "default": info.name == default,
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    header = ("", "NAME", "AVAILABLE", "PRIORITY", "ORIGIN", "REASON")
    table = [header] + [
        (
            "*" if info.name == default else "",
            info.name,
            "yes" if info.available else "no",
            str(info.priority),
            info.origin,
            info.reason or "",
        )
        for info in infos
    ]
    print(text_table(table))
    if default is None:
        print(f"\nno default backend here: {no_default}")
    else:
        print(f"\n* default here: {default}")
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from .echo import serve_echo

    if args.udp and (args.tls_cert or args.tls_key):
        raise UsageError("--udp cannot be combined with --tls-cert/--tls-key")
    return serve_echo(
        backend=args.backend,
        host=args.host,
        port=args.port,
        udp=args.udp,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        workers=args.workers,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(seconds=args.seconds, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        status: int = args.run(args)
    except (UsageError, BackendError) as exc:
        print(f"asycamore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return status
