"""Smoke tests of ``asycamore bench`` (``test_benchmarks.py`` has the suite's).

They check that the benchmarks run end to end and report sane, complete results; they
assert nothing about speed (the numbers are benchmark results, not test outcomes).
"""

from __future__ import annotations

import json
import sys

import pytest

from asycamore import bench
from asycamore.cli import main
from asycamore.tables import text_table

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith(("linux", "darwin", "freebsd")), reason="POSIX loopback only"
)


def test_bench_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "--seconds", "0.05", "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    document = json.loads(captured.out)
    results = document["results"]
    subjects = {(r["workload"], r["subject"]) for r in results}
    assert ("dispatch", "asyncio") in subjects
    assert ("ping-pong", "asyncio") in subjects
    for name in bench._available_backends():
        assert ("dispatch", name) in subjects
        assert ("ping-pong", name) in subjects
    for r in results:
        if r["workload"] == "dispatch" or r["subject"] == "asyncio":
            assert r["value"] > 0
        if r["subject"] == "asyncio" and r["value"]:
            assert r["ratio"] == pytest.approx(1.0)
    # Progress goes to stderr, one line per step.
    assert "[1/" in captured.err
    assert "machine" in document


def test_bench_command_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["WORKLOAD", "SUBJECT", "RESULT", "RATIO", "NOTE"]
    assert "asyncio" in out


@pytest.mark.parametrize("seconds", ["0", "1e308", "601", "1e-300", "0.001"])
def test_bench_rejects_bad_seconds(capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    """Non-positive and absurd durations are refused."""
    assert main(["bench", "--seconds", seconds]) == 2
    assert "is not a number of seconds in [0.01, 600]" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["-1", "inf", "nan", " 1", "1_0", "٣", "0x10", ""])
def test_bench_rejects_what_is_not_a_plain_number(
    capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    """inf ran forever; float() also takes spaces, underscores and other digits."""
    assert main(["bench", "--seconds", seconds]) == 2
    assert "invalid number" in capsys.readouterr().err


def test_format_table_and_ratios() -> None:
    results = [
        bench.BenchResult("dispatch", "asyncio", 100.0, "calls/s"),
        bench.BenchResult("dispatch", "epoll", 150.0, "calls/s"),
        bench.BenchResult("ping-pong", "epoll", None, "msgs/s", "failed"),
    ]
    bench._add_ratios(results)
    assert results[1].ratio == pytest.approx(1.5)
    assert results[2].ratio is None
    table = bench.format_table(results).splitlines()
    assert "1.50x" in table[2]
    assert table[3].split()[:3] == ["ping-pong", "epoll", "-"]


def test_text_table_aligns_and_strips() -> None:
    rows = [("A", "LONGER", "C"), ("aaa", "b", "")]
    assert text_table(rows).splitlines() == ["A    LONGER  C", "aaa  b"]
    assert text_table([]) == ""
