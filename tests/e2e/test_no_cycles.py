"""A proxied request leaves nothing in a reference cycle: when it ends, reference
counting frees its objects (exchange, upstream stream, heads, fields), so the
cyclic garbage collector has no per-request work. Before the exchange let go of its
upstream stream at the end, every request through the general path left nine
objects in an Exchange <-> UpStream cycle, and under load the collector's passes
over them cost about a tenth of the proxy's CPU (bench/RESULTS.md, eighth session).

Each case proxies requests with the collector switched off, then counts what a
collection finds unreachable among meshproxy's own objects."""

from __future__ import annotations

import asyncio
import gc

import pytest
from h2_peers import H2Upstream, RawH2
from l7_peers import EchoH1, h1_cluster

REQUESTS = 20


def meshproxy_garbage() -> list[str]:
    """Type names of meshproxy objects only a cycle keeps alive (found with the collector's
    DEBUG_SAVEALL, then let go)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("meshproxy.")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def through(send_all) -> list[str]:
    """Run ``send_all()`` once to warm up, then again with the collector off; what it left."""
    await send_all()
    gc.collect()
    gc.disable()
    try:
        await send_all()
        await asyncio.sleep(0.05)  # connections release their streams
        return meshproxy_garbage()
    finally:
        gc.enable()


@pytest.mark.parametrize("upstream", ["h2", "http1"])
async def test_h2_requests_leave_no_cycles(proxy, upstream):
    up = await (H2Upstream().start() if upstream == "h2" else EchoH1().start())
    try:
        over = {"listeners": [{"name": "web", "port": 0, "protocol": "http", "upstream": f"127.0.0.1:{up.port}"}]}
        if upstream == "http1":
            over.update(h1_cluster(up.port))
        r = await proxy(over)
        c = await RawH2.connect(r.port("web"))
        sids = iter(range(1, 10_000, 2))

        async def send_all():
            batch = [next(sids) for _ in range(REQUESTS)]
            for i, sid in enumerate(batch):
                await c.request(sid, "/x", "POST" if i % 2 else "GET", body=b"body" if i % 2 else None)
            await c.read_until(lambda: all(c.done(s) for s in batch))
            assert all(c.responses[s].status == 200 for s in batch)

        try:
            assert await through(send_all) == []
        finally:
            c.close()
    finally:
        await up.stop()


@pytest.mark.parametrize("express", [True, False])
async def test_http1_requests_leave_no_cycles(proxy, express):
    up = await EchoH1().start()
    try:
        r = await proxy({"listeners": [{"name": "web", "port": 0, "protocol": "http",
                                        "upstream": f"127.0.0.1:{up.port}"}],
                         **h1_cluster(up.port), "http": {"express": express}})
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))

        async def send_all():
            for i in range(REQUESTS):
                body = b"body" if i % 2 else b""
                writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 5)

        try:
            assert await through(send_all) == []
        finally:
            writer.close()
    finally:
        await up.stop()


CONNECTIONS = 5


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


@pytest.mark.parametrize("mode", ["express", "general", "h2", "tcp"])
async def test_closed_connections_leave_no_cycles(proxy, mode):
    """A connection that closes leaves nothing in a cycle either: the L4 relay lets go of its
    two sides and their transports when both are gone, the HTTP/1 codec drops its parser
    (which holds the codec's callbacks) when a message ends, and the HTTP/2 codec its C
    collector's callbacks and its nghttp2 handle with the session. Before, each closed
    connection left 15 (relay), 18 (general HTTP/1 path) or 16 (HTTP/2) objects for the
    collector on uvloop."""
    up = await (H2Upstream().start() if mode == "h2" else EchoH1().start())
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        if mode == "tcp":
            port = echo.sockets[0].getsockname()[1]
            r = await proxy({"listeners": [{"name": "web", "port": 0, "protocol": "tcp",
                                            "upstream": f"127.0.0.1:{port}"}]})
        elif mode == "h2":
            r = await proxy({"listeners": [{"name": "web", "port": 0, "protocol": "http",
                                            "upstream": f"127.0.0.1:{up.port}"}]})
        else:
            r = await proxy({"listeners": [{"name": "web", "port": 0, "protocol": "http",
                                            "upstream": f"127.0.0.1:{up.port}"}],
                             **h1_cluster(up.port), "http": {"express": mode == "express"}})

        async def send_all():
            for _ in range(CONNECTIONS):
                if mode == "h2":
                    c = await RawH2.connect(r.port("web"))
                    await c.request(1, "/x")
                    await c.read_until(lambda: c.done(1))
                    assert c.responses[1].status == 200
                    c.close()
                    continue
                reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
                if mode == "tcp":
                    writer.write(b"hello")
                    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
                else:
                    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    assert head.startswith(b"HTTP/1.1 200")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await asyncio.wait_for(reader.readexactly(length), 5)
                writer.close()
                await writer.wait_closed()
            await asyncio.sleep(0.2)  # the proxy sees both ends close

        assert await through(send_all) == []
    finally:
        echo.close()
        await up.stop()
