"""Smoke tests of the repository's benchmark suite, ``benchmarks/``.

The suite's modules are scripts, not an installed package: the tests load them from
their files.  Like ``test_bench.py``, they assert nothing about speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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
    sys.path.insert(0, str(BENCHMARKS))  # scripts import the modules beside them
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


probes = _load("probes")
loadgen = _load("loadgen")
http_bench = _load("http_bench")

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs wrk (Debian: apt-get install wrk)"
)
needs_aiohttp = pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="needs aiohttp (pip install aiohttp)"
)


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
    assert (tmp_path / "latest.txt").read_text().startswith("Measured ")
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
    run = _load("run")

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


def test_process_bench_runs_quick(tmp_path: Path) -> None:
    """benchmarks/process_bench.py with tiny sizes: both workloads, every subject it can
    import (uvloop skipped with a line when it is not installed), a table each, written
    to --out as printed, under the provenance line."""
    report = tmp_path / "process_bench.txt"
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
        "--out",
        str(report),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    out = proc.stdout
    assert report.read_text() == out
    assert out.startswith("Measured "), out
    assert "`python benchmarks/process_bench.py --mb 4 " in out.splitlines()[0], out
    assert "throughput: 4 MB through cat, 2 rounds" in out
    assert "spawn: /bin/true, up to 5 children" in out
    for subject in ("asycamore-epoll", "asyncio"):
        assert out.count(f"\n{subject} ") == 2, out
    if "uvloop: skipped" not in out:
        assert out.count("\nuvloop ") == 2, out
    assert "short of" not in out or "asycamore" not in out.split("short of")[1], out


# -- results files: each script writes what it prints, under where it was measured -------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll and /proc")


def _report_lines(
    tmp_path: Path, script: str, *args: str, env: dict[str, str] | None = None
) -> list[str]:
    """Run benchmarks/*script* with *args* and ``--out``; check that the file holds what
    it printed, under the provenance line naming the script; return the lines after it."""
    out = tmp_path / "report.txt"
    command = [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = out.read_text()
    assert report == proc.stdout
    first, *rest = report.splitlines()
    assert first.startswith("Measured "), first
    assert f"`python benchmarks/{script} {args[0]} " in first, first
    return rest


@pytest.mark.parametrize(
    ("script", "args", "heading", "row"),
    [
        pytest.param(
            "udp_bench.py",
            "--rounds 1 --seconds 0.1 --clients 1 --backends epoll",
            "UDP ping-pong: 1 sockets",
            "asycamore-epoll ",
            id="udp_bench",
            marks=linux_only,
        ),
        pytest.param(
            "compat_bench.py",
            "--idle 10 --passes 3 --roundtrips 200 --pairs 1 --rounds 1",
            "Python ",
            "ping-pong (1 pair, ",
            id="compat_bench",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("asyncore") is None,
                reason="no reference asyncore (Python 3.12+: pip install pyasyncore)",
            ),
        ),
        pytest.param(
            "proxy_flow.py",
            "--megabytes 1 --pause 0.1 --stall 5",
            "1 MB through examples/proxy.py",
            "with the wiring ",
            id="proxy_flow",
            marks=linux_only,
        ),
        pytest.param(
            "echo_path.py",
            "--conns 2 --seconds 0.01 --rounds 1 --backend epoll",
            "server CPU per 64-byte message, 2 connections",
            "epoll service ",
            id="echo_path",
            marks=linux_only,
        ),
        pytest.param(
            "conn_path.py",
            "--batch 2 --seconds 0.01 --rounds 1",
            "server CPU per connection",
            "asycamore epoll service ",
            id="conn_path",
            marks=linux_only,
        ),
    ],
)
def test_a_benchmark_writes_its_table_under_its_provenance(
    tmp_path: Path, script: str, args: str, heading: str, row: str
) -> None:
    blank, first, *rest = _report_lines(tmp_path, script, *args.split())
    assert blank == ""
    assert first.startswith(heading), first
    assert any(line.startswith(row) for line in rest), rest


@linux_only
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_bench_writes_its_tables_and_the_json(tmp_path: Path) -> None:
    data = tmp_path / "tls.json"
    args = ["--rounds", "1", "--only", "bulk", "--megabytes", "1", "--streams", "1"]
    blank, first, *rest = _report_lines(tmp_path, "tls_bench.py", *args, "--json", str(data))
    assert blank == ""
    assert first.startswith("TLS echo, 1 rounds"), first
    assert any(line.startswith("  asycamore ") for line in rest), rest
    assert json.loads(data.read_text())["bulk"]["medians"]["asycamore"] > 0


def test_instructions_writes_its_table_and_the_hash_seed(tmp_path: Path) -> None:
    """instructions.py with a stand-in for valgrind (real counting is too slow for tests):
    it runs the child as valgrind would and reports the child's operation count as the
    instructions collected, so one operation "costs" one instruction."""
    valgrind = tmp_path / "valgrind"
    valgrind.write_text(
        "#!/bin/sh\n"
        "shift 2  # --tool=callgrind --callgrind-out-file=/dev/null\n"
        '"$@" || exit\n'
        "for n; do :; done\n"
        'echo "==1== Collected : $n" >&2\n'
    )
    valgrind.chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "PYTHONHASHSEED": "0"}
    seed, blank, first, *rest = _report_lines(
        tmp_path, "instructions.py", "--only", "dispatch", env=env
    )
    assert seed == "PYTHONHASHSEED=0"
    assert blank == ""
    assert first.startswith("user-space instructions per operation"), first
    assert [line.split() for line in rest[1:]] == [
        ["dispatch", "selectors", "1", "+0"],
        ["dispatch", "asycamore", "1", "+0"],
    ], rest


def test_the_reference_is_the_best_asyncio_configuration_of_the_same_python_per_round() -> None:
    run = _load("run")

    def subject(name: str, python: str, config: bool = True) -> object:
        return run.Subject(name, [], python=python, asyncio_config=config)

    subjects = [
        subject("asyncio", "3.11.7"),
        subject("asyncio-buffered", "3.11.7"),
        subject("uvloop", "3.11.7", config=False),
        subject("asyncio@3.12.1", "3.12.1"),
        run.Subject("c-epoll", []),
    ]
    rounds = {
        # Round 1: buffered has the best rate, plain the lowest CPU per message.
        "asyncio": [{"value": 100.0, "server_cpu": 0.5}, {"value": 50.0, "server_cpu": 1.0}],
        "asyncio-buffered": [{"value": 200.0, "server_cpu": 2.0}, {"value": None}],
        "uvloop": [{"value": 900.0, "server_cpu": 0.1}, {"value": 900.0, "server_cpu": 0.1}],
        "asyncio@3.12.1": [{"value": 7.0, "server_cpu": 1.0}, {"value": 7.0, "server_cpu": 1.0}],
    }
    best = run.best_asyncio(rounds, subjects, "3.11.7")
    assert best == [{"value": 200.0, "cpu_per_op": 0.005}, {"value": 50.0, "cpu_per_op": 0.02}]
    assert run.best_asyncio(rounds, subjects, "") is None
    summary = run.summarize(
        [{"value": 400.0, "server_cpu": 1.0}, {"value": 100.0, "server_cpu": 1.0}], best
    )
    assert summary["ratios"] == [2.0, 2.0]
    assert summary["cost_ratio"] == pytest.approx((0.005 / 0.0025 + 0.02 / 0.01) / 2)


def test_a_server_gets_the_environment_its_subject_names() -> None:
    code = "import os; print('listening on 127.0.0.1:' + os.environ['BENCH_PORT'], flush=True)"
    with harness.ServerProcess([sys.executable, "-c", code], env={"BENCH_PORT": "4242"}) as srv:
        assert srv.port == 4242


@needs_wrk
@needs_aiohttp
def test_http_bench_runs_quick() -> None:
    """benchmarks/http_bench.py --quick: a row with a positive req/s for asyncio and for
    asycamore on epoll, and no run marked failed."""
    command = [sys.executable, str(BENCHMARKS / "http_bench.py"), "--quick", "--no-save"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["subject"][1] == "req/s", proc.stdout
    for subject in ("asyncio", "asycamore-epoll"):
        assert float(rows[subject][1].replace(",", "")) > 0, proc.stdout
    assert "failed" not in proc.stdout + proc.stderr


@needs_wrk
@needs_aiohttp
def test_http_bench_parses_real_wrk_output() -> None:
    """parse_wrk on what wrk really printed, against the aiohttp server on asycamore's
    loop: every figure found, in milliseconds, and no errors."""
    command = [sys.executable, str(http_bench.SERVER), "--loop", "asycamore"]
    with harness.ServerProcess(command) as server:
        out = http_bench.run_wrk(f"http://{server.host}:{server.port}/", 4, 1, None)
    result = http_bench.parse_wrk(out)
    assert result.requests > 0
    assert result.requests_per_second > 0
    latency = [result.latency_ms[p] for p in ("50", "75", "90", "99")]
    assert 0 < latency[0] <= latency[1] <= latency[2] <= latency[3] < 5000, out
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, out
    assert result.non_2xx_3xx == 0
    assert result.problems() == ""


def test_http_bench_server_that_does_not_start_is_one_line() -> None:
    """A server that exits before listening fails the run with one line, no traceback."""
    command = [sys.executable, "-c", "raise SystemExit('no server here')"]
    with pytest.raises(http_bench.RunFailed) as failure:
        http_bench.measure(command, 1, 1, (None, None))
    message = str(failure.value)
    assert message.startswith("the server did not start: ")
    assert "\n" not in message
    assert "Traceback" not in message


def test_http_bench_without_wrk_says_so_and_exits_0(tmp_path: Path) -> None:
    """Without wrk, http_bench.py prints one line saying so and exits 0 (as a suite of
    run.py, a missing tool is not a failure)."""
    # An empty PATH hides wrk; the interpreter's path is absolute.
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "http_bench.py"), "--quick", "--no-save"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "http: skipped: wrk is not installed (Debian: apt-get install wrk)\n"


def test_a_server_that_does_not_start_is_reported_with_its_stderr() -> None:
    code = "import sys; sys.stderr.write('no such backend: nope\\n'); print('hello')"
    with pytest.raises(RuntimeError, match="did not start: 'hello' no such backend: nope"):
        harness.ServerProcess([sys.executable, "-c", code])


def test_run_refuses_a_python_it_cannot_find_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--quick", "--pythons", "9.99"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("error: --pythons: no interpreter '9.99' (a version like 3.12, or a path)")
    )
    assert "Traceback" not in proc.stderr


def test_the_asyncio_configurations_differ_only_as_named() -> None:
    run = _load("run")
    peers = {s.name: s for s in run.peer_subjects(sys.executable, "@x", ("pingpong",))}
    plain, tuned, buffered = (
        peers["asyncio@x"],
        peers["asyncio-tuned@x"],
        peers["asyncio-buffered@x"],
    )
    assert plain.command == tuned.command == buffered.command[:-1]
    assert buffered.command[-1] == "--buffered"
    assert plain.env is None and buffered.env is None
    assert tuned.env == programs.MALLOC_TUNED
    assert all(s.asyncio_config for s in (plain, tuned, buffered))
    assert all(s.workloads == ("pingpong",) for s in peers.values())


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("gcc") is None,
    reason="glibc's malloc, /proc and the C load generator (gcc)",
)
def test_asyncio_cause_shows_a_fresh_asyncio_server_faulting_on_every_read() -> None:
    # What the benchmarks page says, checked: plain asyncio takes page faults on each
    # read (its recv(256 KiB) is mmap'ed), tuned and buffered take none.
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "asyncio_cause.py"), "--pythons", sys.executable,
         "--rounds", "1", "--seconds", "0.3", "--no-save"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {
        line.split()[1]: line.split()
        for line in proc.stdout.splitlines()
        if line.split()[1:2] in (["plain"], ["tuned"], ["buffered"])
    }
    faults = {config: float(row[4]) for config, row in rows.items()}
    assert faults["plain"] >= 1.0
    assert faults["tuned"] < 0.2
    assert faults["buffered"] < 0.2
