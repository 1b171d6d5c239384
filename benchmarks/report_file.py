"""The text file a benchmark script writes its report to, and the two options that move
it (``--out FILE``) or skip it (``--no-save``): one definition for every script beside
this one that writes a single report.

A module of its own, importing nothing of asycamore: the scripts that serve as their
own asyncio or uvloop reference servers, or run themselves under valgrind, parse their
options before deciding what to import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out FILE`` (default ``benchmarks/results/<name>``) and ``--no-save``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / name,
        help=f"results file (default: benchmarks/results/{name})",
    )
    parser.add_argument("--no-save", action="store_true", help="print only, write no file")


def save(args: argparse.Namespace, report: str) -> None:
    """Write *report* to ``args.out``, unless ``args.no_save``."""
    if not args.no_save:
        args.out.write_text(report + "\n")
