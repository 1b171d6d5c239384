"""Aligned plain-text tables, for the command line and the benchmarks.

One implementation for every table asycamore prints (``asycamore backends``,
``asycamore bench``) and for the repository's benchmark suite, which imports it from
the installed package, so they all align the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """*rows* (the first one is the header) as left-aligned columns two spaces apart.

    Every row has as many cells as the first.  Trailing spaces are stripped from each
    line, so an empty last column leaves no padding behind.
    """
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
