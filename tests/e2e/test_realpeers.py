"""Real clients and servers through meshproxy instead of mocks: curl keep-alive
over several URLs, a WebSocket echo with the ``websockets`` library, and bounded
h2load smoke runs (HTTP/1.1 and h2c) against nginx."""

from __future__ import annotations

import asyncio
import re

import pytest
from e2e_support import metric_value, metrics_text
from l7_peers import EchoH1, Nginx, listener, need_tool, run

REQUESTS = 1000  # per h2load run (the brief's bound is 2000)


@pytest.fixture
def nginx(tmp_path):
    n = Nginx(tmp_path).start()
    yield n
    n.stop()


async def test_curl_keepalive_several_urls_one_connection(proxy):
    curl = need_tool("curl")
    up = await EchoH1().start()
    try:
        r = await proxy(listener(up.port))
        base = f"http://127.0.0.1:{r.port('web')}"
        urls = [f"{base}/one", f"{base}/two?x=2", f"{base}/three", f"{base}/four"]
        outputs = [a for url in urls for a in ("-o", "/dev/null", url)]
        rc, out, err = await run([curl, "-sS", "--max-time", "10",
                                  "-w", "%{num_connects} %{http_code} %{url_effective}\n", *outputs])
        assert rc == 0, err
        lines = out.strip().splitlines()
        assert [ln.split()[:2] for ln in lines] == [["1", "200"], ["0", "200"], ["0", "200"], ["0", "200"]], out
        assert [q["path"] for q in up.requests] == ["/one", "/two?x=2", "/three", "/four"]
        assert up.connections == 1, "the proxy should reuse one upstream keep-alive connection"
        text = await metrics_text(r)
        assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http1") == 1
        assert metric_value(text, "istio_requests_total", response_code="200") == 4
    finally:
        await up.stop()


async def test_websocket_echo_with_websockets_library(proxy):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    closed_with: list = []
    seen_paths: list = []

    async def echo(ws):
        seen_paths.append(ws.request.path)
        try:
            async for msg in ws:
                await ws.send(msg)
        finally:
            closed_with.append((ws.close_code, ws.close_reason))

    async with serve(echo, "127.0.0.1", 0, max_size=4 << 20) as server:
        port = server.sockets[0].getsockname()[1] if hasattr(server, "sockets") else list(server.sockets)[0]
        r = await proxy(listener(port))
        async with connect(f"ws://127.0.0.1:{r.port('web')}/chat?room=1", max_size=4 << 20,
                           open_timeout=5, close_timeout=5) as ws:
            for i in range(5):
                await ws.send(f"hello {i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"hello {i}"
            blob = bytes(range(256)) * 4096  # 1 MiB binary frame
            await ws.send(blob)
            assert await asyncio.wait_for(ws.recv(), 10) == blob
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)
            await ws.close(code=4000, reason="bye")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not closed_with and loop.time() < deadline:
            await asyncio.sleep(0.02)
    assert seen_paths == ["/chat?room=1"]
    assert closed_with == [(4000, "bye")]
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code="101") == 1


def _h2load_ok(out: str, n: int) -> None:
    assert re.search(rf"requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored, "
                     rf"0 timeout", out), out
    assert re.search(rf"status codes: {n} 2xx, 0 3xx, 0 4xx, 0 5xx", out), out


async def test_h2load_http1_smoke(proxy, nginx):
    h2load = need_tool("h2load")
    r = await proxy(listener(nginx.h1_port))
    rc, out, err = await run([h2load, "--h1", f"-n{REQUESTS}", "-c10", "-t1",
                              f"http://127.0.0.1:{r.port('web')}/"], timeout=60)
    assert rc == 0, out + err
    _h2load_ok(out, REQUESTS)
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code="200", request_protocol="http") == REQUESTS
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http1") == 10


async def test_h2load_h2c_smoke(proxy, nginx):
    h2load = need_tool("h2load")
    r = await proxy(listener(nginx.h2_port))
    rc, out, err = await run([h2load, f"-n{REQUESTS}", "-c4", "-m10", "-t1",
                              f"http://127.0.0.1:{r.port('web')}/"], timeout=60)
    assert rc == 0, out + err
    _h2load_ok(out, REQUESTS)
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code="200") == REQUESTS
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http2") == 4
