"""The L4 relay's fast path end to end, on both loops: plain TCP sides are spliced
(a read is the other transport's ``write``) and byte metrics, now read from the
kernel, stay exact: while open, across peeked bytes, half-closes and resets."""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import metric_value, metrics_text

from meshproxy.net import relay as relay_mod
from meshproxy.net.relay import _Splice
from test_l4 import explicit, start_server

pytestmark = pytest.mark.skipif(relay_mod._ioctl is None, reason="TCP_INFO byte counts are Linux only")


def only_relay(r):
    relays = list(r.app.connections.active)
    assert len(relays) == 1
    return relays[0]


async def counted(r) -> tuple[float, float]:
    text = await metrics_text(r)  # a scrape flushes the live relays' counters first
    return (metric_value(text, "istio_tcp_received_bytes_total"),
            metric_value(text, "istio_tcp_sent_bytes_total"))


async def test_plain_tcp_sides_are_spliced_and_counted_exactly_while_open(proxy):
    async def upstream(reader, writer):
        while data := await reader.read(65536):
            writer.write(data + data)  # twice as much back
            await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"a" * 1000)
    assert await asyncio.wait_for(reader.readexactly(2000), 5) == b"a" * 2000
    relay = only_relay(r)
    assert relay.spliced == (True, True)
    fast = relay.down.transport.get_protocol()
    assert isinstance(fast, _Splice) and fast.data_received == relay.up.transport.write
    assert await counted(r) == (1000, 2000)
    for _ in range(20):
        writer.write(b"b" * 5000)
        assert len(await asyncio.wait_for(reader.readexactly(10000), 5)) == 10000
    assert await counted(r) == (101_000, 202_000)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    assert await counted(r) == (101_000, 202_000)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="-") == 1


async def test_peeked_bytes_counted_once(proxy):
    """Detection reads the first bytes, the relay replays them, then the kernel's count
    (which has them too) takes over: each byte counted once, during and after."""
    got = bytearray()
    more = asyncio.Event()

    async def upstream(reader, writer):
        while data := await reader.read(65536):
            got.extend(data)
            if len(got) >= 3 + 4096:
                more.set()
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, protocol="auto"))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    payload = bytes(range(256)) * 64
    writer.write(payload[:3])  # binary: detection calls it opaque and peeks these
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(payload[3:4099])
    await asyncio.wait_for(more.wait(), 5)
    assert only_relay(r).spliced == (True, True)
    assert await counted(r) == (4099, 0)
    writer.write(payload[4099:])
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"bye"
    assert bytes(got) == payload
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    assert await counted(r) == (len(payload), 3)


async def test_half_close_counts_no_fin(proxy):
    """A FIN is a byte to the kernel's counter, not to our metrics: scrape while the
    request direction has ended and the response hasn't, then after both."""
    release = asyncio.Event()

    async def upstream(reader, writer):
        data = await reader.read()
        await release.wait()
        writer.write(b"got:" + data)
        await writer.drain()
        writer.write_eof()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"x")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"hello")
    writer.write_eof()
    await asyncio.sleep(0.1)
    assert only_relay(r).spliced == (True, True)
    assert await counted(r) == (6, 0)
    release.set()
    assert await asyncio.wait_for(reader.read(), 5) == b"got:xhello"
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    assert await counted(r) == (6, 10)


async def test_server_first_bytes_before_the_splice_counted_once(proxy):
    async def upstream(reader, writer):
        writer.write(b"220 banner\r\n")
        await writer.drain()
        assert await reader.readexactly(5) == b"QUIT\n"
        writer.write(b"221\r\n")
        await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    assert await asyncio.wait_for(reader.readline(), 5) == b"220 banner\r\n"
    writer.write(b"QUIT\n")
    assert await asyncio.wait_for(reader.read(), 5) == b"221\r\n"
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    assert await counted(r) == (5, 17)


async def test_upstream_reset_counts_what_was_read_and_flags_UC(proxy):
    async def upstream(reader, writer):
        await reader.readexactly(3)
        writer.write(b"12345")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"abc")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"12345"
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    await asyncio.sleep(0.05)
    assert await counted(r) == (3, 5)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="UC") == 1
    server.close()


async def test_without_kernel_counts_the_slow_path_relays_and_counts(proxy, monkeypatch):
    monkeypatch.setattr(relay_mod, "_kernel_counts", False)

    async def upstream(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"0123456789" * 100)
    await writer.drain()
    await asyncio.sleep(0.05)
    assert only_relay(r).spliced == (False, False)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == (b"0123456789" * 100)[::-1]
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    assert await counted(r) == (1000, 1000)
