"""Smoke tests of ``asycamore bench`` and ``benchmarks/run.py``.

They check that the benchmarks run end to end and report sane, complete results; they
assert nothing about speed (the numbers are benchmark results, not test outcomes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asycamore import bench
from asycamore.cli import main

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "benchmarks" / "run.py"

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


def test_bench_rejects_bad_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--seconds", "0"]) == 2
    assert "not a positive number" in capsys.readouterr().err


def test_idle_dispatch_cost_select_stops_at_fd_setsize() -> None:
    bench.raise_nofile_limit()
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs more than 1200 descriptors")
    assert bench.idle_dispatch_cost("select", 1100, 0.01) is None
    cost = bench.idle_dispatch_cost("poll", 100, 0.01)
    assert cost is not None
    assert cost > 0


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


@pytest.mark.skipif(not RUN_PY.exists(), reason="benchmarks/ is not in this tree")
def test_benchmarks_run_quick(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(RUN_PY),
        "--quick",
        "--only",
        "dispatch,idle,pingpong,bulk",
        "--subjects",
        "asycamore-epoll,asycamore-poll,asyncio,selectors,c-epoll",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    assert set(document["workloads"]) >= {"dispatch", "pingpong"}
    assert document["workloads"]["pingpong"]["subjects"]["asyncio"]["median"] > 0
    for subject in ("asyncio", "selectors"):
        assert subject in document["idle"]["subjects"]
    assert (tmp_path / "latest.txt").read_text().startswith("workload")
    assert (tmp_path / "latest-table.rst").exists()
    assert "load average" in proc.stdout


@pytest.mark.parametrize(("mode", "conns", "size"), [("bulk", 2, 65536), ("connrate", 4, 64)])
def test_python_loadgen_modes(mode: str, conns: int, size: int) -> None:
    with bench.ServerProcess(bench.asyncio_echo_command()) as server:
        command = [
            *bench.python_loadgen_command(),
            "--port", str(server.port), "--mode", mode, "--conns", str(conns),
            "--size", str(size), "--seconds", "0.1", "--warmup", "0.02",
        ]  # fmt: skip
        result = bench.run_loadgen(command, server, timeout=60)
    assert result.mode == mode
    assert result.errors == 0
    assert result.rate > 0
    assert result.generator == "python"
