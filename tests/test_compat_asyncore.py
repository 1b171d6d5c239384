"""asycamore.compat: the asyncore/asynchat API, install(), loop() semantics on every
backend, and the map context's promise to touch the kernel only on a change."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import asycamore
import asycamore.compat
from asycamore.compat import _mapcontext, asynchat, asyncore
from asycamore.testing import deadline

BACKENDS = [info.name for info in asycamore.list_backends() if info.available]

ASYNCORE_API = [
    "ExitNow",
    "close_all",
    "compact_traceback",
    "dispatcher",
    "dispatcher_with_send",
    "file_dispatcher",
    "file_wrapper",
    "loop",
    "poll",
    "poll2",
    "poll3",
    "read",
    "readwrite",
    "socket_map",
    "write",
]
ASYNCHAT_API = ["async_chat", "find_prefix_at_end", "simple_producer"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every available backend, through ASYCAMORE_BACKEND as a user would pick it."""
    monkeypatch.setenv("ASYCAMORE_BACKEND", request.param)
    return str(request.param)


@pytest.fixture
def smap(backend: str) -> Iterator[dict[int, Any]]:
    """A map of the test's own (per-dispatcher maps), closed afterwards."""
    own: dict[int, Any] = {}
    yield own
    asyncore.close_all(own, ignore_all=True)


def run(smap: dict[int, Any], until: Any, passes: int = 500) -> None:
    """Loop over *smap* one pass at a time until ``until()`` is true (bounded)."""
    with deadline(10.0, "the asyncore loop"):
        for _ in range(passes):
            if until():
                return
            asyncore.loop(timeout=0.01, map=smap, count=1)
    assert until(), "condition not reached"


# -- API and install() ------------------------------------------------------------------


def test_public_api_is_complete():
    for name in ASYNCORE_API:
        assert hasattr(asyncore, name), name
    for name in ASYNCHAT_API:
        assert hasattr(asynchat, name), name
    assert set(asyncore.__all__) == set(ASYNCORE_API)
    assert set(asynchat.__all__) == set(ASYNCHAT_API)
    assert issubclass(asynchat.async_chat, asyncore.dispatcher)
    assert issubclass(asyncore.ExitNow, Exception)


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="compares with the stdlib asyncore, only in 3.11"
)
def test_public_api_matches_python_311():
    """Every class and function the 3.11 modules define, and socket_map, exists here."""
    script = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "import asyncore, asynchat\n"
        "for m in (asyncore, asynchat):\n"
        "    print(' '.join(n for n, v in vars(m).items() if not n.startswith('_')"
        " and getattr(v, '__module__', None) == m.__name__))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert set(out[0].split()) | {"socket_map"} <= set(dir(asyncore))
    assert set(out[1].split()) <= set(dir(asynchat))
    assert len(out[0].split()) > 10  # the comparison saw the real module


