"""A minimal hand-written selectors echo loop: the floor of what a pure-Python loop costs.

One ``selectors.DefaultSelector`` (epoll on Linux; ``--poll``: ``selectors.PollSelector``),
non-blocking sockets, callbacks stored as the key's data, data that cannot be written at
once kept per connection.  Prints ``listening on HOST:PORT``; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
from collections.abc import Callable


def _on_signal(signum: int, frame: object) -> None:
    # Raising breaks out of a blocking select/poll at once (PEP 475 would retry it).
    raise SystemExit(0)


def serve(host: str, port: int, selector: type[selectors.BaseSelector]) -> None:
    """Serve until SIGTERM or SIGINT."""
    sel = selector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    listener.setblocking(False)
    pending: dict[socket.socket, bytes] = {}

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    def on_read(conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(conn)
            return
        if not data:
            close(conn)
            return
        try:
            sent = conn.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            close(conn)
            return
        if sent < len(data):
            pending[conn] = data[sent:]
            sel.modify(conn, selectors.EVENT_WRITE, on_write)

    def on_write(conn: socket.socket) -> None:
        data = pending[conn]
        try:
            sent = conn.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(conn)
            return
        if sent < len(data):
            pending[conn] = data[sent:]
        else:
            del pending[conn]
            sel.modify(conn, selectors.EVENT_READ, on_read)

    def on_accept(sock: socket.socket) -> None:
        for _ in range(64):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ, on_read)

    sel.register(listener, selectors.EVENT_READ, on_accept)
    bound = listener.getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    try:
        while True:
            for key, _mask in sel.select():
                callback: Callable[[socket.socket], None] = key.data
                callback(key.fileobj)  # type: ignore[arg-type]
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


def main() -> None:
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--poll", action="store_true", help="use selectors.PollSelector")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    serve(args.host, args.port, selectors.PollSelector if args.poll else selectors.DefaultSelector)


if __name__ == "__main__":
    main()
