"""TLS (asycamore.tcpsocket.TLSConnection) against peers nobody here wrote.

The peers are the ``openssl s_client`` and ``openssl s_server`` commands and Python's
own :mod:`ssl` sockets (in threads); certificates come from trustme.  asycamore runs in
the test's thread, pumped by :func:`pump` with a deadline: every wait is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asycamore
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Protocol, Service
from asycamore.tcpsocket import Timers, TLSConnection, connect_tcp, listen_tcp

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
VERSIONS = ["1.2", "1.3"]
TLS_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# -- certificates ---------------------------------------------------------------------------


@dataclass
class PKI:
    ca: trustme.CA
    other_ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def server_context(self, version: str | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.configure_cert(context)
        if version is not None:
            context.minimum_version = context.maximum_version = TLS_VERSION[version]
        return context

    def client_context(self, version: str | None = None, ca: str = "ca") -> ssl.SSLContext:
        context = ssl.create_default_context()
        (self.ca if ca == "ca" else self.other_ca).configure_trust(context)
        if version is not None:
            context.minimum_version = context.maximum_version = TLS_VERSION[version]
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    where = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.example")
    files = {
        "ca_file": ca.cert_pem,
        "other_ca_file": other_ca.cert_pem,
        "cert_file": server.cert_chain_pems[0],
        "key_file": server.private_key_pem,
        "client_cert_file": client.cert_chain_pems[0],
        "client_key_file": client.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = where / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return PKI(ca, other_ca, server, client, **paths)


# -- harness --------------------------------------------------------------------------------


@pytest.fixture
def service() -> Iterator[Service]:
    with Service() as service:
        yield service


def pump(service: Service, until: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        service.run_once(0.02)


def pump_while(service: Service, thread: threading.Thread, timeout: float = 8.0) -> None:
    pump(service, lambda: not thread.is_alive(), timeout)
    thread.join()


class Recorder(Protocol):
    """Records everything; echoes if asked; closes on a line ``quit``."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.echo = echo
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[BaseException | None] = []
        self.failed: list[BaseException] = []
        self.versions: list[str | None] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.events.append("made")
        self.versions.append(getattr(transport, "tls_version", None))

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.echo and self.transport is not None:
            self.transport.write(data)
        if self.echo and b"quit\n" in self.data and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.append(exc)

    def connection_failed(self, exc: BaseException) -> None:
        self.events.append("failed")
        self.failed.append(exc)

    def handshake_failed(self, exc: BaseException) -> None:
        self.events.append("handshake_failed")
        self.failed.append(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    @property
    def ended(self) -> bool:
        return bool(self.lost or self.failed)


class Server:
    """A Service TLS listener whose protocols are kept for inspection."""

    def __init__(self, service: Service, context: ssl.SSLContext, **options: Any) -> None:
        self.protocols: list[Recorder] = []
        echo = options.pop("echo", True)
        host = options.pop("host", "127.0.0.1")

        def factory() -> Recorder:
            protocol = Recorder(echo=echo)
            self.protocols.append(protocol)
            return protocol

        self.listener = service.listen_tcp(factory, host, ssl=context, **options)
        self.port = self.listener.port


def python_client(
    port: int, context: ssl.SSLContext, action: Callable[[ssl.SSLSocket], object]
) -> tuple[threading.Thread, list[Any]]:
    """Run *action* on a Python ssl client socket in a thread; results/errors collected."""
    results: list[Any] = []

    def run() -> None:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=8) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                results.append(action(tls))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def recv_exactly(sock: ssl.SSLSocket | socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A peer process; stdout and stderr go to files (no pipe to fill up)."""

    def __init__(self, args: list[str], where: Path, stdin: bytes | None) -> None:
        self.stdout_path, self.stderr_path = where / "stdout", where / "stderr"
        stdin_file: Any = subprocess.PIPE
        if stdin is not None:
            (where / "stdin").write_bytes(stdin)
            stdin_file = (where / "stdin").open("rb")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(args, stdin=stdin_file, stdout=out, stderr=err)
        if stdin is not None:
            stdin_file.close()

    @property
    def out(self) -> bytes:
        return self.stdout_path.read_bytes()

    @property
    def err(self) -> bytes:
        return self.stderr_path.read_bytes()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


@contextlib.contextmanager
def popen(args: list[str], tmp_path: Path, stdin: bytes | None = None) -> Iterator[Process]:
    process = Process(args, tmp_path, stdin)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
        process.proc.wait(5)
        if process.proc.stdin is not None:
            with contextlib.suppress(OSError):
                process.proc.stdin.close()


def pump_process(service: Service, process: Process, timeout: float = 8.0) -> None:
    pump(service, lambda: process.returncode is not None, timeout)


# -- the basics ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [b.name for b in asycamore.list_backends() if b.available])
@pytest.mark.parametrize("version", VERSIONS)
def test_asycamore_client_and_server(pki: PKI, backend: str, version: str) -> None:
    with Service(backend) as service:
        server = Server(service, pki.server_context())
        client = Recorder()
        tls = service.connect_tcp(
            lambda: client, "127.0.0.1", server.port, ssl=pki.client_context(version)
        )
        assert isinstance(tls, TLSConnection) and tls.connecting
        tls.write(b"written before the handshake\n")  # kept, sent once it completes
        pump(service, lambda: len(client.data) >= 29)
        assert client.data == b"written before the handshake\n"
        assert client.versions == server.protocols[0].versions == [f"TLSv{version}"]
        tls.write(b"quit\n")
        pump(service, lambda: client.ended and server.protocols[0].ended)
        assert client.lost == [None] and server.protocols[0].lost == [None]
        assert client.events == ["made", "eof", "lost"]  # the server's close_notify
        assert service.connection_count == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_python_ssl_client(service: Service, pki: PKI, version: str) -> None:
    server = Server(service, pki.server_context())
    # Small enough for the kernel's buffers: the client sends it all before reading.
    payload = bytes(range(256)) * 160

    def exchange(tls: ssl.SSLSocket) -> tuple[bytes, str | None]:
        version = tls.version()
        tls.sendall(payload)
        echoed = recv_exactly(tls, len(payload))
        tls.unwrap()  # a clean close_notify exchange
        return echoed, version

    thread, results = python_client(server.port, pki.client_context(version), exchange)
    pump_while(service, thread)
    assert results == [(payload, f"TLSv{version}")]
    pump(service, lambda: server.protocols[0].ended)
    assert server.protocols[0].lost == [None]


def test_peer_certificate_alpn_sni(service: Service, pki: PKI) -> None:
    server_context = pki.server_context()
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    names: list[str | None] = []
    server_context.sni_callback = lambda sslobj, name, ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    server = Server(service, server_context)
    client_context = pki.client_context()
    client_context.set_alpn_protocols(["http/1.1"])
    client = Recorder()
    tls = service.connect_tcp(lambda: client, "127.0.0.1", server.port, ssl=client_context,
                              server_hostname="localhost")  # fmt: skip
    assert tls.getpeercert() is None  # not yet
    pump(service, lambda: bool(client.events))
    assert names == ["localhost"]
    assert tls.alpn_protocol == "http/1.1"
    assert tls.tls_version == "TLSv1.3" and tls.handshake_complete
    assert tls.cipher is not None and tls.cipher[1] == "TLSv1.3"
    assert ("DNS", "localhost") in tls.getpeercert()["subjectAltName"]
    assert isinstance(tls.getpeercert(binary_form=True), bytes)
    assert tls.get_extra_info("peercert") == tls.getpeercert()
    assert tls.get_extra_info("peername") == ("127.0.0.1", server.port)
    assert tls.get_extra_info("nope", 5) == 5
    assert tls.server_hostname == "localhost" and not tls.server_side
    pump(service, lambda: bool(server.protocols and server.protocols[0].events))
    server_tls = server.protocols[0].transport
    assert isinstance(server_tls, TLSConnection)
    assert server_tls.alpn_protocol == "http/1.1" and server_tls.server_side
    assert server_tls.getpeercert() is None  # the client sent no certificate
    assert server_tls.connection.handler.tls is server_tls  # type: ignore[union-attr]
    assert not tls.can_write_eof() and not tls.eof_written
    with pytest.raises(NotImplementedError):
        tls.write_eof()
    tls.abort()
    pump(service, lambda: server.protocols[0].ended)


def test_default_context_verifies(service: Service, pki: PKI) -> None:
    """ssl=True: the system's CAs, which do not know trustme's."""
    server = Server(service, pki.server_context())
    client = Recorder()
    service.connect_tcp(lambda: client, "127.0.0.1", server.port, ssl=True)
    pump(service, lambda: client.ended)
    assert client.events == ["failed"]
    assert isinstance(client.failed[0], ssl.SSLCertVerificationError)


def test_wrong_ca(service: Service, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    server = Server(service, pki.server_context())
    client = Recorder()
    service.connect_tcp(
        lambda: client, "127.0.0.1", server.port, ssl=pki.client_context(ca="other")
    )
    pump(service, lambda: client.ended and server.protocols[0].ended)
    assert client.events == ["failed"]
    assert isinstance(client.failed[0], ssl.SSLCertVerificationError)
    # The server hears why (the client's alert), and its protocol never got made.
    assert server.protocols[0].events == ["handshake_failed"]
    assert isinstance(server.protocols[0].failed[0], ssl.SSLError)
    pump(service, lambda: service.connection_count == 0)


def test_wrong_host_name(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context())
    client = Recorder()
    service.connect_tcp(lambda: client, "127.0.0.1", server.port, ssl=pki.client_context(),
                        server_hostname="elsewhere.example")  # fmt: skip
    pump(service, lambda: client.ended)
    assert isinstance(client.failed[0], ssl.SSLCertVerificationError)


def test_connect_to_a_name(service: Service, pki: PKI) -> None:
    """TLS over a connect to a name (resolved and raced, Happy Eyeballs): the name is
    the one checked against the certificate."""
    server = Server(service, pki.server_context(), host="localhost")
    client = Recorder()
    tls = service.connect_tcp(lambda: client, "localhost", server.port, ssl=pki.client_context())
    assert tls.server_hostname == "localhost"
    tls.write(b"by name")
    pump(service, lambda: bytes(client.data) == b"by name")
    assert client.versions == ["TLSv1.3"]


def test_connect_refused_reaches_connection_failed(service: Service, pki: PKI) -> None:
    client = Recorder()
    service.connect_tcp(lambda: client, "127.0.0.1", free_port(), ssl=pki.client_context())
    pump(service, lambda: client.ended)
    assert client.events == ["failed"]
    assert isinstance(client.failed[0], ConnectionRefusedError)
    assert "cannot connect to 127.0.0.1:" in str(client.failed[0])


def test_a_context_for_the_other_side_is_refused(service: Service, pki: PKI) -> None:
    with pytest.raises(ValueError, match="client-side"):
        service.listen_tcp(Recorder, ssl=pki.client_context())
    with pytest.raises(ValueError, match="server-side"):
        service.connect_tcp(Recorder, "127.0.0.1", 1, ssl=pki.server_context())
    assert not service.listeners and service.connection_count == 0


def test_timers_are_required(pki: PKI) -> None:
    with asycamore.create_dispatcher() as context:
        with pytest.raises(ValueError, match="timers"):
            listen_tcp(context, Recorder, ssl=pki.server_context())
        with pytest.raises(ValueError, match="timers"):
            connect_tcp(context, Recorder, "127.0.0.1", 1, ssl=pki.client_context())
        with pytest.raises(TypeError):
            listen_tcp(context, Recorder, ssl=True, timers=Timers())  # type: ignore[arg-type]
        # Without timeouts, no timers are needed.
        listener = listen_tcp(
            context, Recorder, ssl=pki.server_context(), handshake_timeout=None,
            shutdown_timeout=None,
        )  # fmt: skip
        listener.close()


def test_close_and_abort_during_the_handshake(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context())
    first, second = Recorder(), Recorder()
    tls = service.connect_tcp(lambda: first, "127.0.0.1", server.port, ssl=pki.client_context())
    tls.close()  # still connecting: like closing a connecting plain connection
    pump(service, lambda: first.ended)
    assert first.events == ["failed"] and isinstance(first.failed[0], ConnectionAbortedError)
    tls = service.connect_tcp(lambda: second, "127.0.0.1", server.port, ssl=pki.client_context())
    pump(service, lambda: not tls.connection.connecting)
    tls.abort()
    pump(service, lambda: second.ended)
    assert second.events == ["failed"]
    tls.abort()  # harmless afterwards
    tls.close()
    tls.write(b"dropped")


def test_pause_reading_before_the_handshake(service: Service, pki: PKI) -> None:
    """A client paused before the handshake still completes it; data waits."""
    server = Server(service, pki.server_context())
    client = Recorder()
    tls = service.connect_tcp(lambda: client, "127.0.0.1", server.port, ssl=pki.client_context())
    tls.pause_reading()
    tls.write(b"ping")
    pump(service, lambda: client.events == ["made"])
    assert not tls.reading and not tls.connection.reading
    for _ in range(20):
        service.run_once(0.01)
    assert client.data == b""  # echoed, but held back
    tls.resume_reading()
    pump(service, lambda: client.data == b"ping")


def test_set_handler_seam(service: Service) -> None:
    """Connection.set_handler(): the next callbacks go to the new handler, with its own
    receive_memoryview; refused on a closed connection."""
    first, second = Recorder(), Recorder()
    listener = service.listen_tcp(lambda: Recorder(echo=True))
    conn = service.connect_tcp(lambda: first, "127.0.0.1", listener.port)
    pump(service, lambda: first.events == ["made"])

    class Views(Recorder):
        receive_memoryview = True
        kinds: ClassVar[list[type]] = []

        def data_received(self, data: bytes) -> None:
            self.kinds.append(type(data))
            super().data_received(bytes(data))

    views = Views()
    conn.set_handler(views)
    conn.write(b"abc")
    pump(service, lambda: bytes(views.data) == b"abc")
    assert views.kinds == [memoryview] and first.data == b""
    conn.set_handler(second)
    conn.abort()
    assert second.lost == [None] and not views.lost
    with pytest.raises(RuntimeError):
        conn.set_handler(first)


# -- real OpenSSL peers ---------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_against_asycamore(
    service: Service, pki: PKI, version: str, tmp_path: Path
) -> None:
    server = Server(service, pki.server_context())
    args = [
        str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{server.port}", f"-tls1_{version[-1]}",
        "-CAfile", str(pki.ca_file), "-verify_return_error", "-verify_hostname", "localhost",
        "-servername", "localhost", "-quiet",
    ]  # fmt: skip
    with popen(args, tmp_path, b"hello from openssl\nquit\n") as proc:
        pump_process(service, proc)
    assert proc.returncode == 0, proc.err
    assert proc.out == b"hello from openssl\nquit\n"
    assert server.protocols[0].versions == [f"TLSv{version}"]
    pump(service, lambda: server.protocols[0].ended)
    assert server.protocols[0].lost == [None]


@needs_openssl
def test_openssl_s_client_with_the_wrong_ca(service: Service, pki: PKI, tmp_path: Path) -> None:
    server = Server(service, pki.server_context())
    args = [
        str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{server.port}",
        "-CAfile", str(pki.other_ca_file), "-verify_return_error", "-quiet",
    ]  # fmt: skip
    with popen(args, tmp_path, b"") as proc:
        pump_process(service, proc)
    assert proc.returncode != 0
    pump(service, lambda: server.protocols[0].ended)
    assert server.protocols[0].events == ["handshake_failed"]


@contextlib.contextmanager
def s_server(pki: PKI, tmp_path: Path, *extra: str) -> Iterator[tuple[Process, int]]:
    port = free_port()
    args = [
        str(OPENSSL), "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki.cert_file),
        "-key", str(pki.key_file), "-naccept", "1", *extra,
    ]  # fmt: skip
    with popen(args, tmp_path) as proc:
        deadline = time.monotonic() + 8
        while b"ACCEPT" not in proc.out:
            assert time.monotonic() < deadline and proc.returncode is None, proc.err
            time.sleep(0.02)
        yield proc, port


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_asycamore_client_against_openssl_s_server(
    service: Service, pki: PKI, version: str, tmp_path: Path
) -> None:
    """Mutual TLS: s_server demands and verifies our client certificate."""
    extra = ("-rev", f"-tls1_{version[-1]}", "-Verify", "1", "-CAfile", str(pki.ca_file),
             "-verify_return_error")  # fmt: skip
    with s_server(pki, tmp_path, *extra) as (_proc, port):
        context = pki.client_context()
        pki.client.configure_cert(context)
        client = Recorder()
        tls = service.connect_tcp(lambda: client, "127.0.0.1", port, ssl=context,
                                  server_hostname="localhost")  # fmt: skip
        tls.write(b"hello\n")
        pump(service, lambda: b"olleh" in client.data or client.ended)
        assert client.versions == [f"TLSv{version}"]
        tls.close()
        pump(service, lambda: client.ended)
        assert client.lost == [None]


@needs_openssl
def test_asycamore_client_against_s_server_with_the_wrong_ca(
    service: Service, pki: PKI, tmp_path: Path
) -> None:
    with s_server(pki, tmp_path, "-rev") as (_proc, port):
        client = Recorder()
        service.connect_tcp(lambda: client, "127.0.0.1", port, ssl=pki.client_context(ca="other"),
                            server_hostname="localhost")  # fmt: skip
        pump(service, lambda: client.ended)
        assert isinstance(client.failed[0], ssl.SSLCertVerificationError)


@needs_openssl
def test_s_server_refuses_our_certificate(service: Service, pki: PKI, tmp_path: Path) -> None:
    """s_server verifies the client against the other CA: our client hears the alert."""
    extra = ("-rev", "-Verify", "1", "-CAfile", str(pki.other_ca_file), "-verify_return_error")
    with s_server(pki, tmp_path, *extra) as (_proc, port):
        context = pki.client_context("1.2")  # in 1.2 the failure ends the handshake
        pki.client.configure_cert(context)
        client = Recorder()
        service.connect_tcp(
            lambda: client, "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        pump(service, lambda: client.ended)
        assert client.events == ["failed"] and isinstance(client.failed[0], ssl.SSLError)


# -- hostile peers --------------------------------------------------------------------------


def served_afterwards(service: Service, server: Server, pki: PKI) -> None:
    """A well-behaved client is still served."""
    thread, results = python_client(
        server.port, pki.client_context(), lambda tls: (tls.sendall(b"ok?"), tls.recv(3))[1]
    )
    pump_while(service, thread)
    assert results == [b"ok?"]


def raw_client(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=8)
    if data:
        sock.sendall(data)
    return sock


def test_plaintext_garbage(service: Service, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    server = Server(service, pki.server_context())
    with raw_client(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10) as sock:
        pump(service, lambda: bool(server.protocols) and server.protocols[0].ended)
        assert server.protocols[0].events == ["handshake_failed"]
        assert isinstance(server.protocols[0].failed[0], ssl.SSLError)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            assert sock.recv(100)[:1] in (b"\x15", b"")  # an alert record, then EOF
    served_afterwards(service, server, pki)
    pump(service, lambda: service.connection_count == 0)


def test_half_a_client_hello_times_out(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context(), handshake_timeout=0.3)
    # The first bytes of a real ClientHello record, and then nothing.
    with raw_client(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") as sock:
        started = time.monotonic()
        pump(service, lambda: bool(server.protocols) and server.protocols[0].ended)
        assert time.monotonic() - started < 5
        assert isinstance(server.protocols[0].failed[0], TimeoutError)
        sock.settimeout(5)
        assert sock.recv(100) == b""  # aborted
    assert service.connection_count == 0


def test_silent_peer_times_out_while_others_are_served(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context(), handshake_timeout=0.5)
    with raw_client(server.port), raw_client(server.port):
        served_afterwards(service, server, pki)
        pump(service, lambda: sum(p.ended for p in server.protocols) == 3)
        timeouts = [p for p in server.protocols if p.failed]
        assert len(timeouts) == 2
        assert all(isinstance(p.failed[0], TimeoutError) for p in timeouts)
    assert service.connection_count == 0


def test_client_handshake_timeout(service: Service, pki: PKI) -> None:
    """A server that accepts and never answers: the client gives up."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        client = Recorder()
        service.connect_tcp(lambda: client, "127.0.0.1", mute.getsockname()[1],
                            ssl=pki.client_context(), handshake_timeout=0.3)  # fmt: skip
        pump(service, lambda: client.ended)
        assert isinstance(client.failed[0], TimeoutError)


def test_idle_timeout_aborts_a_handshake_that_does_not_finish(service: Service, pki: PKI) -> None:
    """Without a handshake timeout, the service's idle timeout still ends a TLS client
    whose server never answers its hello."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        client = Recorder()
        started = time.monotonic()
        tls = service.connect_tcp(lambda: client, "127.0.0.1", mute.getsockname()[1],
                                  ssl=pki.client_context(), handshake_timeout=None,
                                  idle_timeout=0.3)  # fmt: skip
        assert service.connections == [tls]  # tracked as the TLS transport
        pump(service, lambda: client.ended)
        assert client.events == ["failed"] and isinstance(client.failed[0], TimeoutError)
        assert 0.25 < time.monotonic() - started < 5
        assert service.connection_count == 0


def test_connection_idle_reaches_the_tls_protocol(service: Service, pki: PKI) -> None:
    """The service calls connection_idle() on the protocol of the TLS transport it
    tracks (the TLSConnection, not the plain connection under it)."""
    idle: list[Any] = []

    class Idle(Recorder):
        def connection_idle(self) -> None:
            idle.append(self.transport)
            assert self.transport is not None
            self.transport.close()

    protocols: list[Idle] = []
    port = service.listen_tcp(lambda: protocols.append(Idle()) or protocols[-1],
                              ssl=pki.server_context(), idle_timeout=0.3).port  # fmt: skip

    def wait_for_close(tls: ssl.SSLSocket) -> bytes:
        return tls.recv(10)  # b"" at the server's close_notify

    thread, results = python_client(port, pki.client_context(), wait_for_close)
    pump(service, lambda: bool(protocols and protocols[0].events))
    (tracked,) = service.connections
    assert isinstance(tracked, TLSConnection) and tracked is protocols[0].transport
    pump_while(service, thread)
    assert results == [b""]
    assert idle == [tracked]
    pump(service, lambda: protocols[0].ended)
    assert protocols[0].lost == [None]
    assert service.connection_count == 0


def test_peer_closes_during_the_handshake(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context())
    sock = raw_client(server.port, b"\x16\x03\x01\x00\x05")
    sock.close()
    pump(service, lambda: bool(server.protocols) and server.protocols[0].ended)
    assert isinstance(server.protocols[0].failed[0], (ssl.SSLError, OSError))


@needs_openssl
def test_renegotiation_attempt(service: Service, pki: PKI, tmp_path: Path) -> None:
    """TLS 1.2 client-initiated renegotiation (s_client's ``R``) is refused: the
    connection ends in an error or goes on, and the server keeps serving."""
    server = Server(service, pki.server_context())
    args = [
        str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_2",
        "-CAfile", str(pki.ca_file), "-verify_return_error",
    ]  # fmt: skip
    with popen(args, tmp_path) as proc:
        stdin = proc.proc.stdin
        assert stdin is not None
        pump(service, lambda: bool(server.protocols and server.protocols[0].events))
        stdin.write(b"R\n")
        stdin.flush()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and proc.returncode is None:
            service.run_once(0.02)
        with contextlib.suppress(OSError):
            stdin.write(b"quit\n")
            stdin.close()
        pump_process(service, proc)
    assert b"RENEGOTIATING" in proc.err + proc.out
    pump(service, lambda: server.protocols[0].ended)
    assert server.protocols[0].events[0] == "made"
    served_afterwards(service, server, pki)


def test_exception_in_a_protocol_callback(service: Service, pki: PKI) -> None:
    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("boom")

    broken: list[Broken] = []
    service.listen_tcp(lambda: broken.append(Broken()) or broken[-1], ssl=pki.server_context())
    port = service.listeners[0].port
    thread, results = python_client(port, pki.client_context(),
                                    lambda tls: (tls.sendall(b"x"), tls.recv(1))[1])  # fmt: skip
    pump_while(service, thread)
    pump(service, lambda: broken[0].ended)
    assert isinstance(broken[0].lost[0], RuntimeError)
    assert results in ([b""],) or isinstance(results[0], OSError)


# -- EOFs and closing -------------------------------------------------------------------


def test_data_with_close_notify_then_eof(service: Service, pki: PKI) -> None:
    """Data and the close_notify in one flight: all data first, then the EOF."""
    server = Server(service, pki.server_context(), echo=False)
    payload = b"z" * 100_000

    def send_and_unwrap(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(payload)
        tls.unwrap()
        return b"done"

    thread, results = python_client(server.port, pki.client_context(), send_and_unwrap)
    pump_while(service, thread)
    pump(service, lambda: server.protocols[0].ended)
    assert results == [b"done"]
    assert bytes(server.protocols[0].data) == payload
    assert server.protocols[0].events == ["made", "eof", "lost"]
    assert server.protocols[0].lost == [None]


@pytest.mark.parametrize("strict", [False, True])
def test_ragged_eof(
    service: Service, pki: PKI, caplog: pytest.LogCaptureFixture, strict: bool
) -> None:
    server = Server(service, pki.server_context(), echo=False, strict_eof=strict)

    def send_and_drop(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(b"bye")
        tls.recv(0)
        # Close the TCP connection under the TLS session: no close_notify.
        tls.shutdown(socket.SHUT_RDWR)
        return b"done"

    with caplog.at_level(logging.DEBUG, logger="asycamore"):
        thread, _ = python_client(server.port, pki.client_context(), send_and_drop)
        pump_while(service, thread)
        pump(service, lambda: server.protocols[0].ended)
    protocol = server.protocols[0]
    assert bytes(protocol.data) == b"bye"
    if strict:
        assert isinstance(protocol.lost[0], ssl.SSLEOFError)
    else:
        assert protocol.events == ["made", "eof", "lost"] and protocol.lost == [None]
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_shutdown_timeout_when_the_peer_never_answers(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context(), echo=False, shutdown_timeout=0.3)
    release = threading.Event()

    def sit(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(b"hi")
        release.wait(8)  # neither reads our close_notify nor sends its own
        return b"done"

    thread, _ = python_client(server.port, pki.client_context(), sit)
    pump(service, lambda: bool(server.protocols) and bool(server.protocols[0].data))
    transport = server.protocols[0].transport
    assert transport is not None
    transport.close()
    assert transport.is_closing()
    started = time.monotonic()
    pump(service, lambda: server.protocols[0].ended)
    # The peer's kernel took our close_notify: nothing was lost, so no error.
    assert server.protocols[0].lost == [None]
    assert time.monotonic() - started < 5
    release.set()
    thread.join(8)


def test_data_after_our_close_notify_is_dropped(service: Service, pki: PKI) -> None:
    """The peer keeps sending after the server's close(): read and dropped, and the
    close_notify exchange still completes."""

    class CloseAtOnce(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.close()

    protocols: list[CloseAtOnce] = []
    port = service.listen_tcp(
        lambda: protocols.append(CloseAtOnce()) or protocols[-1], ssl=pki.server_context()
    ).port

    def chatter(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(b"first")
        for _ in range(20):
            tls.sendall(b"more" * 5000)
        tls.unwrap()
        return b"unwrapped"

    thread, results = python_client(port, pki.client_context(), chatter)
    pump_while(service, thread)
    pump(service, lambda: bool(protocols) and protocols[0].ended)
    assert results == [b"unwrapped"]
    assert protocols[0].lost == [None]
    assert bytes(protocols[0].data).startswith(b"first")


def test_close_waits_for_flush_then_close_notify(service: Service, pki: PKI) -> None:
    server = Server(service, pki.server_context(), echo=False)
    payload = bytes(range(256)) * 4096  # 1 MiB, far above the water marks

    def read_all(tls: ssl.SSLSocket) -> bytes:
        data = bytearray()
        while chunk := tls.recv(65536):  # b"" at the server's close_notify
            data += chunk
        return bytes(data)

    thread, results = python_client(server.port, pki.client_context(), read_all)
    pump(service, lambda: bool(server.protocols and server.protocols[0].transport))
    transport = server.protocols[0].transport
    assert transport is not None
    transport.write(payload)
    transport.close()
    pump_while(service, thread)
    assert results == [payload]
    pump(service, lambda: server.protocols[0].ended)
    assert server.protocols[0].lost == [None]


# -- flow control ---------------------------------------------------------------------------


def test_bounded_memory_when_the_peer_does_not_read(service: Service, pki: PKI) -> None:
    class Producer(Recorder):
        sent = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            self.produce()

        def produce(self) -> None:
            assert self.transport is not None
            while self.events[-1] != "pause" and self.sent < 4_000_000:
                self.transport.write(b"p" * 16384)
                self.sent += 16384

        def resume_writing(self) -> None:
            super().resume_writing()
            self.produce()

    producers: list[Producer] = []
    service.listen_tcp(lambda: producers.append(Producer()) or producers[-1],
                       ssl=pki.server_context(), high_water=64 * 1024)  # fmt: skip
    port = service.listeners[0].port
    go = threading.Event()
    results: list[Any] = []

    def slow_reader() -> None:
        # Small kernel buffers, so that the backlog builds up in asycamore's.
        with socket.socket() as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            raw.settimeout(15)
            raw.connect(("127.0.0.1", port))
            with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                go.wait(8)
                results.append(len(recv_exactly(tls, 4_000_000)))

    thread = threading.Thread(target=slow_reader, daemon=True)
    thread.start()
    pump(service, lambda: bool(producers) and "pause" in producers[0].events)
    for _ in range(20):
        service.run_once(0.01)
    producer = producers[0]
    transport = producer.transport
    assert transport is not None
    assert producer.sent < 1_000_000  # stopped long before the 4 MB
    assert transport.write_buffer_size < 64 * 1024 + 2 * 16384 + 1024
    assert not transport.connection.reading  # and reading stops, as for plain TCP
    go.set()
    pump_while(service, thread, timeout=15)
    assert results == [4_000_000]
    assert "resume" in producer.events


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
    pauses=st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_chunking_is_byte_exact(pki: PKI, sizes: list[int], pauses: list[bool]) -> None:
    """Random write sizes through TLS both ways, with the server pausing and resuming
    reading at random: every byte arrives once, in order."""
    with Service() as service:
        flips = iter(pauses * 50)

        class Moody(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                transport = self.transport
                if transport is not None and next(flips, False):
                    transport.pause_reading()
                    service.call_later(0.005, transport.resume_reading)

        server_protocols: list[Moody] = []

        def factory() -> Moody:
            server_protocols.append(Moody(echo=True))
            return server_protocols[-1]

        service.listen_tcp(factory, ssl=pki.server_context())
        client = Recorder()
        tls = service.connect_tcp(lambda: client, "127.0.0.1", service.listeners[0].port,
                                  ssl=pki.client_context())  # fmt: skip
        blob = bytes(i % 251 for i in range(sum(sizes)))
        offset = 0
        for size in sizes:
            tls.write(memoryview(blob)[offset : offset + size])
            offset += size
            service.run_once(0)
        pump(service, lambda: len(client.data) >= len(blob) or client.ended, timeout=10)
        assert bytes(client.data) == blob
        assert bytes(server_protocols[0].data) == blob


# -- STARTTLS -----------------------------------------------------------------------------


class StartTLSServer(Protocol):
    """``STARTTLS`` -> ``OK``, then TLS; over TLS, echoes."""

    def __init__(self, service: Service, context: ssl.SSLContext) -> None:
        super().__init__()
        self.service = service
        self.context = context
        self.made: list[Any] = []
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.made.append(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if isinstance(self.transport, TLSConnection):
            self.transport.write(data)
        elif data == b"STARTTLS\n":
            self.transport.write(b"OK\n")
            self.service.start_tls(self.transport, self.context, server_side=True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_starttls_both_sides(service: Service, pki: PKI) -> None:
    servers: list[StartTLSServer] = []
    service.listen_tcp(
        lambda: servers.append(StartTLSServer(service, pki.server_context())) or servers[-1]
    )
    port = service.listeners[0].port

    class Client(Recorder):
        def data_received(self, data: bytes) -> None:
            if not isinstance(self.transport, TLSConnection) and data == b"OK\n":
                assert self.transport is not None
                tls = service.start_tls(self.transport, pki.client_context(),
                                        server_hostname="localhost")  # fmt: skip
                tls.write(b"secret\n")  # before the handshake: kept
                return
            super().data_received(data)

    client = Client()
    plain = service.connect_tcp(lambda: client, "127.0.0.1", port)
    plain.write(b"STARTTLS\n")
    pump(service, lambda: bytes(client.data) == b"secret\n")
    assert isinstance(client.transport, TLSConnection)
    assert client.events == ["made", "made"]  # plain, then TLS
    assert client.versions == [None, "TLSv1.3"]
    assert isinstance(servers[0].made[-1], TLSConnection)
    client.transport.close()
    pump(service, lambda: bool(client.lost) and bool(servers[0].lost))
    assert client.lost == [None] and servers[0].lost == [None]


def test_starttls_with_a_python_client(service: Service, pki: PKI) -> None:
    servers: list[StartTLSServer] = []
    service.listen_tcp(
        lambda: servers.append(StartTLSServer(service, pki.server_context())) or servers[-1]
    )
    port = service.listeners[0].port
    results: list[Any] = []

    def run() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as raw:
            raw.sendall(b"STARTTLS\n")
            assert recv_exactly(raw, 3) == b"OK\n"
            with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"over tls")
                results.append(recv_exactly(tls, 8))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    pump_while(service, thread)
    assert results == [b"over tls"]


def test_starttls_on_an_echo_protocol_sends_nothing_in_the_clear(
    service: Service, pki: PKI
) -> None:
    # EchoProtocol makes the plain connection's write its data_received; once start_tls
    # has wrapped the connection, the TLS layer must deliver to the TLS write instead
    # (a stale plain write would put the decrypted echo on the wire unencrypted).
    class StartTLSEcho(EchoProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not isinstance(transport, TLSConnection):
                service.start_tls(transport, pki.server_context(), server_side=True)

    port = service.listen_tcp(StartTLSEcho).port
    thread, results = python_client(
        port, pki.client_context(), lambda tls: tls.sendall(b"over tls") or recv_exactly(tls, 8)
    )
    pump_while(service, thread)
    assert results == [b"over tls"]


def test_starttls_handshake_failure_is_connection_lost(service: Service, pki: PKI) -> None:
    servers: list[StartTLSServer] = []
    service.listen_tcp(
        lambda: servers.append(StartTLSServer(service, pki.server_context())) or servers[-1]
    )
    client = Recorder()
    plain = service.connect_tcp(lambda: client, "127.0.0.1", service.listeners[0].port)
    pump(service, lambda: bool(client.events))
    plain.write(b"STARTTLS\n")
    pump(service, lambda: bytes(client.data) == b"OK\n")
    service.start_tls(plain, pki.client_context(ca="other"), server_hostname="localhost")
    pump(service, lambda: client.ended)
    assert client.events == ["made", "lost"]
    assert isinstance(client.lost[0], ssl.SSLCertVerificationError)


def test_starttls_with_the_client_hello_in_the_same_read(service: Service, pki: PKI) -> None:
    """A pipelining client sends the command and its ClientHello in one segment: what
    the plain protocol read past the command is handed over as ``received``."""

    class Pipelined(Protocol):
        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            if isinstance(self.transport, TLSConnection):
                self.transport.write(data.upper())
                return
            command, _, rest = data.partition(b"\n")
            assert command == b"STARTTLS"
            service.start_tls(self.transport, pki.server_context(), server_side=True,
                              received=rest)  # fmt: skip

    port = service.listen_tcp(Pipelined).port
    results: list[Any] = []

    def run() -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            sock.sendall(b"STARTTLS\n" + outgoing.read())  # one segment
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            tls.write(b"hello")
            sock.sendall(outgoing.read())
            while True:
                try:
                    results.append(tls.read(100))
                    break
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    pump_while(service, thread)
    assert results == [b"HELLO"]


# -- the command line -----------------------------------------------------------------------


@contextlib.contextmanager
def echo_server(pki: PKI) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asycamore", "echo", "--tls-cert", str(pki.cert_file),
         "--tls-key", str(pki.key_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the echo service did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert b"Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_echo_tls_with_python_clients(pki: PKI, version: str) -> None:
    """Good clients are served among hostile ones, and SIGTERM still stops the service
    promptly (exit 0) with hostile, handshaking and idle TLS connections open."""
    payload = bytes(range(256)) * 160
    hostile: list[socket.socket] = []
    try:
        with echo_server(pki) as port:
            hostile += [raw_client(port, b"garbage\r\n"), raw_client(port)]  # + a silent one
            hostile.append(raw_client(port, b"\x16\x03\x01\x02\x00\x01"))  # half a hello
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=8) as raw:
                    context = pki.client_context(version)
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        assert tls.version() == f"TLSv{version}"
                        tls.sendall(payload)
                        assert recv_exactly(tls, len(payload)) == payload
            idle = pki.client_context(version).wrap_socket(
                raw_client(port), server_hostname="localhost"
            )
            hostile.append(idle)  # open, verified, and silent when SIGTERM comes
            started = time.monotonic()
        assert time.monotonic() - started < 8
    finally:
        for sock in hostile:
            sock.close()


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_cli_echo_tls_with_openssl(pki: PKI, version: str, tmp_path: Path) -> None:
    with echo_server(pki) as port:
        args = [
            str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", f"-tls1_{version[-1]}",
            "-CAfile", str(pki.ca_file), "-verify_return_error", "-verify_hostname",
            "localhost", "-quiet",
        ]  # fmt: skip
        with popen(args, tmp_path) as proc:
            stdin = proc.proc.stdin
            assert stdin is not None
            stdin.write(b"echo me\n")
            stdin.flush()
            deadline = time.monotonic() + 8
            while b"echo me\n" not in proc.out:
                assert time.monotonic() < deadline and proc.returncode is None, proc.err
                time.sleep(0.02)
            assert proc.out == b"echo me\n"


def test_cli_echo_tls_refuses_tls_1_1(pki: PKI) -> None:
    with echo_server(pki) as port:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
            with contextlib.suppress(ValueError, ssl.SSLError):
                context.minimum_version = ssl.TLSVersion.TLSv1
            try:
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ValueError, ssl.SSLError):
                pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=8) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
        ):
            context.wrap_socket(raw)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asycamore", "echo", *args],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_cli_bad_tls_files(pki: PKI, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other_key = tmp_path / "other-key.pem"
    pki.client.private_key_pem.write_to_path(str(other_key))
    cert, key = str(pki.cert_file), str(pki.key_file)
    cases = {
        "only the certificate": ["--tls-cert", cert],
        "only the key": ["--tls-key", key],
        "missing certificate": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
        "missing key": ["--tls-cert", cert, "--tls-key", str(tmp_path / "nope.pem")],
        "a directory": ["--tls-cert", str(tmp_path), "--tls-key", key],
        "garbage certificate": ["--tls-cert", str(garbage), "--tls-key", key],
        "garbage key": ["--tls-cert", cert, "--tls-key", str(garbage)],
        "swapped": ["--tls-cert", key, "--tls-key", cert],
        "mismatched": ["--tls-cert", cert, "--tls-key", str(other_key)],
        "with --udp": ["--udp", "--tls-cert", cert, "--tls-key", key],
    }
    # Options that do not go together are a usage error of echo's (pointing to its
    # help); a file that will not do is found while starting: the program's error.
    usage_errors = {"only the certificate", "only the key", "with --udp"}
    for name, args in cases.items():
        result = run_cli(*args)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stdout == "", name
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (name, lines)
        if name in usage_errors:
            assert lines[0].startswith("asycamore echo: error: "), (name, lines)
            assert lines[0].endswith(" (see asycamore echo --help)"), (name, lines)
        else:
            assert lines[0].startswith("asycamore: error: "), (name, lines)
            assert "--help" not in lines[0], (name, lines)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("relaying", [False, True], ids=["echo-like", "relaying"])
def test_reads_produce_writes_reaches_the_plain_connection(
    service: Service, pki: PKI, relaying: bool
) -> None:
    """A TLS protocol's ``reads_produce_writes`` decides for the plain connection under
    it, which does the reading: a relaying protocol's full buffer must not stop it."""

    class Relaying(Recorder):
        reads_produce_writes = not relaying

    protocols: list[Relaying] = []
    port = service.listen_tcp(lambda: protocols.append(Relaying()) or protocols[-1],
                              ssl=pki.server_context(), high_water=1024).port  # fmt: skip

    def hold(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(b"hello")
        return tls.recv(5)

    thread, _results = python_client(port, pki.client_context(), hold)
    pump(service, lambda: bool(protocols) and bytes(protocols[0].data) == b"hello")
    tls = protocols[0].transport
    assert isinstance(tls, TLSConnection)
    tls.write(b"x" * (1 << 26))  # more than the sockets hold: the client reads 5 bytes
    plain = tls.connection
    assert plain.get_write_buffer_size() > 1024
    assert plain.reading is relaying
    tls.abort()
    pump_while(service, thread)
