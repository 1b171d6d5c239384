"""An ordinary aiohttp "Hello, World!" server for benchmarks/http_bench.py.

A plain, unmodified aiohttp application (a ``web.Application`` with one GET ``/``
handler returning ``web.Response(text="Hello, World!")``) served by ``web.AppRunner`` and
``web.TCPSite``, on the event loop named by ``--loop``:

``asyncio``    ``asyncio.new_event_loop()``, the stock loop
``asycamore``  ``asycamore.aio.new_event_loop(BACKEND)`` (``--backend``; by default the
               factory's choice)
``uvloop``     ``uvloop.new_event_loop()``

The access log is off (``access_log=None``): this is a benchmark of the event loop under
a real HTTP stack, not of logging, and one formatted log line per request would be a
large, loop-independent share of the work.  Everything else is aiohttp's defaults.

Prints ``listening on HOST:PORT`` (flushed) once it accepts connections; SIGTERM or
SIGINT stop it cleanly (the runner is cleaned up and the loop closed).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    """GET /: the fixed greeting."""
    return web.Response(text="Hello, World!")


async def serve(host: str, port: int) -> None:
    """Serve the application on *host*:*port* until SIGTERM or SIGINT."""
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"listening on {bound_host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def loop_factory(kind: str, backend: str | None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for ``--loop`` *kind* (imported only when chosen)."""
    if kind == "asycamore":
        from asycamore import aio

        return lambda: aio.new_event_loop(backend)
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def main() -> None:
    """Parse the command line and serve until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "asycamore", "uvloop"), default="asyncio")
    parser.add_argument("--backend", default=None, help="--loop asycamore: the backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory(args.loop, args.backend)) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
