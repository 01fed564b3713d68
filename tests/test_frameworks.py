"""Real frameworks on ferroloop: a uvicorn ASGI app and an aiohttp server with its client.

Each test runs on ferroloop and on asyncio (the oracle), through the frameworks' own ways of
choosing a loop: uvicorn's `loop=` setting (an import string naming a loop factory) and
`asyncio.Runner(loop_factory=...)` for aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request

import aiohttp
import pytest
import uvicorn
from aiohttp import web

LOOP_SETTINGS = {"asyncio": "asyncio", "ferroloop": "ferroloop:new_event_loop"}


def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def asgi_app(scope, receive, send):
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps(
        {"loop": _loop_module(), "path": scope["path"], "method": scope["method"], "len": len(body)}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@pytest.mark.parametrize("loop_kind", ["asyncio", "ferroloop"])
def test_uvicorn_serves_requests(loop_kind):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi_app,
        loop=LOOP_SETTINGS[loop_kind],
        http="httptools",
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # Server.run() builds the loop from `config.loop`; in a thread it installs no signal handlers.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.025)
        assert server.started, "uvicorn did not start"
        base = f"http://127.0.0.1:{port}"
        for i in range(20):
            with urllib.request.urlopen(f"{base}/get/{i}", timeout=10) as resp:
                data = json.loads(resp.read())
            assert data == {"loop": loop_kind, "path": f"/get/{i}", "method": "GET", "len": 0}
        body = b"x" * 300_000
        req = urllib.request.Request(f"{base}/post", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["len"] == len(body)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()


async def _aiohttp_roundtrips() -> dict:
    async def hello(request):
        return web.json_response({"loop": _loop_module(), "name": request.match_info["name"]})

    async def echo(request):
        return web.Response(body=await request.read())

    async def ws_echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.upper())
        return ws

    app = web.Application()
    app.add_routes(
        [web.get("/hello/{name}", hello), web.post("/echo", echo), web.get("/ws", ws_echo)]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    results: dict = {}
    try:
        async with aiohttp.ClientSession() as session:
            names = [f"n{i}" for i in range(30)]
            replies = await asyncio.gather(
                *(session.get(f"http://127.0.0.1:{port}/hello/{n}") for n in names)
            )
            results["hello"] = [await r.json() for r in replies]
            payload = bytes(range(256)) * 4000  # 1 MB
            async with session.post(f"http://127.0.0.1:{port}/echo", data=payload) as r:
                results["echo_ok"] = (await r.read()) == payload
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("ping")
                results["ws"] = (await ws.receive()).data
                await ws.close()
    finally:
        await runner.cleanup()
    return results


@pytest.mark.parametrize("loop_kind", ["asyncio", "ferroloop"])
def test_aiohttp_server_and_client(loop_kind):
    import ferroloop

    factory = ferroloop.new_event_loop if loop_kind == "ferroloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(asyncio.wait_for(_aiohttp_roundtrips(), 30))
    assert results["hello"] == [{"loop": loop_kind, "name": f"n{i}"} for i in range(30)]
    assert results["echo_ok"]
    assert results["ws"] == "PING"
