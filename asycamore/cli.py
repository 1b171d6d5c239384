"""The ``asycamore`` command line: ``backends``, ``echo`` and ``bench``.

Bad input ends a command with exit status 2 and one line on stderr, never a traceback.
A usage error (a malformed or unknown option, options that do not go together) is
reported under the name of the command it belongs to and points to that command's
``--help``; bad input found while running (a busy port, an unknown backend) is
reported as ``asycamore: error: ...``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

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
MIN_STATS_INTERVAL = 0.01
"""The shortest ``asycamore echo --stats-interval``."""
MAX_STATS_INTERVAL = 3600.0
"""The longest ``asycamore echo --stats-interval`` (an hour)."""


class _ParseError(UsageError):
    """A usage error of the (sub)command named *prog*."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block; the contract is one line.
        raise _ParseError(self.prog, f"{message} (see {self.prog} --help)")


_Check = Callable[[argparse.Namespace], str | None]
"""What is wrong with a command's options taken together (a message), or ``None``."""


class _CommandParser(_Parser):
    """A subcommand's parser: what it cannot parse, and options of it that do not go
    together, are its errors, reported with its name and its ``--help``.

    (argparse hands a subcommand's unrecognised arguments back to the top-level
    parser, whose error would point to ``asycamore --help`` instead.)
    """

    def __init__(self, *args: Any, check: _Check | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check = check

    def parse_known_args(  # argparse's own signature; its typing is overloaded on *namespace*
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        problem = self._check(parsed) if self._check is not None else None
        if problem:
            self.error(problem)
        return parsed, extras


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asycamore",
        description="A small, fast I/O dispatch framework.",
        epilog="Run 'asycamore COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"asycamore {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_CommandParser
    )
    commands.required = True

    backends = commands.add_parser(
        "backends",
        help="list the installed backends",
        description="List every installed backend, whether it is available here, and the "
        "default (which honours ASYCAMORE_BACKEND).",
    )
    backends.add_argument(
        "--json", action="store_true", help="print a JSON list (default: a table)"
    )
    backends.set_defaults(run=_cmd_backends)

    echo = commands.add_parser(
        "echo",
        help="run a TCP, TLS or UDP echo service until SIGINT/SIGTERM",
        description="Echo every byte (TCP, TLS) or datagram (UDP) back to its sender. "
        "Prints 'listening on HOST:PORT' once serving, then serves until SIGINT, SIGTERM or "
        "SIGHUP, and exits 0.",
        check=_check_echo,
    )
    echo.add_argument(
        "--backend",
        metavar="NAME",
        help="backend to use (default: the ASYCAMORE_BACKEND environment variable if set, "
        "else the best one here; see 'asycamore backends')",
    )
    echo.add_argument(
        "--host",
        default="127.0.0.1",
        help="address or name to serve on, every address it resolves to; IPv6 as ::1 or "
        "[::1] (default: %(default)s)",
    )
    echo.add_argument(
        "--port", type=_port, default=0, help="port, 0-65535 (default: 0, any free port)"
    )
    echo.add_argument(
        "--udp",
        action="store_true",
        help="echo UDP datagrams instead; not with --tls-cert/--tls-key (default: TCP)",
    )
    echo.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS 1.2+ with this PEM certificate chain; needs --tls-key "
        "(default: none, plain TCP)",
    )
    echo.add_argument(
        "--tls-key",
        metavar="FILE",
        help="the unencrypted PEM private key of --tls-cert (default: none)",
    )
    echo.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help=f"serve from N processes (1-{MAX_WORKERS}) under a supervisor "
        "(default: none, serve in this process)",
    )
    echo.add_argument(
        "--stats-interval",
        type=_stats_interval,
        metavar="SECONDS",
        help="print a line of name=value service statistics to stderr every SECONDS, "
        f"{MIN_STATS_INTERVAL:g} to {MAX_STATS_INTERVAL:g}; with --workers, each worker "
        "prints its own, with its pid (default: none)",
    )
    echo.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on this port of --host (0: any free "
        "port); needs asycamore[metrics], not with --workers (default: none)",
    )
    echo.set_defaults(run=_cmd_echo)

    bench = commands.add_parser(
        "bench",
        help="a short loopback benchmark of every backend",
        description="Measure every available backend, and the asyncio event loop as a "
        "reference, over loopback; progress on stderr, a table of results at the end.",
    )
    bench.add_argument(
        "--seconds",
        type=_seconds,
        default=1.0,
        help=f"duration of each measurement, {MIN_BENCH_SECONDS:g} to {MAX_BENCH_SECONDS:g} "
        "(default: %(default)g)",
    )
    bench.add_argument(
        "--json", action="store_true", help="print the results as JSON (default: a table)"
    )
    bench.set_defaults(run=_cmd_bench)
    return parser


def _check_echo(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of ``asycamore echo``'s options, if anything."""
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together: give both or neither"
    if args.udp and args.tls_cert is not None:
        return "--udp cannot be combined with --tls-cert/--tls-key"
    if args.metrics_port is not None and args.workers is not None:
        return "--metrics-port cannot be combined with --workers (yet)"
    return None


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


def _seconds_in(text: str, low: float, high: float) -> float:
    # Plain decimal notation only: float() would also take " 1", "1_0" and "nan".  One
    # message whatever the fault: the user needs the accepted range, not our taxonomy.
    if _DECIMAL.fullmatch(text):
        value = float(text)
        if low <= value <= high:
            return value
    raise argparse.ArgumentTypeError(
        f"expected a decimal number of seconds from {low:g} to {high:g}, not {text!r}"
    )


def _seconds(text: str) -> float:
    return _seconds_in(text, MIN_BENCH_SECONDS, MAX_BENCH_SECONDS)


def _stats_interval(text: str) -> float:
    return _seconds_in(text, MIN_STATS_INTERVAL, MAX_STATS_INTERVAL)


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

    return serve_echo(
        backend=args.backend,
        host=args.host,
        port=args.port,
        udp=args.udp,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        workers=args.workers,
        stats_interval=args.stats_interval,
        metrics_port=args.metrics_port,
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
        prog = exc.prog if isinstance(exc, _ParseError) else "asycamore"
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return status