def test_install_maps_imports_and_is_idempotent():
    script = (
        "import sys, asycamore.compat\n"
        "asycamore.compat.install(); asycamore.compat.install()\n"
        "import asyncore, asynchat\n"
        "from asycamore.compat import asyncore as a, asynchat as b\n"
        "assert asyncore is a and asynchat is b, (asyncore, asynchat)\n"
        "assert asynchat.asyncore is asyncore\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_install_replaces_a_module_imported_before():
    """On 3.11 the stdlib's asyncore (elsewhere a stand-in) is replaced in sys.modules."""
    script = (
        "import sys, types, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "try:\n    import asyncore\n"
        "except ImportError:\n    sys.modules['asyncore'] = types.ModuleType('asyncore')\n"
        "import asycamore.compat; asycamore.compat.install()\n"
        "import asyncore\n"
        "print(asyncore.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "asycamore.compat.asyncore"


def test_repr_names_the_asyncore_module():
    d = asyncore.dispatcher(map={})
    assert repr(d) == f"<asyncore.dispatcher at {id(d):#x}>"
    chat = asynchat.async_chat(map={})
    assert repr(chat).startswith("<asynchat.async_chat at ")


# -- classic servers on every backend -----------------------------------------------------


class EchoHandler(asyncore.dispatcher_with_send):
    def handle_read(self) -> None:
        data = self.recv(8192)
        if data:
            self.send(data)

    def handle_close(self) -> None:
        self.close()


class EchoServer(asyncore.dispatcher):
    def __init__(self, smap: dict[int, Any]) -> None:
        super().__init__(map=smap)
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(16)
        self.port = self.socket.getsockname()[1]
        self.handlers: list[EchoHandler] = []

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        self.handlers.append(EchoHandler(sock, map=self._map))


class EchoClient(asyncore.dispatcher_with_send):
    def __init__(self, smap: dict[int, Any], port: int, message: bytes) -> None:
        super().__init__(map=smap)
        self.received = b""
        self.message = message
        self.connected_event = False
        self.create_socket()
        self.connect(("127.0.0.1", port))

    def handle_connect(self) -> None:
        self.connected_event = True
        self.send(self.message)

    def handle_read(self) -> None:
        self.received += self.recv(8192)
        if len(self.received) >= len(self.message):
            self.close()

    def handle_close(self) -> None:
        self.close()


def test_echo_server_and_clients_in_one_map(smap):
    server = EchoServer(smap)
    clients = [EchoClient(smap, server.port, b"ping %d " % i * 500) for i in range(10)]
    run(smap, lambda: all(c.received == c.message for c in clients))
    assert all(c.connected_event for c in clients)
    server.close()
    for handler in server.handlers:
        handler.close()
    assert not smap


class LineChannel(asynchat.async_chat):
    def __init__(self, sock: socket.socket, smap: dict[int, Any]) -> None:
        super().__init__(sock, map=smap)
        self.set_terminator(b"\r\n")
        self.lines: list[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self._collect_incoming_data(data)

    def found_terminator(self) -> None:
        line = self._get_data()
        self.lines.append(line)
        if line == b"QUIT":
            self.push(b"BYE\r\n")
            self.close_when_done()
        else:
            self.push(line.upper() + b"\r\n")


def test_async_chat_line_protocol_with_a_blocking_client(smap):
    ours, theirs = socket.socketpair()
    channel = LineChannel(ours, smap)
    theirs.sendall(b"hello\r\nwor")
    run(smap, lambda: channel.lines == [b"hello"])
    theirs.sendall(b"ld\r\nQUIT\r\n")
    run(smap, lambda: not smap)  # close_when_done empties the map
    theirs.settimeout(5)
    received = b""
    while chunk := theirs.recv(100):
        received += chunk
    assert received == b"HELLO\r\nWORLD\r\nBYE\r\n"
    assert channel.lines == [b"hello", b"world", b"QUIT"]
    theirs.close()


def test_async_chat_numeric_and_none_terminators_and_producers(smap):
    ours, theirs = socket.socketpair()

    class Chunks(asynchat.async_chat):
        def __init__(self) -> None:
            super().__init__(ours, map=smap)
            self.set_terminator(4)
            self.got: list[bytes] = []
            self.buffer = b""

        def collect_incoming_data(self, data: bytes) -> None:
            self.buffer += data

        def found_terminator(self) -> None:
            self.got.append(self.buffer)
            self.buffer = b""
            self.set_terminator(None)

    chat = Chunks()
    theirs.sendall(b"abcdefgh")
    run(smap, lambda: chat.buffer == b"efgh")
    assert chat.got == [b"abcd"]
    chat.push_with_producer(asynchat.simple_producer(b"x" * 2000, buffer_size=7))
    theirs.settimeout(5)
    received = b""
    with deadline(10.0):
        while len(received) < 2000:
            asyncore.loop(timeout=0.01, map=smap, count=1)
            received += theirs.recv(4096)
    assert received == b"x" * 2000
    theirs.close()


def test_find_prefix_at_end():
    assert asynchat.find_prefix_at_end(b"qwerty\r", b"\r\n") == 1
    assert asynchat.find_prefix_at_end(b"qwertydkjf", b"\r\n") == 0
    assert asynchat.find_prefix_at_end(b"ab.\r\n.", b"\r\n.\r\n") == 3
    assert asynchat.find_prefix_at_end(b"ab\r\n.\r", b"\r\n.\r\n") == 4


# -- loop() semantics -------------------------------------------------------------------


class Counting(asyncore.dispatcher):
    """Counts what the loop asks and calls; wants what its attributes say."""

    def __init__(self, sock: socket.socket, smap: dict[int, Any]) -> None:
        super().__init__(sock, map=smap)
        self.want_read = True
        self.want_write = False
        self.asked_readable = self.asked_writable = 0
        self.reads = self.writes = self.closes = self.errors = 0

    def readable(self) -> bool:
        self.asked_readable += 1
        return self.want_read

    def writable(self) -> bool:
        self.asked_writable += 1
        return self.want_write

    def handle_read(self) -> None:
        self.reads += 1
        self.recv(4096)

    def handle_write(self) -> None:
        self.writes += 1

    def handle_close(self) -> None:
        self.closes += 1
        self.close()

    def handle_error(self) -> None:
        self.errors += 1
        self.close()


@pytest.fixture
def pair(smap) -> Iterator[tuple[Counting, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield Counting(ours, smap), theirs
    theirs.close()


def test_loop_count_runs_exactly_count_passes_and_asks_every_pass(smap, pair):
    counting, _ = pair
    asyncore.loop(timeout=0, map=smap, count=5)
    assert counting.asked_readable == 5
    assert counting.asked_writable == 5
    assert counting.reads == 0


def test_loop_returns_at_once_on_an_empty_map(backend):
    with deadline(5.0, "loop() on an empty map"):
        asyncore.loop(timeout=30.0, map={})
        asyncore.loop(timeout=30.0, map={}, count=3)


def test_loop_returns_when_the_map_empties(smap, pair):
    counting, theirs = pair
    theirs.close()  # EOF: handle_read -> recv b"" -> handle_close -> close
    with deadline(5.0, "loop() after the last dispatcher closed"):
        asyncore.loop(timeout=30.0, map=smap)
    assert counting.closes == 1
    assert not smap


def test_writable_change_is_seen_on_the_next_pass(smap, pair):
    counting, _ = pair
    asyncore.loop(timeout=0, map=smap, count=3)
    assert counting.writes == 0
    counting.want_write = True
    asyncore.loop(timeout=0, map=smap, count=2)
    assert counting.writes == 2
    counting.want_write = False
    asyncore.loop(timeout=0, map=smap, count=2)
    assert counting.writes == 2


def test_readable_false_means_no_read_until_readable_again(smap, pair):
    counting, theirs = pair
    counting.want_read = False
    theirs.sendall(b"data")
    asyncore.loop(timeout=0, map=smap, count=3)
    assert counting.reads == 0
    counting.want_read = True
    asyncore.loop(timeout=0, map=smap, count=1)
    assert counting.reads == 1


def test_handle_close_on_peer_close(smap, pair):
    counting, theirs = pair
    theirs.close()
    run(smap, lambda: counting.closes == 1)


def test_handler_exception_goes_to_handle_error_with_compact_traceback(smap, capsys):
    ours, theirs = socket.socketpair()

    class Failing(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            raise ValueError("boom")

    failing = Failing(ours, map=smap)
    theirs.sendall(b"x")
    asyncore.loop(timeout=0, map=smap, count=1)
    out = capsys.readouterr().out
    # dispatcher.handle_error logs the compact traceback and closes (handle_close).
    assert "error: uncaptured python exception, closing channel" in out
    assert "ValueError'>:boom" in out and "|handle_read|" in out
    assert "warning" not in out  # ignore_log_types hides handle_close's warning
    assert not smap and failing.socket.fileno() == -1
    theirs.close()


def test_disconnect_errno_from_a_handler_goes_to_handle_close(smap, pair):
    counting, theirs = pair

    def broken() -> None:
        raise OSError(errno.ECONNRESET, "reset")

    counting.handle_read = broken  # type: ignore[method-assign]
    theirs.sendall(b"x")
    asyncore.loop(timeout=0, map=smap, count=1)
    assert counting.closes == 1 and counting.errors == 0


@pytest.mark.parametrize("exc", [asyncore.ExitNow, KeyboardInterrupt, SystemExit])
def test_exitnow_and_interpreter_exits_propagate(smap, pair, exc):
    counting, theirs = pair

    def leave() -> None:
        raise exc("leave")

    counting.handle_read = leave  # type: ignore[method-assign]
    theirs.sendall(b"x")
    with pytest.raises(exc):
        asyncore.loop(timeout=1.0, map=smap, count=1)
    assert counting.errors == 0
    # The loop is usable afterwards.
    counting.handle_read = lambda: counting.recv(10)  # type: ignore[method-assign]
    asyncore.loop(timeout=0, map=smap, count=1)


def test_handle_expt_on_urgent_data(smap):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    got: list[bytes] = []

    class Urgent(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_expt(self) -> None:
            got.append(self.socket.recv(1, socket.MSG_OOB))

    Urgent(server_side, map=smap)
    client.send(b"!", socket.MSG_OOB)
    # Blocking passes that must wake on the urgent byte alone (a pass may also end on a
    # spurious READ report as the byte lands, hence up to three).
    with deadline(4.0, "urgent data"):
        for _ in range(3):
            if got:
                break
            asyncore.loop(timeout=10.0, map=smap, count=1)
    assert got == [b"!"]
    client.close()


def test_handle_expt_without_epoll(smap, monkeypatch):
    """Where there is no epoll the urgent set is polled after each wait."""
    monkeypatch.setattr(_mapcontext, "_urgent_poller", select.poll)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    got: list[bytes] = []

    class Urgent(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_expt(self) -> None:
            got.append(self.socket.recv(1, socket.MSG_OOB))

    Urgent(server_side, map=smap)
    client.send(b"!", socket.MSG_OOB)
    run(smap, lambda: got == [b"!"])
    client.close()


def test_file_dispatcher_on_a_pipe_and_a_regular_file(smap, tmp_path):
    """Pipes are watched; a regular file (which epoll refuses) is always ready, as
    select and poll report it."""
    path = tmp_path / "data"
    path.write_bytes(b"from a file")
    read_end, write_end = os.pipe()
    chunks: dict[str, bytes] = {"pipe": b"", "file": b""}

    class Reader(asyncore.file_dispatcher):
        def __init__(self, fd: int, key: str) -> None:
            super().__init__(fd, map=smap)
            self.key = key

        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            chunks[self.key] += self.recv(100)

        def handle_close(self) -> None:
            self.close()

    fd = os.open(path, os.O_RDONLY)
    Reader(fd, "file")
    os.close(fd)  # file_wrapper holds a dup
    Reader(read_end, "pipe")
    os.close(read_end)
    os.write(write_end, b"from a pipe")
    os.close(write_end)
    run(smap, lambda: not smap)
    assert chunks == {"pipe": b"from a pipe", "file": b"from a file"}


CAT_SCRIPT = r"""
import json, os, subprocess, sys, time, warnings
warnings.simplefilter("ignore")
if sys.argv[1] == "stdlib":
    import asyncore
else:
    from asycamore.compat import asyncore
payload = os.urandom(1 << 20)
limit = None if sys.argv[2] == "all" else int(sys.argv[2])
use_poll = sys.argv[3] == "poll"
events, received, smap = [], bytearray(), {}

# A real child between two os.pipe()s: cat (everything comes back) or head -c LIMIT
# (reads LIMIT bytes and exits: the writer meets a broken pipe).
to_child, to_us = os.pipe(), os.pipe()
command = ["cat"] if limit is None else ["head", "-c", str(limit)]
child = subprocess.Popen(command, stdin=to_child[0], stdout=to_us[1])
os.close(to_child[0])
os.close(to_us[1])

class Writer(asyncore.file_dispatcher):
    def __init__(self, fd):
        super().__init__(fd, map=smap)
        self.left = memoryview(payload)
    def readable(self):
        return False
    def writable(self):
        return bool(self.left)
    def handle_write(self):
        self.left = self.left[self.send(self.left[:65536]):]
        if not self.left:
            events.append("writer: all sent")
            self.close()
    def handle_close(self):
        events.append("writer: handle_close")
        self.close()

class Reader(asyncore.file_dispatcher):
    def __init__(self, fd):
        super().__init__(fd, map=smap)
    def writable(self):
        return False
    def handle_read(self):
        received.extend(self.recv(65536))
    def handle_close(self):
        events.append("reader: handle_close")
        self.close()

Writer(to_child[1])
os.close(to_child[1])  # file_wrapper holds a dup
Reader(to_us[0])
os.close(to_us[0])
deadline = time.monotonic() + 20
while smap and time.monotonic() < deadline:
    asyncore.loop(timeout=0.05, use_poll=use_poll, map=smap, count=1)
print(json.dumps({
    "events": sorted(events),
    "received": len(received),
    "exact": bytes(received) == payload[: len(received)],
    "status": child.wait(10),
    "left": len(smap),
}))
"""


def _through_cat(implementation: str, limit: str, use_poll: bool, backend: str = "") -> Any:
    import json

    env = {**os.environ, "ASYCAMORE_BACKEND": backend} if backend else None
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CAT_SCRIPT,
            implementation,
            limit,
            "poll" if use_poll else "select",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("use_poll", [False, True], ids=["loop", "loop-use_poll"])
@pytest.mark.parametrize("limit", ["all", "1000"], ids=["cat", "head-c-1000"])
def test_file_dispatcher_through_a_cat_child(backend, limit, use_poll):
    """file_dispatcher on both ends of a real child (``cat``; ``head -c 1000``, which
    leaves early) over os.pipe()s: 1 MiB through non-blocking pipes (partial writes),
    back byte-exact; the EOF is the reader's handle_close, a broken pipe the writer's,
    without a traceback."""
    result = _through_cat("compat", limit, use_poll, backend)
    assert result["left"] == 0
    assert result["exact"]
    assert result["status"] == 0
    if limit == "all":
        assert result["received"] == 1 << 20
        assert result["events"] == ["reader: handle_close", "writer: all sent"]
    else:
        assert result["received"] == 1000
        assert result["events"] == ["reader: handle_close", "writer: handle_close"]


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="compares with the stdlib asyncore, only in 3.11"
)
@pytest.mark.parametrize("use_poll", [False, True], ids=["loop", "loop-use_poll"])
@pytest.mark.parametrize("limit", ["all", "1000"], ids=["cat", "head-c-1000"])
def test_file_dispatcher_through_a_cat_child_as_in_python_311(limit, use_poll):
    """The same run on Python 3.11's own asyncore gives the same outcome."""
    assert _through_cat("stdlib", limit, use_poll) == _through_cat("compat", limit, use_poll)


def test_fd_reused_within_one_pass_reaches_only_the_new_dispatcher(smap):
    """A handler closes its dispatcher and a new socket gets the same number at once:
    readiness collected for the old one must not reach the new one."""
    a_ours, a_theirs = socket.socketpair()
    b_ours, b_theirs = socket.socketpair()
    calls: list[str] = []
    replacement: list[Counting] = []

    class Closer(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            calls.append(self.name)
            number = self._fileno
            self.close()
            # Take over the freed descriptor number with a new socket.
            # (The lowest free number is usually that one already.)
            fresh_ours, fresh_theirs = socket.socketpair()
            if fresh_ours.fileno() != number:
                os.dup2(fresh_ours.fileno(), number)
                fresh_ours.close()
                fresh_ours = socket.socket(fileno=number)
            new = Counting(fresh_ours, smap)
            new.peer = fresh_theirs  # type: ignore[attr-defined]
            replacement.append(new)

    first = Closer(a_ours, map=smap)
    first.name = "first"  # type: ignore[attr-defined]
    second = Closer(b_ours, map=smap)
    second.name = "second"  # type: ignore[attr-defined]
    numbers = {a_ours.fileno(), b_ours.fileno()}
    a_theirs.sendall(b"x")
    b_theirs.sendall(b"x")
    asyncore.loop(timeout=1.0, map=smap, count=1)
    assert sorted(calls) == ["first", "second"]
    assert {new._fileno for new in replacement} == numbers  # really reused
    assert all(new.reads == 0 for new in replacement)  # nothing to read for them yet
    for new in replacement:
        new.peer.sendall(b"y")  # type: ignore[attr-defined]
    run(smap, lambda: all(new.reads == 1 for new in replacement))
    for sock in (a_theirs, b_theirs, *(new.peer for new in replacement)):  # type: ignore[attr-defined]
        sock.close()


def test_entries_removed_or_replaced_by_other_code(smap):
    """Code that edits the map directly (as pyftpdlib's IOLoop does) is followed."""
    ours, theirs = socket.socketpair()
    counting = Counting(ours, smap)
    theirs.sendall(b"x")
    fd = ours.fileno()
    del smap[fd]  # without del_channel
    asyncore.loop(timeout=0, map=smap, count=1)
    assert counting.reads == 0
    smap[fd] = counting  # back, directly
    asyncore.loop(timeout=0, map=smap, count=1)
    assert counting.reads == 1
    theirs.close()


def test_map_mutated_during_dispatch(smap):
    """Handlers that add and remove dispatchers while a pass is dispatching."""
    socks = [socket.socketpair() for _ in range(6)]
    dispatchers: list[asyncore.dispatcher] = []

    class Mutator(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            self.recv(10)
            for other in dispatchers:
                if other is not self and other.socket is not None and other._fileno:
                    other.close()
                    break
            extra_ours, extra_theirs = socket.socketpair()
            dispatchers.append(Counting(extra_ours, smap))
            socks.append((extra_theirs, extra_ours))

    dispatchers.extend(Mutator(ours, map=smap) for ours, _ in socks)
    for _, theirs in list(socks):
        theirs.sendall(b"x")
    asyncore.loop(timeout=0.5, map=smap, count=3)
    asyncore.close_all(smap)
    for one, two in socks:
        one.close()
        two.close()


def test_close_all_closes_and_empties(smap):
    pairs = [socket.socketpair() for _ in range(3)]
    made = [Counting(ours, smap) for ours, _ in pairs]
    asyncore.loop(timeout=0, map=smap, count=1)
    asyncore.close_all(smap)
    assert not smap
    assert all(d.socket.fileno() == -1 for d in made)
    for _, theirs in pairs:
        theirs.close()


# -- the kernel is touched only on a change ---------------------------------------------


class CountingContext:
    """A real context that counts the interest changes it is told about."""

    def __init__(self, inner: asycamore.IDispatchContext) -> None:
        self.inner = inner
        self.changes = 0

    def register(self, target: Any, events: Any = asycamore.Events.READ) -> None:
        self.changes += 1
        self.inner.register(target, events)

    def modify(self, target: Any, events: Any) -> None:
        self.changes += 1
        self.inner.modify(target, events)

    def unregister(self, target: Any) -> None:
        self.changes += 1
        self.inner.unregister(target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __contains__(self, target: object) -> bool:
        return target in self.inner


@pytest.fixture
def counted(monkeypatch, backend) -> list[CountingContext]:
    made: list[CountingContext] = []
    real = asycamore.create_dispatcher

    def create() -> CountingContext:
        made.append(CountingContext(real()))
        return made[-1]

    monkeypatch.setattr(asycamore, "create_dispatcher", create)
    return made


def _raise_nofile(at_least: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {at_least}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))


def test_many_idle_dispatchers_cost_no_interest_changes(counted, smap, backend):
    idle_count = 400 if backend == "select" else 2000  # select stops at FD_SETSIZE
    _raise_nofile(2 * idle_count + 100)
    pairs = [socket.socketpair() for _ in range(idle_count)]
    try:
        idle = [asyncore.dispatcher_with_send(ours, map=smap) for ours, _ in pairs]
        active_ours, active_theirs = socket.socketpair()
        active = Counting(active_ours, smap)
        asyncore.loop(timeout=0, map=smap, count=1)
        (context,) = counted
        first_pass = context.changes
        assert first_pass >= idle_count + 1
        for i in range(5):
            active_theirs.sendall(b"x")
            asyncore.loop(timeout=1.0, map=smap, count=1)
            assert active.reads == i + 1
        assert context.changes == first_pass  # nothing changed: no kernel call
        active.want_write = True
        asyncore.loop(timeout=0, map=smap, count=1)
        assert context.changes == first_pass + 1 and active.writes == 1
        idle[0].close()  # del_channel unregisters at once
        assert context.changes == first_pass + 2
        active_theirs.close()
    finally:
        asyncore.close_all(smap, ignore_all=True)
        for _, theirs in pairs:
            theirs.close()


def test_context_is_kept_per_map_and_released_when_the_map_empties(counted, smap):
    ours, theirs = socket.socketpair()
    counting = Counting(ours, smap)
    asyncore.loop(timeout=0, map=smap, count=3)
    assert len(counted) == 1
    other: dict[int, Any] = {}
    other_ours, other_theirs = socket.socketpair()
    Counting(other_ours, other)
    asyncore.loop(timeout=0, map=other, count=2)
    assert len(counted) == 2  # one context per map
    counting.close()
    asyncore.loop(timeout=0, map=smap)  # returns: the map is empty
    assert counted[0].inner.__class__  # still an object, but closed and dropped:
    with pytest.raises(ValueError):
        counted[0].inner.dispatch_once(0)
    asyncore.close_all(other)
    theirs.close()
    other_theirs.close()


def test_close_all_from_a_handler_then_new_dispatchers_keep_the_loop_going(counted, smap):
    """close_all() inside a pass releases the map's context; the same loop() call goes
    on with a fresh one for dispatchers added afterwards, and keeps its count."""
    ours, theirs = socket.socketpair()
    later_ours, later_theirs = socket.socketpair()
    made: list[Counting] = []

    class Restarter(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            self.recv(10)
            asyncore.close_all(smap)
            made.append(Counting(later_ours, smap))

    Restarter(ours, map=smap)
    theirs.sendall(b"x")
    later_theirs.sendall(b"y")
    asyncore.loop(timeout=0.5, map=smap, count=3)
    assert len(counted) == 2  # a second context took over
    assert made[0].asked_readable == 2 and made[0].reads == 1
    theirs.close()
    later_theirs.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_context(smap):
    """A child must not change the parent's epoll set: it starts a fresh context."""
    ours, theirs = socket.socketpair()
    counting = Counting(ours, smap)
    asyncore.loop(timeout=0, map=smap, count=1)  # the parent's context exists
    pid = os.fork()
    if pid == 0:  # the child: stop watching, in its own context only
        try:
            counting.want_read = False
            asyncore.loop(timeout=0, map=smap, count=1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    theirs.sendall(b"x")
    asyncore.loop(timeout=1.0, map=smap, count=1)
    assert counting.reads == 1  # the parent still watches for reading
    theirs.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    return server_side, client


def test_urgent_data_of_a_closed_but_duplicated_socket_reaches_no_newcomer(smap):
    """epoll watches files, not numbers: a socket closed without del_channel while a dup
    keeps it open stays in the urgent set.  Its urgent data must not reach a new
    dispatcher that took over its number."""
    got: list[str] = []

    class Urgent(asyncore.dispatcher):
        def __init__(self, sock: socket.socket, name: str) -> None:
            super().__init__(sock, map=smap)
            self.name = name

        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            # Linux may report the socket readable as the urgent byte lands, with
            # nothing in the normal stream yet (asyncore's recv lets EAGAIN through).
            with contextlib.suppress(BlockingIOError):
                self.recv(100)

        def handle_expt(self) -> None:
            got.append(self.name)
            self.socket.recv(1, socket.MSG_OOB)

    old_ours, old_peer = _tcp_pair()
    old = Urgent(old_ours, "old")
    asyncore.loop(timeout=0, map=smap, count=1)
    number = old_ours.fileno()
    kept = os.dup(number)  # keeps the old socket's file open
    del smap[number]  # no del_channel: the context learns on the next pass
    old.socket.close()
    new_ours, new_peer = _tcp_pair()
    if new_ours.fileno() != number:
        os.dup2(new_ours.fileno(), number)
        new_ours.close()
        new_ours = socket.socket(fileno=number)
    Urgent(new_ours, "new")
    old_peer.send(b"!", socket.MSG_OOB)
    asyncore.loop(timeout=0.2, map=smap, count=3)
    assert got == []
    new_peer.send(b"?", socket.MSG_OOB)
    run(smap, lambda: got == ["new"])
    os.close(kept)
    for sock in (old_peer, new_peer):
        sock.close()


def test_urgent_data_is_watched_only_where_it_can_show(smap, capsys):
    """A dispatcher left with dispatcher's own handle_expt* would only log a hidden
    warning: it is not watched.  Make the warning visible and it is, as in asyncore."""

    class Plain(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            # Linux may report the socket readable as the urgent byte lands, with
            # nothing in the normal stream yet (asyncore's recv lets EAGAIN through).
            with contextlib.suppress(BlockingIOError):
                self.recv(100)

    quiet_ours, quiet_peer = _tcp_pair()
    loud_ours, loud_peer = _tcp_pair()
    Plain(quiet_ours, map=smap)
    loud = Plain(loud_ours, map=smap)
    loud.ignore_log_types = frozenset()
    quiet_peer.send(b"!", socket.MSG_OOB)
    loud_peer.send(b"!", socket.MSG_OOB)
    asyncore.loop(timeout=0.5, map=smap, count=1)
    out = capsys.readouterr().out
    assert out.count("warning: unhandled incoming priority event") == 1
    assert asyncore._handles_urgent(loud) and not asyncore._handles_urgent(
        smap[quiet_ours.fileno()]
    )
    quiet_peer.close()
    loud_peer.close()
