"""Echo servers for benchmarks/aio_bench.py: the two directions of asycamore.aio.

``--mode loop``   asyncio_echo.py's ``asyncio.Protocol`` server, unchanged, on a loop from
                  ``asycamore.aio.new_event_loop(BACKEND)`` (asyncio on asycamore).
``--mode serve``  ``asycamore echo``'s protocol (``asycamore.echo.EchoProtocol``) in a
                  Service hosted by ``asycamore.aio.serve`` on a stock asyncio loop (or
                  uvloop with ``--uvloop``): asycamore inside asyncio.

Prints ``listening on HOST:PORT``; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from asycamore import aio
from asycamore.echo import EchoProtocol
from asycamore.servicemodel import Service

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asyncio_echo  # the reference server, next to this file


async def serve_hosted(backend: str | None, host: str, port: int) -> None:
    """``asycamore echo``'s protocol, served by aio.serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    with Service(backend) as service:
        listener = service.listen_tcp(EchoProtocol, host, port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)  # the host owns signals
        print(f"listening on {host}:{listener.port}", flush=True)
        await aio.serve(service)


def main() -> None:
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("loop", "serve"), required=True)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="--mode serve: host on uvloop")
    parser.add_argument("--buffered", action="store_true", help="--mode loop: BufferedProtocol")
    args = parser.parse_args()
    if args.mode == "loop":
        aio.run(asyncio_echo.serve(args.host, args.port, args.buffered), backend=args.backend)
    elif args.uvloop:
        import uvloop

        uvloop.run(serve_hosted(args.backend, args.host, args.port))
    else:
        asyncio.run(serve_hosted(args.backend, args.host, args.port))


if __name__ == "__main__":
    main()
