"""An unmodified third-party asyncio application on asycamore loops: aiohttp.

aiohttp's own server (``web.AppRunner`` + ``web.TCPSite``) runs on a loop from
``asycamore.aio`` and is queried by aiohttp's own client on the same loop, and by curl
(when installed) from another process: its HTTP parser, keep-alive, streaming
responses and websockets all go through the DispatchSelector.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

import asycamore
from asycamore import aio

web = pytest.importorskip("aiohttp.web")
aiohttp = pytest.importorskip("aiohttp")

AVAILABLE = [info.name for info in asycamore.list_backends() if info.available]


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.match_info['name']}")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(100):
            await response.write(b"%d\n" % i)
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data.upper())
        return ws

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    return app


async def _serve_and_query(use_curl: bool) -> None:
    runner = web.AppRunner(_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for name in ("a", "b", "c"):  # keep-alive: one connection, several requests
                async with session.get(f"{base}/hello/{name}") as response:
                    assert response.status == 200
                    assert await response.text() == f"hello {name}"
            body = bytes(range(256)) * 4096  # 1 MiB: both directions overflow a buffer
            async with session.post(f"{base}/echo", data=body) as response:
                assert await response.read() == body
            async with session.get(f"{base}/stream") as response:
                lines = (await response.text()).split()
                assert lines == [str(i) for i in range(100)]
            async with session.ws_connect(f"{base}/ws") as ws:
                await ws.send_str("ping")
                assert (await ws.receive()).data == "PING"
        if use_curl:
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--max-time", "10", f"{base}/hello/curl",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await curl.communicate()
            assert curl.returncode == 0 and out == b"hello curl"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_aiohttp_server_and_client(backend: str) -> None:
    aio.run(_serve_and_query(use_curl=shutil.which("curl") is not None), backend=backend)


def test_aiohttp_with_the_policy() -> None:
    asyncio.set_event_loop_policy(aio.EventLoopPolicy("poll"))
    try:
        asyncio.run(_serve_and_query(use_curl=False))
    finally:
        asyncio.set_event_loop_policy(None)
