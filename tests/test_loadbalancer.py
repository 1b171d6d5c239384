"""The load-balancer samples in examples/ (HAProxy, nginx stream) in front of two
``asycamore echo`` processes: every connection is echoed, and both backends get some.

Skipped, with the reason, where the load balancer is not installed.  Loopback only;
every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROC_TCP = Path("/proc/net/tcp")
DEADLINE = 10.0

pytestmark = pytest.mark.skipif(
    not PROC_TCP.exists(), reason="counts each backend's connections in /proc/net/tcp"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def _echo_servers(count: int) -> Iterator[list[int]]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            proc = stack.enter_context(
                _process(
                    [sys.executable, "-m", "asycamore", "echo"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
            line = proc.stdout.readline().decode()  # type: ignore[union-attr]
            assert line.startswith("listening on "), line
            ports.append(int(line.rsplit(":", 1)[1]))
        yield ports


def _established_to(port: int) -> int:
    """Established TCP connections whose local port is *port* (server side)."""
    count = 0
    for line in PROC_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the load balancer exited with {proc.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {DEADLINE} s")


def _check_spread(frontend: int, backends: list[int]) -> None:
    clients = []
    try:
        for i in range(8):
            client = socket.create_connection(("127.0.0.1", frontend), timeout=5)
            clients.append(client)
            client.sendall(b"hello %d" % i)
            assert client.recv(64) == b"hello %d" % i
        # The proxied connections are all open now: each backend holds some of them.
        counts = [_established_to(port) for port in backends]
        assert sum(counts) == len(clients), counts
        assert all(counts), counts
    finally:
        for client in clients:
            client.close()


def test_haproxy_sample_spreads_over_two_echo_servers(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    config = EXAMPLES / "haproxy.cfg"
    with _echo_servers(2) as backends:
        frontend = _free_port()
        env = {
            **os.environ,
            "FRONTEND": f"127.0.0.1:{frontend}",
            "BACKEND1": f"127.0.0.1:{backends[0]}",
            "BACKEND2": f"127.0.0.1:{backends[1]}",
        }
        check = subprocess.run(
            [haproxy, "-c", "-f", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with _process(
            [haproxy, "-db", "-f", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as proc:
            _wait_for_port(frontend, proc)
            _check_spread(frontend, backends)


def test_nginx_stream_sample_spreads_over_two_echo_servers(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx libnginx-mod-stream)")
    text = (EXAMPLES / "nginx-stream.conf").read_text()
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if not module.exists():
        # Built in (or elsewhere): nginx -V tells; without the module line it must be built in.
        text = "\n".join(line for line in text.splitlines() if "load_module" not in line)
        version = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
        if "--with-stream" not in version.stderr:
            pytest.skip("this nginx has no stream module (libnginx-mod-stream)")
    with _echo_servers(2) as backends:
        frontend = _free_port()
        text = (
            text.replace("@FRONTEND@", f"127.0.0.1:{frontend}")
            .replace("@BACKEND1@", f"127.0.0.1:{backends[0]}")
            .replace("@BACKEND2@", f"127.0.0.1:{backends[1]}")
        )
        (tmp_path / "nginx-stream.conf").write_text(text)
        (tmp_path / "logs").mkdir()  # nginx opens its default error log before the config's
        argv = [nginx, "-p", str(tmp_path), "-c", "nginx-stream.conf", "-e", "stderr"]
        check = subprocess.run(
            [*argv, "-t"], capture_output=True, text=True, timeout=DEADLINE, check=False
        )
        assert check.returncode == 0, check.stderr
        with _process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            _wait_for_port(frontend, proc)
            _check_spread(frontend, backends)
