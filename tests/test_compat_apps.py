"""Unmodified third-party asyncore/asynchat programs on asycamore.compat, served to real
clients nobody here wrote.

Each server runs in a child process started as ``python -c "<install(), then run the
program's own main>"``: the one added line of the migration guide and nothing else.
SIGINT stops it, which also checks that KeyboardInterrupt leaves asyncore's loop.

- pyftpdlib (its ``python -m pyftpdlib`` command line, asynchat channels on its own
  IOLoop), with the standard library's :mod:`ftplib` as the client;
- on Python 3.11, the standard library's own ``smtpd`` (``asyncore.loop``), with
  :mod:`smtplib` (3.11's smtpd refuses to import on 3.12+: it calls
  ``warnings._deprecated(remove=(3, 12))``, which raises there).
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

import asycamore
from asycamore.testing import deadline

BACKENDS = [info.name for info in asycamore.list_backends() if info.available]

INSTALL_AND_RUN = (
    "import runpy, sys\n"
    "import asycamore.compat\n"
    "asycamore.compat.install()\n"
    "{run}\n"
    # After a clean stop: say which asyncore the program really used.
    "print('ASYNCORE', {probe}.__name__, file=sys.stderr, flush=True)\n"
)


def start(
    run: str, probe: str, args: list[str], backend: str, ready: str
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Start the program; return it and the match of *ready* on a stderr line."""
    code = INSTALL_AND_RUN.format(run=run, probe=probe)
    env = {**os.environ, "ASYCAMORE_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    with deadline(30.0, "the server's start"):
        for line in proc.stderr:  # ends at EOF if the program dies
            seen.append(line)
            match = re.search(ready, line)
            if match:
                return proc, match
            if len(seen) > 50:
                break
    proc.kill()
    proc.wait()
    pytest.fail("the server did not start:\n" + "".join(seen))


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT, as Ctrl-C would; return (stdout, rest of stderr)."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the server did not stop on SIGINT")
    return out, err


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ftp_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "readme.txt").write_bytes(b"served by pyftpdlib on asycamore\n")
    yield root


def test_pyftpdlib_serves_ftplib(backend, ftp_root):
    pytest.importorskip("pyftpdlib", reason="pyftpdlib is in the test extra")
    proc, match = start(
        "runpy.run_module('pyftpdlib', run_name='__main__', alter_sys=True)",
        "sys.modules['pyftpdlib.ioloop'].asyncore",
        ["-i", "127.0.0.1", "-p", "0", "-d", str(ftp_root), "-w"],
        backend,
        r"starting FTP server on 127\.0\.0\.1:(\d+)",
    )
    try:
        payload = os.urandom(300_000)  # more than one socket buffer, through async_chat
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", int(match.group(1)), timeout=10)
            ftp.login()  # anonymous
            ftp.storbinary("STOR upload.bin", io.BytesIO(payload))
            assert sorted(ftp.nlst()) == ["readme.txt", "upload.bin"]
            downloaded = io.BytesIO()
            ftp.retrbinary("RETR upload.bin", downloaded.write)
            lines: list[str] = []
            ftp.retrlines("RETR readme.txt", lines.append)
            ftp.delete("upload.bin")
        assert downloaded.getvalue() == payload
        assert lines == ["served by pyftpdlib on asycamore"]
        assert not (ftp_root / "upload.bin").exists()
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    assert "ASYNCORE asycamore.compat.asyncore" in err


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="3.11's smtpd raises RuntimeError on import on 3.12+"
)
def test_stdlib_smtpd_serves_smtplib(backend):
    with socket.socket() as probe:  # a free port: smtpd cannot report one it chose
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc, _ = start(
        "import warnings; warnings.simplefilter('ignore', DeprecationWarning)\n"
        "print('listening', file=sys.stderr, flush=True)\n"
        "g = runpy.run_module('smtpd', run_name='__main__', alter_sys=True)",
        "g['asyncore']",
        ["-n", "-c", "DebuggingServer", f"127.0.0.1:{port}"],
        backend,
        "listening",
    )
    try:
        message = EmailMessage()
        message["From"] = "alice@example.org"
        message["To"] = "bob@example.org"
        message["Subject"] = "asyncore on asycamore"
        message.set_content("Hello from smtplib.\n" * 200)
        for _ in range(100):  # the server binds just after saying "listening"
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            pytest.fail("smtpd never accepted a connection")
        with client:
            refused = client.send_message(message)
        assert refused == {}
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert "Subject: asyncore on asycamore" in out
    assert out.count("Hello from smtplib.") == 200
    assert "ASYNCORE asycamore.compat.asyncore" in err
