"""HTTP/2 downstream end to end, with real peers (curl, h2load) and a raw frame
client for what libraries will not do: h2c prior knowledge, H2 → HTTP/1.1
translation, multiplexing, flow control with a reader that never acknowledges,
REFUSED_STREAM beyond the stream limit, rapid-reset GOAWAY, GOAWAY on drain and
connection-specific headers. Runs on asyncio and uvloop (conftest) and on both
HTTP/2 codec backends (``h2_backend``)."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import aiohttp
import pytest
from e2e_support import metric_value, metrics_text
from h2_peers import CANCEL, ENHANCE_YOUR_CALM, PROTOCOL_ERROR, REFUSED_STREAM, H2Upstream, RawH2
from l7_peers import EchoH1, RecorderH1, h1_cluster, listener, need_tool, run

from meshproxy.codec import http2
from meshproxy.http import server as server_module
from meshproxy.upstream import client as client_module


@pytest.fixture(autouse=True, params=["nghttp2", "h2"])
def h2_backend(request, monkeypatch):
    """Every test here runs the proxy on both HTTP/2 codec backends, downstream and
    upstream (the other e2e suites use the default one)."""
    try:
        cls = http2.codec_class(request.param)
    except ImportError as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    monkeypatch.setattr(server_module, "Http2Codec", cls)
    monkeypatch.setattr(client_module, "Http2Codec", cls)
    return request.param


@pytest.fixture
async def h2up():
    ups: list[H2Upstream] = []

    async def make(**kw) -> H2Upstream:
        u = await H2Upstream(**kw).start()
        ups.append(u)
        return u

    yield make
    for u in ups:
        await u.stop()


@pytest.fixture
async def h1up():
    ups: list[EchoH1] = []

    async def make() -> EchoH1:
        u = await EchoH1().start()
        ups.append(u)
        return u

    yield make
    for u in ups:
        await u.stop()


@pytest.fixture
async def client():
    made: list[RawH2] = []

    async def connect(port: int, **kw) -> RawH2:
        c = await RawH2.connect(port, **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


# === h2c prior knowledge ====================================================

async def test_curl_h2c_prior_knowledge_to_h2_upstream(proxy, h2up):
    curl = need_tool("curl")
    up = await h2up()
    r = await proxy(listener(up.port))
    rc, out, err = await run([curl, "-sS", "--max-time", "10", "--http2-prior-knowledge",
                              "-H", "x-test: one", "-w", "\n%{http_version} %{response_code}",
                              f"http://127.0.0.1:{r.port('web')}/hello?q=1"])
    assert rc == 0, err
    body, _, tail = out.rpartition("\n")
    assert tail == "2 200"
    echo = json.loads(body)
    assert echo["headers"][":path"] == "/hello?q=1" and echo["headers"]["x-test"] == "one"
    assert echo["headers"][":method"] == "GET"
    assert len(echo["headers"]["x-request-id"]) == 36
    text = await metrics_text(r)
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http2") == 1
    assert metric_value(text, "istio_requests_total", response_code="200", request_protocol="http") == 1


async def test_raw_h2_client_to_h2_upstream(proxy, h2up, client):
    up = await h2up()
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    await c.request(1, "/a", "POST", body=b"payload-1", extra=[("x-a", "1")])
    await c.request(3, "/b", "GET")
    await c.read_until(lambda: c.done(1) and c.done(3))
    for sid, path in ((1, "/a"), (3, "/b")):
        resp = c.responses[sid]
        assert resp.status == 200 and resp.reset is None
        echo = json.loads(resp.body)
        assert echo["headers"][":path"] == path
    assert json.loads(c.responses[1].body)["body"] == "payload-1"
    assert up.connections == 1


async def test_h2_downstream_to_http1_cluster_translates_request_and_response(proxy, client):
    rec = await RecorderH1().start()
    try:
        r = await proxy(listener(rec.port, **h1_cluster(rec.port)))
        c = await client(r.port("web"))
        await c.request(1, "/upload?x=1", "PUT", body=b"wikipedia",
                        extra=[("te", "trailers"), ("x-custom", "v1"), ("cookie", "a=1"), ("cookie", "b=2")],
                        trailers=[("x-sum", "9")])
        await c.read_until(lambda: c.done(1))
        resp = c.responses[1]
        assert resp.reset is None, f"stream reset {resp.reset}"
        assert resp.status == 201 and resp.header("x-origin") == "recorder"
        assert bytes(resp.body) == b"abcde"
        assert ("x-t", "done") in resp.trailers, resp.trailers
        assert resp.header("transfer-encoding") is None
        head, body = rec.requests[0]
        lines = head.decode().split("\r\n")
        assert lines[0] == "PUT /upload?x=1 HTTP/1.1"
        fields = [tuple(x.split(": ", 1)) for x in lines[1:] if x]
        names = [k.lower() for k, _ in fields]
        assert ("host", "test.local") in [(k.lower(), v) for k, v in fields]
        assert names.count("host") == 1
        assert ("x-custom", "v1") in [(k.lower(), v) for k, v in fields]
        cookies = [v for k, v in fields if k.lower() == "cookie"]
        assert cookies == ["a=1; b=2"] or sorted(cookies) == ["a=1", "b=2"]
        assert not any(n.startswith(":") for n in names)
        assert "transfer-encoding" in names
        assert body.replace(b"\r\n", b"|").endswith(b"0|x-sum: 9||"), body
        assert b"wikipedia" in body.replace(b"\r\n", b"")
    finally:
        rec.stop()


async def test_curl_h2c_to_http1_cluster_post(proxy, h1up):
    curl = need_tool("curl")
    up = await h1up()
    r = await proxy(listener(up.port, **h1_cluster(up.port)))
    rc, out, err = await run([curl, "-sS", "--max-time", "10", "--http2-prior-knowledge", "-X", "POST",
                              "--data-binary", "0123456789", "-w", "\n%{http_version}",
                              f"http://127.0.0.1:{r.port('web')}/p"])
    assert rc == 0, err
    body, _, version = out.rpartition("\n")
    assert version == "2"
    echo = json.loads(body)
    assert echo["method"] == "POST" and echo["len"] == 10 and echo["path"] == "/p"
    assert up.requests[0]["body"] == b"0123456789"


# === multiplexing ==========================================================

async def test_h2load_many_streams_on_one_connection(proxy, h2up):
    h2load = need_tool("h2load")
    up = await h2up()
    up.slow_delay = 0.05  # each answer waits, so the 50 streams really are open at once
    r = await proxy(listener(up.port))
    rc, out, err = await run([h2load, "-c1", "-m50", "-n500", "-t1", f"http://127.0.0.1:{r.port('web')}/slow"],
                             timeout=60)
    assert rc == 0, out + err
    assert re.search(r"requests: 500 total, 500 started, 500 done, 500 succeeded, 0 failed, 0 errored", out), out
    assert re.search(r"status codes: 500 2xx", out), out
    text = await metrics_text(r)
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="http2") == 1
    assert metric_value(text, "istio_requests_total", response_code="200") == 500
    assert up.connections == 1, "upstream h2 streams must share one pooled connection"
    assert up.max_open >= 25, f"streams were not multiplexed upstream (at most {up.max_open} open at once)"


# === flow control ==========================================================

async def test_slow_h2_reader_keeps_proxy_buffers_bounded(proxy, h2up, client):
    up = await h2up()
    n = 8 << 20
    r = await proxy(listener(up.port))
    c = await client(r.port("web"), auto_window=False)
    await c.request(1, f"/big?n={n}")
    await c.read_until(lambda: 1 in c.responses and c.responses[1].headers)
    await asyncio.sleep(0.8)  # let every buffer fill as far as it will
    conns = list(r.app.http.connections)
    assert len(conns) == 1
    srv = conns[0]
    held = srv.codec.pending(1) + srv.transport.get_write_buffer_size()
    assert held <= 2.5 * (1 << 20), f"proxy holds {held} bytes for a reader that is not reading"
    assert up.big_sent <= 3 * (1 << 20), f"upstream was let to send {up.big_sent} of {n} bytes"
    assert len(c.responses[1].body) <= 65535
    # Now read: open both windows wide and take the rest.
    c.auto_window = True
    await c.send(c.window_frame(0, (1 << 31) - 1 - 65535), c.window_frame(1, (1 << 31) - 1 - 65535))
    await c.read_until(lambda: c.done(1), timeout=30)
    resp = c.responses[1]
    assert resp.reset is None and len(resp.body) == n and resp.body.count(b"z") == n


async def test_small_frames_faster_than_one_turn_all_arrive(proxy, h2up, client):
    """An upstream sending a big body in 1 KiB DATA frames, to a reader with its windows
    wide open: thousands of frames per turn are queued and leave at the turn's end
    (net/flush.py), and every byte arrives."""
    up = await h2up()
    n = 6 << 20
    r = await proxy(listener(up.port))
    c = await client(r.port("web"), auto_window=False, initial_window=(1 << 31) - 1)
    await c.send(c.window_frame(0, (1 << 31) - 1 - 65535))
    await c.request(1, f"/big?n={n}&frame=1024")
    await c.read_until(lambda: c.done(1), timeout=30)
    resp = c.responses[1]
    assert resp.reset is None and len(resp.body) == n


async def test_slow_h2_reader_with_http1_upstream_bounded(proxy, h1up, client):
    up = await h1up()
    n = 8 << 20
    r = await proxy(listener(up.port, **h1_cluster(up.port)))
    c = await client(r.port("web"), auto_window=False)
    await c.request(1, f"/big?n={n}")
    await c.read_until(lambda: 1 in c.responses and c.responses[1].headers)
    await asyncio.sleep(0.8)
    srv = list(r.app.http.connections)[0]
    held = srv.codec.pending(1) + srv.transport.get_write_buffer_size()
    assert held <= 2.5 * (1 << 20), f"proxy holds {held} bytes for a reader that is not reading"
    c.auto_window = True
    await c.send(c.window_frame(0, (1 << 31) - 1 - 65535), c.window_frame(1, (1 << 31) - 1 - 65535))
    await c.read_until(lambda: c.done(1), timeout=30)
    assert len(c.responses[1].body) == n


# === limits and abuse ======================================================

async def test_streams_beyond_limit_are_refused_and_connection_survives(proxy, h2up, client):
    up = await h2up()
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    hdrs = c.request_headers("/open", "POST")
    open_ids = [2 * i + 1 for i in range(100)]
    extra_ids = [2 * i + 1 for i in range(100, 105)]
    await c.send(*(c.headers_frame(sid, hdrs, False) for sid in open_ids + extra_ids))
    await c.read_until(lambda: all(c.done(s) for s in extra_ids))
    for sid in extra_ids:
        assert c.responses[sid].reset == REFUSED_STREAM, (sid, c.responses[sid].reset)
    assert not any(c.responses.get(s) and c.responses[s].reset is not None for s in open_ids)
    # Finish the first stream: it is answered, on the same connection.
    await c.send(c.data_frame(1, b"done", True))
    await c.read_until(lambda: c.done(1))
    assert c.responses[1].status == 200 and json.loads(c.responses[1].body)["body"] == "done"
    assert c.goaway is None and not c.closed
    # Free the rest; a new stream then works.
    await c.send(*(c.data_frame(s, b"", True) for s in open_ids[1:]))
    await c.read_until(lambda: all(c.done(s) for s in open_ids))
    nxt = extra_ids[-1] + 2
    await c.request(nxt, "/after")
    await c.read_until(lambda: c.done(nxt))
    assert c.responses[nxt].status == 200
    assert c.goaway is None


async def test_rapid_reset_flood_gets_goaway_enhance_your_calm(proxy, h2up, client):
    up = await h2up()
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    hdrs = c.request_headers("/reset-me")
    flood = []
    for i in range(400):
        sid = 2 * i + 1
        flood += [c.headers_frame(sid, hdrs, True), c.rst_frame(sid, CANCEL)]
    for k in range(0, len(flood), 100):  # a few writes, like a real attacker's batches
        try:
            await c.send(*flood[k:k + 100])
        except ConnectionError:
            break
    await c.read_until(lambda: c.goaway is not None, timeout=10)
    assert c.goaway.error_code == ENHANCE_YOUR_CALM
    await c.read_until_eof()
    # The proxy itself is fine: a new connection is served.
    c2 = await client(r.port("web"))
    await c2.request(1, "/ok")
    await c2.read_until(lambda: c2.done(1))
    assert c2.responses[1].status == 200


async def test_request_and_its_reset_in_one_read_do_not_break_the_connection(proxy, h2up, client):
    up = await h2up()
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    hdrs = c.request_headers("/gone")
    await c.send(c.headers_frame(1, hdrs, True), c.rst_frame(1, CANCEL),
                 c.headers_frame(3, c.request_headers("/kept"), True))
    await c.read_until(lambda: c.done(3))
    assert c.responses[3].status == 200 and json.loads(c.responses[3].body)["headers"][":path"] == "/kept"
    # and again, now that the first pair has been handled
    await c.send(c.headers_frame(5, hdrs, False), c.data_frame(5, b"x"), c.rst_frame(5, CANCEL))
    await c.request(7, "/kept2")
    await c.read_until(lambda: c.done(7))
    assert c.responses[7].status == 200
    assert c.goaway is None and not c.closed
    assert 1 not in c.responses or c.responses[1].reset is None or c.responses[1].reset in (CANCEL, 0)


async def test_drain_sends_goaway_and_in_flight_stream_completes(proxy, h2up, client):
    up = await h2up()
    up.slow_delay = 1.0
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    await c.request(1, "/slow")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not up.requests:
        assert loop.time() < deadline, "request never reached the upstream"
        await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as s:
        async with s.post(r.url("admin", "/drain_listeners")) as resp:
            assert resp.status == 200
    await c.read_until(lambda: c.goaway is not None, timeout=5)
    assert c.goaway.error_code == 0 and c.goaway.last_stream_id >= 1
    assert not c.done(1), "the in-flight stream should still be running when GOAWAY arrives"
    await c.request(3, "/too-late")  # above last_stream_id: refused, never forwarded
    await c.read_until(lambda: c.done(1) and c.done(3), timeout=5)
    assert c.responses[1].status == 200 and c.responses[1].reset is None
    assert c.responses[3].reset == REFUSED_STREAM
    assert [q["headers"][":path"] for q in up.requests] == ["/slow"]
    await c.read_until_eof(timeout=5)


@pytest.mark.parametrize("name, value", [("connection", "keep-alive"), ("transfer-encoding", "chunked"),
                                         ("upgrade", "websocket"), ("keep-alive", "timeout=5"),
                                         ("te", "gzip")])
async def test_connection_specific_header_resets_stream_and_nothing_goes_upstream(proxy, h2up, client,
                                                                                  name, value):
    up = await h2up()
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    await c.request(1, "/bad", extra=[(name, value)])
    await c.read_until(lambda: c.done(1))
    assert c.responses[1].reset == PROTOCOL_ERROR, c.responses[1].__dict__
    assert up.requests == [] and up.connections == 0
    # the connection survives: a clean request on it goes through
    await c.request(3, "/good")
    await c.read_until(lambda: c.done(3))
    assert c.responses[3].status == 200
    assert [q["headers"][":path"] for q in up.requests] == ["/good"]


# === request direction: flow control and malformed bodies =====================

@pytest.mark.parametrize("upstream_protocol", ["http2", "http1"])
async def test_upload_to_stalled_upstream_is_bounded(proxy, client, upstream_protocol):
    """The client sends as fast as the proxy's windows allow to an upstream that
    never reads: the proxy must stop opening windows (bytes stay bounded)."""
    from hyperframe.frame import SettingsFrame, WindowUpdateFrame

    stalled = []

    async def stuck(reader, writer):
        await reader.read(200)
        writer.transport.pause_reading()
        stalled.append(writer)
        await asyncio.sleep(30)

    srv = await asyncio.start_server(stuck, "127.0.0.1", 0)
    uport = srv.sockets[0].getsockname()[1]
    try:
        extra = h1_cluster(uport) if upstream_protocol == "http1" else {}
        r = await proxy(listener(uport, **extra))
        c = await client(r.port("web"))
        await c.read_until(lambda: SettingsFrame.INITIAL_WINDOW_SIZE in c.server_settings)
        conn_win, stream_win = 65535, c.server_settings[SettingsFrame.INITIAL_WINDOW_SIZE]
        await c.send(c.headers_frame(1, c.request_headers("/upload", "POST"), False))
        sent, chunk = 0, b"u" * 16384
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while loop.time() < deadline:
            n = min(conn_win, stream_win, len(chunk))
            if n > 0:
                await c.send(c.data_frame(1, chunk[:n]))
                sent, conn_win, stream_win = sent + n, conn_win - n, stream_win - n
                continue
            try:
                f = await c.read_frame(0.1)
            except asyncio.TimeoutError:
                continue
            if isinstance(f, WindowUpdateFrame):
                if f.stream_id == 0:
                    conn_win += f.window_increment
                elif f.stream_id == 1:
                    stream_win += f.window_increment
        # h2 upstream: proxy windows + its 1 MiB high-water mark; HTTP/1: plus the kernel's socket buffers.
        bound = 3 << 20 if upstream_protocol == "http2" else 16 << 20
        assert stalled, "the upstream was never reached"
        assert sent <= bound, f"proxy accepted {sent} bytes for an upstream that reads nothing"
        srv_conn = list(r.app.http.connections)[0]
        ex = srv_conn.exchanges[1]
        assert ex.up.conn.transport.get_write_buffer_size() + ex.up.conn.codec.pending(ex.up.sid) <= 2.5 * (1 << 20)
    finally:
        srv.close()


async def test_content_length_mismatch_is_a_stream_error_not_a_connection_error(proxy, h2up, client):
    """RFC 9113 8.1.1: a request whose DATA disagrees with its content-length is
    malformed, a *stream* error: that stream is reset, the connection and the
    other streams on it go on, and nothing of the bad request goes upstream."""
    up = await h2up()
    up.slow_delay = 0.5
    r = await proxy(listener(up.port))
    c = await client(r.port("web"))
    await c.request(1, "/slow")
    await asyncio.sleep(0.1)
    bad = c.request_headers("/cl", "POST", extra=[("content-length", "6")])
    await c.send(c.headers_frame(3, bad, False), c.data_frame(3, b"abcdef" + b"GET /smuggled HTTP/1.1\r\n\r\n", True))
    await c.read_until(lambda: (c.done(1) and c.done(3)) or c.goaway is not None, timeout=5)
    assert [q["headers"][":path"] for q in up.requests] == ["/slow"]
    assert c.goaway is None, f"one malformed stream closed the whole connection: {c.goaway!r}"
    assert c.responses[3].reset == PROTOCOL_ERROR, c.responses[3].__dict__
    assert c.responses[1].reset is None and c.responses[1].status == 200


@pytest.mark.parametrize("express", [True, False], ids=["express", "general"])
async def test_slow_http1_reader_with_http1_upstream_bounded(proxy, h1up, express):
    """An HTTP/1.1 client that stops reading a 64 MiB response: writes wait for the end of the
    loop turn, and one turn may read many upstream chunks, so bulk chunks must still reach
    the transport as they come (its pause_writing is the brake), on both lanes."""
    up = await h1up()
    n = 64 << 20
    r = await proxy(listener(up.port, **h1_cluster(up.port), http={"express": express}))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"), limit=1 << 20)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    writer.transport.pause_reading()
    writer.write(f"GET /big?n={n} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
    await asyncio.sleep(1.0)
    srv = list(r.app.http.connections)[0]
    assert type(srv).__name__ == ("ExpressServer" if express else "HttpServerConnection")
    held = srv.transport.get_write_buffer_size() + sum(len(b) for b in getattr(srv, "out_q", ()))
    assert held <= 3 * (1 << 20), f"proxy holds {held} bytes for a reader that is not reading"
    writer.transport.resume_reading()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and f"content-length: {n}".encode() in head.lower()
    got = 0
    while got < n:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk, f"connection closed after {got} of {n} body bytes"
        got += len(chunk)
    assert got == n
    writer.close()
