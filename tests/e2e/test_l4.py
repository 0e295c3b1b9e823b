"""The L4 relay end to end on loopback: explicit and (stubbed) transparent listeners,
byte integrity, backpressure, half-close, timeouts, refusals and their metrics."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket

import pytest
from e2e_support import metric_value, metrics_text, refused_port

from meshproxy.net.addrs import OrigDst

MiB = 1024 * 1024


async def start_server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def explicit(upstream_port: int, protocol: str = "tcp", **tcp) -> dict:
    cfg = {"listeners": [{"name": "l4", "address": "127.0.0.1", "port": 0, "protocol": protocol,
                          "upstream": f"127.0.0.1:{upstream_port}"}]}
    if tcp:
        cfg["tcp"] = tcp
    return cfg


async def test_64mib_each_way_byte_identical(proxy):
    size = 64 * MiB
    up_payload = random.Random(1).randbytes(size)
    down_payload = random.Random(2).randbytes(size)
    got_at_upstream = hashlib.sha256()

    async def upstream(reader, writer):
        async def send():
            view = memoryview(up_payload)
            for i in range(0, size, MiB):
                writer.write(view[i:i + MiB])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        n = 0
        while chunk := await reader.read(256 * 1024):
            got_at_upstream.update(chunk)
            n += len(chunk)
        await sender
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))

    async def send():
        view = memoryview(down_payload)
        for i in range(0, size, MiB):
            writer.write(view[i:i + MiB])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    got_at_client = hashlib.sha256()
    received = 0
    while chunk := await asyncio.wait_for(reader.read(256 * 1024), 30):
        got_at_client.update(chunk)
        received += len(chunk)
    await sender
    writer.close()
    server.close()
    assert received == size
    assert got_at_client.digest() == hashlib.sha256(up_payload).digest()
    assert got_at_upstream.digest() == hashlib.sha256(down_payload).digest()
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_received_bytes_total", reporter="source") == size
    assert metric_value(text, "istio_tcp_sent_bytes_total", reporter="source") == size
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="-") == 1


async def test_slow_reader_keeps_proxy_memory_bounded(proxy):
    limit = 256 * 1024
    sent = 0
    upstream_blocked = asyncio.Event()
    total = 64 * MiB

    async def upstream(reader, writer):
        nonlocal sent
        block = b"x" * (64 * 1024)
        while sent < total:
            writer.write(block)
            sent += len(block)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except asyncio.TimeoutError:
                upstream_blocked.set()
                await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, buffer_limit_bytes=limit))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"), limit=64 * 1024)
    # Do not read: the client's socket buffers fill, then the proxy's, then the upstream blocks.
    writer.transport.pause_reading()
    await asyncio.wait_for(upstream_blocked.wait(), 10)
    relays = list(r.app.connections.active)
    assert len(relays) == 1
    buffered = relays[0].down.transport.get_write_buffer_size()
    # The proxy holds at most its high-water mark plus one read; the rest sits in kernel buffers.
    assert buffered <= limit + 256 * 1024, buffered
    assert sent < total, "upstream was never slowed down"
    writer.transport.resume_reading()
    got = 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
        got += len(chunk)
    assert got == total
    writer.close()
    server.close()


async def test_half_close_both_directions(proxy):
    async def upstream(reader, writer):
        data = await reader.read()  # until the client's EOF arrives through the proxy
        writer.write(b"got:" + data)
        await writer.drain()
        writer.write_eof()  # half-close from the upstream; the client may still talk? no: done
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"hello")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"got:hello"
    writer.close()
    server.close()


async def test_upstream_half_close_first_client_keeps_sending(proxy):
    async def upstream(reader, writer):
        writer.write(b"banner\n")
        writer.write_eof()  # upstream is done talking, still listening
        data = await reader.read()
        assert data == b"a" * 100_000
        server_got.set_result(len(data))
        writer.close()

    server_got = asyncio.get_running_loop().create_future()
    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    assert await asyncio.wait_for(reader.read(), 5) == b"banner\n"  # EOF reached the client
    writer.write(b"a" * 100_000)
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(server_got, 5) == 100_000
    writer.close()
    server.close()


async def test_idle_timeout_closes_and_counts(proxy):
    async def upstream(reader, writer):
        await reader.read()
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, idle_timeout="0.3s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"ping")
    await writer.drain()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    elapsed = loop.time() - t0
    assert 0.25 <= elapsed < 2.0
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="SI") == 1
    writer.close()
    server.close()


async def test_active_connection_is_not_idle(proxy):
    async def upstream(reader, writer):
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, idle_timeout="0.4s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    for _ in range(8):  # 0.8 s of steady traffic, twice the timeout
        writer.write(b"tick")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"tick"
        await asyncio.sleep(0.1)
    writer.close()
    server.close()


async def test_upstream_refused_resets_downstream_with_UF(proxy):
    r = await proxy(explicit(refused_port()))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(10), 5)
        assert data == b""
        raise asyncio.IncompleteReadError(b"", 1)
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="UF") == 1
    assert metric_value(text, "istio_tcp_connections_opened_total") == 1
    writer.close()


async def test_connect_timeout_gives_UF(proxy):
    # A listener whose accept queue is full drops further SYNs: connects hang.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    try:
        r = await proxy(explicit(port, connect_timeout="0.3s"))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
        try:
            assert await asyncio.wait_for(reader.read(10), 5) == b""
        except ConnectionResetError:
            pass
        assert 0.25 <= loop.time() - t0 < 3
        await asyncio.sleep(0.05)
        text = await metrics_text(r)
        assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="UF") == 1
        writer.close()
    finally:
        for c in fillers:
            c.close()
        full.close()


async def test_upstream_reset_mid_stream_resets_downstream(proxy):
    async def upstream(reader, writer):
        await reader.readexactly(3)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    writer.write(b"abc")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="UC") == 1
    server.close()


async def test_outbound_passthrough_to_original_destination(proxy, origdst):
    async def upstream(reader, writer):
        writer.write(b"real destination")
        await writer.drain()
        writer.close()

    server, port = await start_server(upstream)
    origdst.default = OrigDst("127.0.0.1", port)
    r = await proxy({"outbound": {"enabled": True}, "ports": [{"port": port, "protocol": "tcp"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("virtualOutbound"))
    assert await asyncio.wait_for(reader.read(), 5) == b"real destination"
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_opened_total", reporter="source",
                        source_workload="web", source_workload_namespace="shop",
                        destination_service=f"127.0.0.1:{port}") == 1


async def test_inbound_reaches_app_from_passthrough_source(proxy, origdst):
    seen = asyncio.get_running_loop().create_future()

    async def app(reader, writer):
        seen.set_result(writer.get_extra_info("peername")[0])
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    server, port = await start_server(app)
    # The client meant 198.18.0.10:<port>; inbound forwards to 127.0.0.1:<same port>.
    origdst.default = OrigDst("198.18.0.10", port)
    r = await proxy({"inbound": {"enabled": True}, "ports": [{"port": port, "protocol": "tcp"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("virtualInbound"))
    assert await asyncio.wait_for(reader.read(), 5) == b"hi"
    assert await seen == "127.0.0.6"
    writer.close()
    server.close()
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    assert metric_value(text, "istio_tcp_connections_opened_total", reporter="destination",
                        destination_workload="web", connection_security_policy="none",
                        destination_service=f"198.18.0.10:{port}") == 1


@pytest.mark.parametrize("case", ["not-redirected", "to-own-port"])
async def test_loop_is_refused_and_proxy_survives(proxy, origdst, case):
    r = await proxy({"outbound": {"enabled": True}})
    own = r.port("virtualOutbound")
    origdst.default = None if case == "not-redirected" else OrigDst("127.0.0.1", own)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", own)
        try:
            assert await asyncio.wait_for(reader.read(10), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()
    await asyncio.sleep(0.05)
    text = await metrics_text(r)
    # Exactly our three connections: nothing looped back into the listener.
    assert metric_value(text, "istio_tcp_connections_opened_total") == 3
    assert metric_value(text, "istio_tcp_connections_closed_total", response_flags="NR") == 3
    assert metric_value(text, "meshproxy_listener_refused_connections_total") == 3


@pytest.mark.parametrize("how", ["detect-timeout", "declared-tcp", "server-first-port"])
async def test_server_first_protocol_through_auto_listener(proxy, how):
    """A server-first protocol on a listener that detects: it works after the detection
    timeout, at once on a port declared tcp, and at once on a well-known server-first port."""
    async def upstream(reader, writer):
        writer.write(b"220 banner\r\n")
        await writer.drain()
        assert await reader.readexactly(5) == b"QUIT\n"
        writer.close()

    server, port = await start_server(upstream)
    cfg = explicit(port, protocol="auto")
    cfg["detection"] = {"timeout": "0.4s"}
    if how == "declared-tcp":
        cfg["ports"] = [{"port": port, "protocol": "tcp-smtp"}]
    elif how == "server-first-port":
        cfg["detection"]["server_first_ports"] = [port]
    r = await proxy(cfg)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    assert await asyncio.wait_for(reader.readline(), 5) == b"220 banner\r\n"
    waited = loop.time() - t0
    if how == "detect-timeout":
        assert waited >= 0.35
    else:
        assert waited < 0.3
    writer.write(b"QUIT\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    server.close()
    text = await metrics_text(r)
    outcome = {"detect-timeout": "timeout", "declared-tcp": "declared", "server-first-port": "server_first"}[how]
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome=outcome) == 1


async def test_opaque_bytes_through_auto_listener_are_replayed(proxy):
    """Detection peeks at binary bytes, calls them opaque and replays every one."""
    got = asyncio.get_running_loop().create_future()

    async def upstream(reader, writer):
        got.set_result(await reader.read())
        writer.close()

    server, port = await start_server(upstream)
    r = await proxy(explicit(port, protocol="auto"))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("l4"))
    payload = bytes(range(256)) * 64
    writer.write(payload[:3])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(payload[3:])
    writer.write_eof()
    assert await asyncio.wait_for(got, 5) == payload
    writer.close()
    server.close()
