#!/usr/bin/env python3
"""A line-based chat server built on asycamore.servicemodel.

Every line a client sends is broadcast to the others as ``<nick> line``.  Commands:
``/nick NAME`` renames you, ``/who`` lists who is here, ``/quit`` leaves.  Quiet
clients are disconnected after --idle-timeout seconds.

    python examples/chat_server.py --port 8008
    nc 127.0.0.1 8008

It prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM (or --duration).
"""

from __future__ import annotations

import argparse
import itertools
import sys

from asycamore.servicemodel import Connection, LineProtocol, Service


class ChatRoom:
    def __init__(self) -> None:
        self.members: dict[ChatClient, str] = {}
        self.numbers = itertools.count(1)

    def broadcast(self, line: bytes, sender: ChatClient | None = None) -> None:
        for member in self.members:
            if member is not sender:
                member.send_line(line)


class ChatClient(LineProtocol):
    max_line_length = 4096

    def __init__(self, room: ChatRoom) -> None:
        super().__init__()
        self.room = room

    @property
    def nick(self) -> str:
        return self.room.members[self]

    def connection_made(self, transport: Connection) -> None:
        super().connection_made(transport)
        nick = f"guest{next(self.room.numbers)}"
        self.room.broadcast(f"* {nick} joined".encode())
        self.room.members[self] = nick
        self.send_line(f"* welcome, {nick}".encode())

    def line_received(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if line.startswith(b"/nick "):
            new = line[6:].strip().decode(errors="replace")[:32] or self.nick
            self.room.broadcast(f"* {self.nick} is now {new}".encode(), self)
            self.room.members[self] = new
            self.send_line(f"* you are now {new}".encode())
        elif line == b"/who":
            self.send_line(("* here: " + ", ".join(sorted(self.room.members.values()))).encode())
        elif line == b"/quit":
            self.send_line(b"* bye")
            assert self.transport is not None
            self.transport.close()
        elif line:
            self.room.broadcast(b"<" + self.nick.encode() + b"> " + line, self)

    def connection_idle(self) -> None:
        self.send_line(b"* disconnected for inactivity")
        super().connection_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        nick = self.room.members.pop(self, None)
        if nick is not None:
            self.room.broadcast(f"* {nick} left".encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--backend", help="dispatch backend (default: the best)")
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)

    room = ChatRoom()
    with Service(args.backend, stop_timeout=2.0) as service:
        listener = service.listen_tcp(
            lambda: ChatClient(room), args.host, args.port, idle_timeout=args.idle_timeout
        )
        print(f"listening on {args.host}:{listener.port}", flush=True)
        if args.duration is not None:
            service.call_later(args.duration, service.stop)
        service.serve_forever()  # SIGINT/SIGTERM stop it gracefully
    return 0


if __name__ == "__main__":
    sys.exit(main())
