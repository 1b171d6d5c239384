"""Smoke tests of the repository's benchmark suite, ``benchmarks/``.

The suite's modules are scripts, not an installed package: the tests load them from
their files.  Like ``test_bench.py``, they assert nothing about speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from asycamore.bench import harness, programs

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RUN_PY = BENCHMARKS / "run.py"

if not RUN_PY.exists():
    pytest.skip("benchmarks/ is not in this tree", allow_module_level=True)
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith(("linux", "darwin", "freebsd")), reason="POSIX loopback only"
)


def _load(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (under a name that cannot clash with another)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


probes = _load("probes")
loadgen = _load("loadgen")


def test_idle_dispatch_cost_select_stops_at_fd_setsize() -> None:
    harness.raise_nofile_limit()
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs more than 1200 descriptors")
    assert probes.idle_dispatch_cost("select", 1100, 0.01) is None
    cost = probes.idle_dispatch_cost("poll", 100, 0.01)
    assert cost is not None
    assert cost > 0


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
    with harness.ServerProcess(programs.asyncio_echo_command()) as server:
        command = [
            *loadgen.command(),
            "--port", str(server.port), "--mode", mode, "--conns", str(conns),
            "--size", str(size), "--seconds", "0.1", "--warmup", "0.02",
        ]  # fmt: skip
        result = harness.run_loadgen(command, server, timeout=60)
    assert result.mode == mode
    assert result.errors == 0
    assert result.rate > 0
    assert result.generator == "python"


@pytest.mark.parametrize(
    ("workload", "subject"),
    [
        ("dispatch", "selectors"),
        ("dispatch", "asycamore"),
        ("message", "raw"),
        ("message", "selectors"),
        ("message", "asycamore"),
        ("connection", "selectors"),
        ("connection", "asycamore"),
    ],
)
def test_instruction_count_workloads_run(workload: str, subject: str) -> None:
    # What instructions.py runs under valgrind, run plainly with a few operations: each
    # workload finishes by itself (no valgrind here: the counting is too slow for tests).
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "instructions.py"), "--child", workload, subject, "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_pair_ratios_compare_rates_and_cpu_per_operation_round_by_round() -> None:
    sys.path.insert(0, str(BENCHMARKS))  # run.py imports loadgen and probes beside it
    try:
        run = _load("run")
    finally:
        sys.path.remove(str(BENCHMARKS))

    def rounds(*pairs: tuple[float, float]) -> dict[str, object]:
        return {"rounds": [{"value": value, "server_cpu": cpu} for value, cpu in pairs]}

    results = {
        "workloads": {
            "connrate": {
                "subjects": {
                    # Generator-bound: the same rate, but twice the CPU per connection.
                    "asycamore-epoll": rounds((100.0, 2.0), (200.0, 4.0), (300.0, 3.0)),
                    "selectors": rounds((100.0, 1.0), (100.0, 1.0), (300.0, 1.5)),
                }
            }
        }
    }
    assert run.pair_ratio(results, "connrate", "asycamore-epoll", "selectors") == 1.0
    cpu = run.pair_ratio(results, "connrate", "asycamore-epoll", "selectors", key="cpu")
    assert cpu == 0.5
    assert run.pair_ratio(results, "pingpong", "asycamore-epoll", "selectors") is None


def test_process_bench_runs_quick() -> None:
    """benchmarks/process_bench.py with tiny sizes: both workloads, every subject it can
    import (uvloop skipped with a line when it is not installed), a table each."""
    command = [
        sys.executable,
        str(BENCHMARKS / "process_bench.py"),
        "--mb",
        "4",
        "--spawns",
        "5",
        "--seconds",
        "5",
        "--rounds",
        "2",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    out = proc.stdout
    assert "throughput: 4 MB through cat, 2 rounds" in out
    assert "spawn: /bin/true, up to 5 children" in out
    for subject in ("asycamore-epoll", "asyncio"):
        assert out.count(f"\n{subject} ") == 2, out
    if "uvloop: skipped" not in out:
        assert out.count("\nuvloop ") == 2, out
    assert "short of" not in out or "asycamore" not in out.split("short of")[1], out
