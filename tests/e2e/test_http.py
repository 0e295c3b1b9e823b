"""The HTTP path in process: detection, HTTP/1.1 proxying, routing, errors and their
local replies, hostile requests that must never reach the upstream. Every test runs
twice: with the HTTP/1.1 express lane on (the default) and off (the general path)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from e2e_support import merge, metric_value, metrics_text
from l7_peers import EchoH1, start_ws_echo


@pytest.fixture(params=["express", "general"])
def proxy(request, proxy):
    """conftest's ``proxy``, with the HTTP/1.1 lane chosen by the parameter."""
    lane = {"http": {"express": request.param == "express"}}

    async def start(over: dict | None = None):
        return await proxy(merge(lane, over or {}))

    return start


@pytest.fixture
async def upstreams():
    made: list[EchoH1] = []

    async def make(name: str = "up") -> EchoH1:
        u = await EchoH1(name).start()
        made.append(u)
        return u

    yield make
    for u in made:
        await u.stop()


def l7(upstream_port: int, **extra) -> dict:
    cfg = {"listeners": [{"name": "web", "port": 0, "upstream": f"127.0.0.1:{upstream_port}"}]}
    cfg.update(extra)
    return cfg


async def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the proxy closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            out += chunk
    except (asyncio.TimeoutError, ConnectionResetError):
        pass
    writer.close()
    return out


