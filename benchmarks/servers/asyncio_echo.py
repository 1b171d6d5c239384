"""An asyncio TCP echo server: the reference, written the fair and fast way.

``asyncio.Protocol`` (no streams layer), TCP_NODELAY, and flow control that stops reading
while the transport's write buffer is over its high-water mark.  ``--uvloop`` runs the
same protocol on uvloop; ``--buffered`` uses an ``asyncio.BufferedProtocol`` that reads into
one preallocated buffer (on 3.11 a plain Protocol gets a fresh 256 KiB ``bytes`` object per
read).  Prints ``listening on HOST:PORT``; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import cast


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever it receives."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class BufferedEchoProtocol(asyncio.BufferedProtocol):
    """Reads into one buffer shared by every connection and writes back a copy of what
    arrived (the copy is made before the next read, so sharing is safe)."""

    transport: asyncio.Transport
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.buffer[:nbytes])

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(host: str, port: int, buffered: bool = False) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    factory: type[asyncio.BaseProtocol] = BufferedEchoProtocol if buffered else EchoProtocol
    server = await loop.create_server(factory, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await stop
    server.close()


def main() -> None:
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--buffered", action="store_true", help="use a BufferedProtocol")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.buffered))
    else:
        asyncio.run(serve(args.host, args.port, args.buffered))


if __name__ == "__main__":
    main()
