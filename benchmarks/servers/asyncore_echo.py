"""An asyncore echo server on asyncore's poll loop (``asyncore.loop(use_poll=True)``).

Uses the stdlib ``asyncore`` on Python 3.11 and the ``pyasyncore`` package (same module
name) on 3.12+.  Prints ``listening on HOST:PORT``; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore


def _on_signal(signum: int, frame: object) -> None:
    # Raising breaks out of a blocking select/poll at once (PEP 475 would retry it).
    raise SystemExit(0)


class EchoHandler(asyncore.dispatcher):
    """One connection: reads, and writes back what it read."""

    def __init__(self, sock: socket.socket, socket_map: dict[int, asyncore.dispatcher]) -> None:
        super().__init__(sock, map=socket_map)
        self.out = b""

    def handle_read(self) -> None:
        data = self.recv(65536)
        if not data:
            return  # recv() already called handle_close
        if self.out:
            self.out += data
            return
        sent = self.send(data)
        if sent < len(data):
            self.out = data[sent:]

    def readable(self) -> bool:
        return not self.out

    def writable(self) -> bool:
        return bool(self.out)

    def handle_write(self) -> None:
        sent = self.send(self.out)
        self.out = self.out[sent:]

    def handle_close(self) -> None:
        self.close()


class EchoServer(asyncore.dispatcher):
    """The listening socket."""

    def __init__(self, host: str, port: int, socket_map: dict[int, asyncore.dispatcher]) -> None:
        super().__init__(map=socket_map)
        self.socket_map = socket_map
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(4096)

    def handle_accept(self) -> None:
        # Accept everything queued, not one per loop iteration: otherwise opening 10,000
        # connections costs 10,000 O(N) poll rounds before the measurement can start.
        assert self.socket is not None
        while True:
            try:
                sock, _addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            EchoHandler(sock, self.socket_map)


def main() -> None:
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    socket_map: dict[int, asyncore.dispatcher] = {}
    server = EchoServer(args.host, args.port, socket_map)
    assert server.socket is not None
    bound = server.socket.getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    try:
        asyncore.loop(timeout=30.0, use_poll=True, map=socket_map)
    finally:
        asyncore.close_all(socket_map)


if __name__ == "__main__":
    main()