async def test_http1_proxied_with_hygiene_and_keepalive(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    url = f"http://127.0.0.1:{r.port('web')}"
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            async with s.post(f"{url}/echo?i={i}", data=b"x" * i,
                              headers={"x-forwarded-client-cert": "By=spoofed", "x-meshproxy-peer": "evil",
                                       "connection": "keep-alive, x-hop", "x-hop": "drop me"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["len"] == i
    assert len(up.requests) == 5
    seen = up.requests[0]["headers"]
    assert "x-forwarded-client-cert" not in seen and "x-meshproxy-peer" not in seen and "x-hop" not in seen
    assert len(seen["x-request-id"]) == 36 and seen["x-forwarded-proto"] == "http"
    assert len({req["headers"]["x-request-id"] for req in up.requests}) == 5
    assert up.connections == 1, "upstream keep-alive connection was not reused"
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", reporter="source", response_code="200",
                        request_protocol="http", response_flags="-") == 5
    assert metric_value(text, "istio_request_duration_milliseconds_count", response_code="200") == 5
    assert metric_value(text, "istio_request_bytes_sum") == sum(range(5))
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http1") == 1


async def test_request_id_is_kept(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{r.port('web')}/", headers={"x-request-id": "abc-123"}) as resp:
            assert resp.status == 200
    assert up.requests[0]["headers"]["x-request-id"] == "abc-123"


async def test_routes_to_clusters_round_robin_and_by_path(proxy, upstreams):
    a, b, c = await upstreams("a"), await upstreams("b"), await upstreams("c")
    r = await proxy(l7(c.port, clusters=[
        {"name": "ab", "endpoints": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]},
    ], routes=[{"name": "api", "match": {"path": {"prefix": "/api/"}}, "cluster": "ab"}]))
    url = f"http://127.0.0.1:{r.port('web')}"
    async with aiohttp.ClientSession() as s:
        names = []
        for _ in range(4):
            async with s.get(f"{url}/api/x") as resp:
                names.append((await resp.json())["upstream"])
        async with s.get(f"{url}/other") as resp:
            assert (await resp.json())["upstream"] == "c"  # unmatched: passthrough to the listener's upstream
    assert sorted(names) == ["a", "a", "b", "b"] and names[0] != names[1]
    async with aiohttp.ClientSession() as s:
        async with s.get(r.url("admin", "/clusters?format=json")) as resp:
            dump = await resp.json()
    eps = {e["address"]: e for e in dump["cluster_statuses"][0]["endpoints"]}
    assert eps[f"127.0.0.1:{a.port}"]["rq_total"] == 2 and eps[f"127.0.0.1:{b.port}"]["rq_success"] == 2
    assert eps[f"127.0.0.1:{a.port}"]["cx_total"] == 1 and eps[f"127.0.0.1:{b.port}"]["cx_total"] == 1
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", destination_service="ab") == 4


async def test_route_timeout_gives_504_UT(proxy, upstreams):
    up = await upstreams()
    up.delay = 2
    r = await proxy(l7(up.port, clusters=[{"name": "slow", "endpoints": [f"127.0.0.1:{up.port}"]}],
                       routes=[{"name": "slow", "cluster": "slow", "timeout": "0.3s"}]))
    async with aiohttp.ClientSession() as s:
        t0 = asyncio.get_running_loop().time()
        async with s.get(f"http://127.0.0.1:{r.port('web')}/") as resp:
            assert resp.status == 504
            assert resp.headers["x-meshproxy-response-flags"] == "UT"
            assert "UT" in await resp.text()
        assert asyncio.get_running_loop().time() - t0 < 1.5
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code="504", response_flags="UT") == 1


async def test_upstream_refused_gives_503_UF(proxy):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = await proxy(l7(port))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{r.port('web')}/") as resp:
            assert resp.status == 503
            assert resp.headers["x-meshproxy-response-flags"] == "UF"


async def test_broken_upstream_framing_gives_502_and_connection_is_dropped(proxy):
    conns = 0

    async def bad(reader, writer):
        nonlocal conns
        conns += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(bad, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await proxy(l7(port))
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{r.port('web')}/") as resp:
                assert resp.status == 502
                assert resp.headers["x-meshproxy-response-flags"] == "UPE"
    assert conns == 2, "a connection with broken framing must not be reused"
    server.close()


class Recorder:
    """A raw upstream that records every byte it receives."""

    def __init__(self):
        self.received = b""

    async def handle(self, reader, writer):
        while chunk := await reader.read(65536):
            self.received += chunk
            if b"\r\n\r\n" in self.received:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()


HOSTILE = [
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-N: a\x00b\r\n\r\n", 400),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("request_bytes, status", HOSTILE, ids=[f"{i}-{s}" for i, (_, s) in enumerate(HOSTILE)])
async def test_hostile_requests_never_reach_upstream(proxy, request_bytes, status):
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await proxy(l7(port, ports=[{"port": port, "protocol": "http"}]))
    reply = await raw(r.port("web"), request_bytes)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:200]
    assert b"\r\nconnection: close\r\n" in reply.lower()
    assert rec.received == b""
    server.close()
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code=str(status), response_flags="DPE") == 1


async def test_smuggled_second_request_is_not_forwarded(proxy):
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await proxy(l7(port))
    attack = (b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
              b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    reply = await raw(r.port("web"), attack)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in reply
    assert b"/first" in rec.received and b"/smuggled" not in rec.received and b"POST" not in rec.received
    server.close()


async def test_headers_timeout_gives_408(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port, http={"headers_timeout": "0.3s"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finishes the head
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert up.requests == []
    writer.close()


async def test_pipelined_requests_answered_in_order(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(reqs + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    paths = [m.decode() for m in re.findall(rb'"upstream": "up", "method": "GET", "path": "([^"]+)"', data)]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]
    writer.close()


async def test_chunked_request_and_response_with_trailers(proxy):
    got = asyncio.get_running_loop().create_future()

    async def chunky(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\nx-sum: 9\r\n\r\n")
        got.set_result((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: done\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(chunky, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await proxy(l7(port))
    reply = await raw(r.port("web"), b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n"
                                     b"Connection: close\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n", 3)
    head, body = await asyncio.wait_for(got, 5)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.replace(b"\r\n", b"|") == b"4|wiki|5|pedia|0|x-sum: 9||"
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: done\r\n\r\n" in reply
    server.close()


async def test_expect_100_continue(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert up.requests[0]["body"] == b"body" and "expect" not in up.requests[0]["headers"]
    writer.close()


async def test_http10_client(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    reply = await raw(r.port("web"), b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") or reply.startswith(b"HTTP/1.0 200 ")
    assert b'"/old"' in reply


async def test_websocket_upgrade_tunnel(proxy):
    runner, port = await start_ws_echo()
    r = await proxy(l7(port))
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{r.port('web')}/ws") as ws:
            for i in range(3):
                await ws.send_str(f"m{i}")
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.data == f"echo:m{i}"
    await runner.cleanup()
    text = await metrics_text(r)
    assert metric_value(text, "istio_requests_total", response_code="101") == 1


async def test_connect_tunnel(proxy):
    async def target(reader, writer):
        data = await reader.readexactly(4)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    tserver = await asyncio.start_server(target, "127.0.0.1", 0)
    tport = tserver.sockets[0].getsockname()[1]

    async def connect_proxy(reader, writer):  # a CONNECT-speaking upstream (a forward proxy)
        head = await reader.readuntil(b"\r\n\r\n")
        host, port = head.split(b" ")[1].split(b":")
        r2, w2 = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(a, b):
            while d := await a.read(65536):
                b.write(d)
                await b.drain()
            b.close()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer), return_exceptions=True)

    pserver = await asyncio.start_server(connect_proxy, "127.0.0.1", 0)
    pport = pserver.sockets[0].getsockname()[1]
    r = await proxy(l7(pport))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (tport, tport))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.write(b"abcd")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"dcba"
    writer.close()
    tserver.close()
    pserver.close()


async def test_large_response_to_slow_client_stays_bounded(proxy, upstreams):
    up = await upstreams()
    r = await proxy(l7(up.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"), limit=65536)
    writer.transport.pause_reading()
    writer.write(b"GET /big?n=4194304 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.5)
    conns = list(r.app.http.connections)
    assert len(conns) == 1
    assert conns[0].transport.get_write_buffer_size() <= 2 * 1024 * 1024
    writer.transport.resume_reading()
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.endswith(b"z" * 1000) and data.count(b"z") == 4 * 1024 * 1024
    writer.close()
