"""Smoke tests of ``asycamore bench`` (``test_benchmarks.py`` has the suite's).

They check that the benchmarks run end to end and report sane, complete results; they
assert nothing about speed (the numbers are benchmark results, not test outcomes).
"""

from __future__ import annotations

import json
import sys

import pytest

from asycamore import bench, cli
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


@pytest.mark.parametrize(
    "seconds",
    ["0", "1e308", "601", "1e-300", "0.001", "-1", "inf", "nan", " 1", "1_0", "٣", "0x10", ""],
)
def test_bench_rejects_bad_seconds(capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    """Non-positive and absurd durations are refused (inf ran forever), and so is what
    float() takes but is no plain number (spaces, underscores, other digits), all with
    the one message that gives the range (test_cli_backends runs the command)."""
    assert main(["bench", "--seconds", seconds]) == 2
    assert f"a decimal number of seconds from 0.01 to 600, not {seconds!r}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(("text", "value"), [("0.01", 0.01), ("600", 600.0), ("1e2", 100.0)])
def test_bench_seconds_accepts_the_range(text: str, value: float) -> None:
    assert cli._seconds(text) == value


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
