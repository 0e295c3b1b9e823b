"""Bulk L4 transfers moved into the kernel (splice(2), ``net/kpipe.py``) end to end: bytes
identical and counted exactly, half-close, resets mirrored, bounded memory for a slow
reader, idle timeout, drain abort, and small traffic left on the transport path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket

import pytest
from e2e_support import metric_value, metrics_text

from meshproxy.net import kpipe
from meshproxy.net import relay as relay_mod
from test_l4 import MiB, explicit, start_server

pytestmark = pytest.mark.skipif(not kpipe.AVAILABLE or relay_mod._ioctl is None,
                                reason="splice(2) and TCP_INFO byte counts are Linux only")

EAGER = {"bulk_splice": True, "bulk_splice_rate_bytes": 1, "bulk_splice_probe_interval": 0.01}
"""Move any connection that moved a byte: every test below runs on the kernel pump."""


def only_relay(r):
    relays = list(r.app.connections.active)
    assert len(relays) == 1
    return relays[0]


async def until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def write_until_pumped(r, writer, byte: bytes = b"q") -> int:
    """Keep bytes flowing downstream → upstream until the relay is on the pump; bytes written."""
    n = 0
    for _ in range(500):
        writer.write(byte * 1000)
        await writer.drain()
        n += 1000
        if r.app.connections.active and only_relay(r).pumped:
            return n
        await asyncio.sleep(0.005)
    raise AssertionError("the relay never moved to the kernel pump")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_64mib_each_way_through_the_kernel_byte_identical_and_counted(proxy):
    size = 64 * MiB
    up_payload = random.Random(3).randbytes(size)
    down_payload = random.Random(4).randbytes(size)
    got_at_upstream = hashlib.sha256()

    async def upstream(reader, writer):
        async def send():
            for i in range(0, size, MiB):
                writer.write(up_payload[i:i + MiB])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        while chunk := await reader.read(256 * 1024):
            got_at_upstream.update(chunk)
        await sender
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, **EAGER))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    pumped_at = []

    async def send():
        for i in range(0, size, MiB):
            writer.write(down_payload[i:i + MiB])
            await writer.drain()
            if not pumped_at and r.app.connections.active and only_relay(r).pumped:
                pumped_at.append(i)
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    got_at_client = hashlib.sha256()
    received = 0
    while chunk := await asyncio.wait_for(reader.read(256 * 1024), 30):
        got_at_client.update(chunk)
        received += len(chunk)
    await sender
    assert pumped_at and pumped_at[0] < size // 2, "the transfer did not move to the kernel early"
    writer.close()
    server.close()
    assert received == size
    assert got_at_client.digest() == hashlib.sha256(up_payload).digest()
    assert got_at_upstream.digest() == hashlib.sha256(down_payload).digest()
    await until(lambda: not r.app.connections.active)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_received_bytes_total", reporter="source") == size
    assert metric_value(text, "istio_tcp_sent_bytes_total", reporter="source") == size
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="-") == 1


async def test_half_close_while_pumped_keeps_the_other_direction(proxy):
    done = asyncio.get_running_loop().create_future()

    async def upstream(reader, writer):
        got = await reader.read()  # until the client's EOF arrives through the pump
        for _ in range(4):  # then keep answering after it
            writer.write(b"r" * 100_000)
            await writer.drain()
        writer.close()
        done.set_result(got)

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, **EAGER))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    n = await write_until_pumped(r, writer)
    writer.write(b"q" * 5_000)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"r" * 400_000
    assert await asyncio.wait_for(done, 5) == b"q" * (n + 5_000)
    writer.close()
    server.close()
    await until(lambda: not r.app.connections.active)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_received_bytes_total") == n + 5_000
    assert metric_value(text, "istio_tcp_sent_bytes_total") == 400_000
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="-") == 1


async def test_upstream_reset_while_pumped_resets_downstream_with_UC(proxy):
    go = asyncio.Event()

    async def upstream(reader, writer):
        await go.wait()
        await reader.read(1 << 20)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, **EAGER))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    n = await write_until_pumped(r, writer)
    go.set()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    await until(lambda: not r.app.connections.active)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="UC") == 1
    assert metric_value(text, "istio_tcp_received_bytes_total") == n
    writer.close()
    server.close()


async def test_slow_reader_is_bounded_by_the_pipes(proxy):
    total = 48 * MiB
    sent = 0

    async def upstream(reader, writer):
        nonlocal sent
        chunk = b"s" * MiB
        try:
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, **EAGER))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"), limit=MiB)
    got = 0
    while not (r.app.connections.active and only_relay(r).pumped):  # read until the pump runs
        got += len(await asyncio.wait_for(reader.read(MiB), 10))
    await asyncio.sleep(0.5)  # now the client reads nothing: the upstream must stall
    relay = only_relay(r)
    cap = max(w.cap for w in relay.pump.ways)
    assert relay.pump.buffered <= 2 * cap
    stalled_at = sent
    await asyncio.sleep(0.3)
    assert sent == stalled_at < total, "the upstream was not slowed down by the stalled client"
    while chunk := await asyncio.wait_for(reader.read(MiB), 10):
        got += len(chunk)
    assert got == total
    writer.close()
    server.close()


async def test_idle_pumped_connection_times_out_with_SI(proxy):
    async def upstream(reader, writer):
        await reader.read()  # hold the connection open, silently
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, idle_timeout="0.3s", **EAGER))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    await write_until_pumped(r, writer)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await until(lambda: not r.app.connections.active)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="SI") == 1
    writer.close()
    server.close()


async def test_abort_while_pumped_closes_everything_and_leaks_no_descriptors(proxy):
    async def upstream(reader, writer):
        await reader.read()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, **EAGER))
    before = fd_count()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    await write_until_pumped(r, writer)
    only_relay(r).abort()  # what the end of a drain does
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass  # closed with our bytes unread: the kernel answers with a reset
    await until(lambda: not r.app.connections.active)
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionResetError:
        pass
    server.close()
    await asyncio.sleep(0.05)
    assert fd_count() <= before


async def test_request_response_traffic_stays_on_the_transport_path(proxy):
    async def upstream(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, bulk_splice=True, bulk_splice_probe_interval=0.01))  # default rate: 8 MiB
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    for _ in range(30):
        writer.write(b"m" * 1000)
        assert await asyncio.wait_for(reader.readexactly(1000), 5) == b"m" * 1000
        await asyncio.sleep(0.005)
    relay = only_relay(r)
    assert relay.spliced == (True, True) and not relay.pumped
    writer.close()
    server.close()


async def test_bulk_splice_is_off_unless_asked_for(proxy):
    async def upstream(reader, writer):
        writer.write(b"z" * (4 * MiB))
        await writer.drain()
        await reader.read()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, bulk_splice_rate_bytes=1, bulk_splice_probe_interval=0.01))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    assert len(await asyncio.wait_for(reader.readexactly(4 * MiB), 10)) == 4 * MiB
    await asyncio.sleep(0.05)
    assert not only_relay(r).pumped
    writer.close()
    server.close()
