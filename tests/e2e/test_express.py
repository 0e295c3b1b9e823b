"""The HTTP/1.1 express lane (``http/express.py``) against the general path, end to end.

Two proxies run side by side, one with ``http.express: true`` and one with
``false``, in front of the same scripted upstream that records the exact bytes it
receives and answers with scripted bytes. For every request/response case both
must send the upstream the same bytes, give the client the same response
(status, reason, fields in order, body, trailers; chunk sizes may differ) and
record the same Istio request metrics. Request ids are made deterministic so
generated ``x-request-id`` values compare too.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import httptools
import pytest
from e2e_support import refused_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshproxy.http.express import ExpressServer
from meshproxy.http.server import HttpServerConnection

BODY = b"0123456789abcdef" * 70


class Scripted:
    """An HTTP/1.1 upstream: records each request's bytes, then does ``script[i]`` for the
    i-th request it sees: ``bytes`` (answer them; keep the connection), ``"close"``,
    ``"hang"`` (say nothing), ``("then-close", bytes)``, ``("then-hang", bytes)`` or
    ``("delay", seconds, bytes)``."""

    def __init__(self):
        self.script: list = []
        self.got: list[bytes] = []
        self.server = None
        self.port = 0

    async def start(self) -> "Scripted":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                body = await reader.readexactly(n) if n else b""
                self.got.append(head + body)
                action = self.script.pop(0) if self.script else b"HTTP/1.1 500 Unscripted\r\ncontent-length: 0\r\n\r\n"
                if action == "close":
                    break
                if action == "hang":
                    await asyncio.sleep(30)
                    break
                if isinstance(action, tuple) and action[0] == "delay":
                    await asyncio.sleep(action[1])
                    writer.write(action[2])
                    await writer.drain()
                    continue
                if isinstance(action, tuple) and action[0] == "then-hang":
                    writer.write(action[1])
                    await writer.drain()
                    await asyncio.sleep(30)
                    break
                if isinstance(action, tuple):
                    writer.write(action[1])
                    await writer.drain()
                    break
                writer.write(action)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self):
        self.server.close()


def parse_response(data: bytes, head_request: bool = False) -> list:
    """Responses in ``data`` as [(status, reason, fields, body, trailers)], chunk framing undone."""
    out: list = []

    class P:
        def on_message_begin(self):
            self.reason, self.fields, self.body, self.trailers, self.in_body = b"", [], b"", [], False

        def on_status(self, s):
            self.reason += s

        def on_header(self, k, v):
            (self.trailers if self.in_body else self.fields).append((k.lower(), v))

        def on_headers_complete(self):
            self.in_body = True

        def on_body(self, b):
            self.body += b

        def on_message_complete(self):
            # chunk framing is the proxy's own: compare the payload, not how it was cut
            fields = [f for f in self.fields if f[0] != b"transfer-encoding"]
            out.append((p.get_status_code(), self.reason, fields, self.body, self.trailers))

    cb = P()
    p = httptools.HttpResponseParser(cb)
    try:
        p.feed_data(data)
    except httptools.HttpParserError:
        out.append(("unparsable-rest",))
    return out


async def exchange(port: int, raw: bytes, timeout: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    except asyncio.TimeoutError:
        out += b"<still open>"
    except ConnectionError:
        out += b"<reset>"
    writer.close()
    return out


def series(r) -> dict:
    return {labels: (s.count, s.req_sum, s.resp_sum) for labels, s in r.app.metrics.requests.series.items()}


@pytest.fixture
async def pair(proxy, monkeypatch):
    """(upstream, express proxy, general proxy); request ids from a fixed seed per call."""
    up = await Scripted().start()

    def cfg(express: bool) -> dict:
        return {"listeners": [{"name": "web", "port": 0, "protocol": "http",
                               "upstream": f"127.0.0.1:{up.port}"}],
                "http": {"express": express}}

    fast = await proxy(cfg(True))
    slow = await proxy(cfg(False))
    yield up, fast, slow
    await up.stop()


@pytest.fixture(autouse=True)
def _restore_random():
    """Tests seed the ``random`` module (its ``getrandbits`` makes request ids); put it back."""
    saved = random.getstate()
    yield
    random.setstate(saved)


async def run_both(pair, monkeypatch, raw: bytes, script: list, timeout: float = 3.0):
    """The same request on each lane; returns [(upstream bytes, client bytes, metrics)] per lane."""
    up, fast, slow = pair
    results = []
    for r in (fast, slow):
        random.seed(7)  # the same request id on both lanes (the module's getrandbits makes them)
        up.got = []
        up.script = list(script)
        before = series(r)
        client = await exchange(r.port("web"), raw, timeout)
        await asyncio.sleep(0.05)
        after = series(r)
        delta = {k: tuple(a - b for a, b in zip(v, before.get(k, (0, 0, 0)))) for k, v in after.items()
                 if v != before.get(k)}
        results.append((list(up.got), client, delta))
    return results


def assert_same(results, head_request=False):
    (up_f, cl_f, m_f), (up_s, cl_s, m_s) = results
    assert up_f == up_s
    assert parse_response(cl_f, head_request) == parse_response(cl_s, head_request)
    assert cl_f.endswith(b"<still open>") == cl_s.endswith(b"<still open>")
    assert m_f == m_s


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: svc.local\r\nUser-Agent: t\r\nAccept: */*\r\nConnection: close\r\n\r\n"
OK_CL = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

CASES = {
    "plain": (GET, [OK_CL]),
    "keepalive-two": (GET.replace(b"Connection: close\r\n", b"") , [OK_CL]),
    "post-body": (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Type: a/b\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                  [b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"]),
    "get-cl0": (b"GET /z HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", [OK_CL]),
    "grpc-request": (b"POST /s/M HTTP/1.1\r\nHost: h\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n", [OK_CL]),
    "dup-request-id": (b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: \r\nX-Request-Id: a\r\nX-Request-Id: b\r\n"
                       b"Connection: close\r\n\r\n", [OK_CL]),
    "resp-connection-close": (GET.replace(b"Connection: close\r\n", b""),
                              [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz"]),
    "resp-http10": (GET, [b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nz"]),
    "resp-gzip-chunked": (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"]),
    "put-empty": (b"PUT /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                  [b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]),
    "head": (b"HEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
             [b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: x\r\n\r\n"]),
    "304": (GET, [b"HTTP/1.1 304 Not Modified\r\nETag: y\r\n\r\n"]),
    "hop-by-hop": (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
                   b"TE: trailers, gzip\r\nProxy-Connection: x\r\nX-Meshproxy-Evil: 1\r\n"
                   b"X-Forwarded-Client-Cert: forged\r\nx-request-id: abc\r\n\r\n",
                   [b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n"
                    b"X-Meshproxy-Response-Flags: UF\r\nContent-Length: 3\r\n\r\nabc"]),
    "xff-xfp": (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
                b"Connection: close\r\n\r\n", [OK_CL]),
    "chunked-response": (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
                               b"0\r\n\r\n"]),
    "chunked-trailers": (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
                               b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n"]),
    "until-eof": (GET, [("then-close", b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\nbody-until-close")]),
    "early-hints": (GET, [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_CL]),
    "upstream-close": (GET, ["close"]),
    "upstream-garbage": (GET, [b"SSH-2.0-nope\r\n\r\n"]),
    "upstream-bad-cl": (GET, [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"]),
    "upstream-dies-mid-body": (GET, [("then-close", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")]),
    "upstream-reason": (GET, [b"HTTP/1.1 404 Nope Nope\r\nContent-Length: 0\r\n\r\n"]),
    "grpc-status-head": (GET, [b"HTTP/1.1 200 OK\r\ngrpc-status: 7\r\nContent-Length: 0\r\n\r\n"]),
    # handed over to the general path: both lanes must answer exactly the same
    "chunked-request": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]),
    "pipelined": (GET.replace(b"Connection: close\r\n", b"") * 2 + GET, [OK_CL, OK_CL, OK_CL]),
    "http10": (b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", [OK_CL]),
    "expect": (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
               [OK_CL]),
    "absolute-form": (b"GET http://h/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", [OK_CL]),
    "bad-header": (b"GET / HTTP/1.1\r\nHost: h\r\nBad_Name: 1\r\n\r\n", []),
    "no-host": (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", []),
    "bad-request": (b"GET / HTTP/1.1\r\nHost: h\r\n Folded\r\n\r\n", []),
    "websocket": (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                  [b"HTTP/1.1 400 No\r\nContent-Length: 0\r\n\r\n"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_express_lane_matches_general_path(pair, monkeypatch, case):
    raw, script = CASES[case]
    results = await run_both(pair, monkeypatch, raw, script, timeout=1.0)
    assert_same(results, head_request=raw.startswith(b"HEAD"))
    (up_f, client_f, metrics_f) = results[0]
    if script and script != ["close"]:
        assert up_f, "the upstream saw no request"
    assert client_f and client_f != b"<still open>", "the client got no answer"


async def test_route_timeout_and_refused_match(proxy, monkeypatch):
    up = await Scripted().start()
    dead = refused_port()

    def cfg(express: bool, port: int) -> dict:
        return {"listeners": [{"name": "web", "port": 0, "protocol": "http", "upstream": f"127.0.0.1:{port}"}],
                "clusters": [{"name": "c", "endpoints": [f"127.0.0.1:{port}"], "protocol": "http1"}],
                "routes": [{"name": "r", "cluster": "c", "timeout": "0.2s"}],
                "http": {"express": express}}

    for port, script, flag, status in ((up.port, ["hang"], "UT", 504), (dead, [], "UF", 503)):
        answers = []
        for express in (True, False):
            r = await proxy(cfg(express, port))
            up.script = list(script)
            random.seed(3)
            client = await exchange(r.port("web"), GET, timeout=2.0)
            resp = parse_response(client)
            assert resp[0][0] == status and (b"x-meshproxy-response-flags", flag.encode()) in resp[0][2]
            answers.append((resp, sorted((k[-3:], v[0]) for k, v in series(r).items())))
        assert answers[0] == answers[1]
    await up.stop()


async def test_plain_requests_stay_on_the_lane_and_unusual_ones_hand_over(pair):
    up, fast, _ = pair
    up.script = [OK_CL] * 4
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port("web"))
    one = GET.replace(b"Connection: close\r\n", b"")
    for _ in range(2):
        writer.write(one)
        resp = await reader.readuntil(BODY)
        assert resp.startswith(b"HTTP/1.1 200 OK\r\n")
    kinds = [type(c) for c in fast.app.http.connections]
    assert kinds == [ExpressServer]
    writer.write(one * 2)  # pipelined: the general path's job from here on
    for _ in range(2):
        assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200 OK\r\n")
    kinds = [type(c) for c in fast.app.http.connections]
    assert kinds == [HttpServerConnection]
    writer.close()


async def test_pipelined_while_in_flight_waits_its_turn(pair):
    """A second request that arrives while the first is answered waits, then is served in order."""
    up, fast, _ = pair
    slow_first = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"
    up.script = [slow_first, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"]
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port("web"))
    one = GET.replace(b"Connection: close\r\n", b"")
    writer.write(one)
    await asyncio.sleep(0)  # the first request is in flight when the second arrives
    writer.write(one)
    got = b""
    while got.count(b"HTTP/1.1 200") < 2:
        got += await asyncio.wait_for(reader.read(65536), 3)
    assert got.index(b"\r\n\r\n1") < got.index(b"\r\n\r\n2")
    writer.close()


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-"))
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 ,;=/.", max_size=20)
"""Raw: blanks before and after the value included (the parser drops the ones before)."""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([b"GET", b"POST", b"DELETE", b"OPTIONS", b"PATCH"]),
       path=st.text(alphabet="abc/?=&%0129", max_size=20),
       fields=st.lists(st.tuples(_token, _value), max_size=6),
       body=st.binary(max_size=40),
       resp_fields=st.lists(st.tuples(_token, _value), max_size=5),
       status=st.sampled_from([200, 201, 204, 301, 404, 500, 503]),
       resp_body=st.binary(max_size=100),
       chunked=st.booleans())
async def test_random_exchanges_match(pair, monkeypatch, method, path, fields, body, resp_fields, status,
                                      resp_body, chunked):
    skip = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect", "te", "trailer"}
    req = [b"%s /%s HTTP/1.1\r\nHost: h\r\n" % (method, path.encode())]
    req += [b"%s:%s\r\n" % (k.encode(), v.encode()) for k, v in fields if k.lower() not in skip]
    if body:
        req.append(b"Content-Length: %d\r\n" % len(body))
    req.append(b"Connection: close\r\n\r\n")
    resp = [b"HTTP/1.1 %d X\r\n" % status]
    resp += [b"%s:%s\r\n" % (k.encode(), v.encode()) for k, v in resp_fields if k.lower() not in skip]
    if status == 204:
        resp.append(b"\r\n")
    elif chunked:
        resp.append(b"Transfer-Encoding: chunked\r\n\r\n")
        resp.append((b"%x\r\n%s\r\n" % (len(resp_body), resp_body) if resp_body else b"") + b"0\r\n\r\n")
    else:
        resp.append(b"Content-Length: %d\r\n\r\n%s" % (len(resp_body), resp_body))
    results = await run_both(pair, monkeypatch, b"".join(req) + body, [b"".join(resp)])
    assert_same(results)


def lane_cfg(port: int, express: bool, **http) -> dict:
    return {"listeners": [{"name": "web", "port": 0, "protocol": "http", "upstream": f"127.0.0.1:{port}"}],
            "clusters": [{"name": "c", "endpoints": [f"127.0.0.1:{port}"], "protocol": "http1"}],
            "routes": [{"name": "r", "cluster": "c", "timeout": "0.3s"}],
            "http": {"express": express, **http}}


def flags(r) -> list:
    return sorted((labels[-3], labels[-1], s.count) for labels, s in r.app.metrics.requests.series.items())


@pytest.mark.parametrize("express", [True, False])
async def test_drain_finishes_the_request_in_flight_with_connection_close(proxy, express):
    up = await Scripted().start()
    up.script = [OK_CL, ("delay", 0.2, OK_CL)]
    r = await proxy(lane_cfg(up.port, express))
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", r.port("web"))
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", r.port("web"))
    idle_w.write(GET.replace(b"Connection: close\r\n", b""))  # one answered request: an idle HTTP connection
    assert (await idle_r.readuntil(BODY)).startswith(b"HTTP/1.1 200")
    busy_w.write(GET.replace(b"Connection: close\r\n", b""))
    await asyncio.sleep(0.05)  # the request is at the upstream
    r.app.drain_listeners()
    assert await asyncio.wait_for(idle_r.read(), 2) == b""  # an idle keep-alive connection closes at once
    answer = await asyncio.wait_for(busy_r.read(), 3)  # the one in flight is answered, then closed
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head and answer.endswith(BODY)
    assert flags(r) == [("200", "-", 2)]
    await up.stop()


@pytest.mark.parametrize("express", [True, False])
async def test_idle_keepalive_connection_is_closed_after_http_idle_timeout(proxy, express):
    up = await Scripted().start()
    up.script = [OK_CL]
    r = await proxy(lane_cfg(up.port, express, idle_timeout="0.3s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(GET.replace(b"Connection: close\r\n", b""))
    assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200")
    t0 = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert 0.2 <= asyncio.get_running_loop().time() - t0 < 2.0
    await up.stop()


@pytest.mark.parametrize("express", [True, False])
async def test_timeout_after_the_response_started_closes_the_client_connection(proxy, express):
    """A response head went out, then the upstream stalls past the route timeout: HTTP/1 can only
    close; the request counts as 200 with UT, and the stalled upstream connection is not reused."""
    up = await Scripted().start()
    up.script = [("then-hang", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"), OK_CL]
    r = await proxy(lane_cfg(up.port, express))
    client = await exchange(r.port("web"), GET.replace(b"Connection: close\r\n", b""), timeout=3)
    assert client.startswith(b"HTTP/1.1 200 OK") and b"partial" in client and not client.endswith(b"<still open>")
    assert flags(r) == [("200", "UT", 1)]
    again = await exchange(r.port("web"), GET, timeout=3)  # a fresh upstream connection serves the next one
    assert again.startswith(b"HTTP/1.1 200 OK") and again.endswith(BODY)
    await up.stop()


@pytest.mark.parametrize("express", [True, False])
async def test_client_gone_mid_request_counts_dc_and_drops_the_upstream_connection(proxy, express):
    up = await Scripted().start()
    up.script = ["hang", OK_CL]
    r = await proxy(lane_cfg(up.port, express, ))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("web"))
    writer.write(GET.replace(b"Connection: close\r\n", b""))
    await asyncio.sleep(0.1)
    # a reset, not a FIN (after a FIN the request is still answered: HTTP/1.1 half-close)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.sleep(0.1)
    assert flags(r) == [("0", "DC", 1)]
    pool = r.app.http.pools["c"]
    assert not any(c.available() for c in pool.all)  # the hung connection is not handed out again
    again = await exchange(r.port("web"), GET, timeout=3)
    assert again.startswith(b"HTTP/1.1 200 OK") and again.endswith(BODY)
    await up.stop()


# === with the access log on ==================================================

_PER_PROXY = ("start_time", "duration", "downstream_remote_address", "downstream_local_address")
"""Access log keys that differ between the two proxies by nature (clock, ports)."""


@pytest.fixture
async def logged_pair(proxy, tmp_path):
    """(upstream, express proxy, general proxy, their access log paths): ``pair`` with the access log on."""
    up = await Scripted().start()
    paths = [tmp_path / "fast.log", tmp_path / "slow.log"]

    def cfg(express: bool, path) -> dict:
        return {"listeners": [{"name": "web", "port": 0, "protocol": "http", "upstream": f"127.0.0.1:{up.port}"}],
                "clusters": [{"name": "c", "endpoints": [f"127.0.0.1:{up.port}"], "protocol": "http1"}],
                "routes": [{"name": "to-c", "match": {"path": {"prefix": "/p"}}, "cluster": "c"}],
                "http": {"express": express}, "access_log": {"enabled": True, "path": str(path)}}

    fast = await proxy(cfg(True, paths[0]))
    slow = await proxy(cfg(False, paths[1]))
    yield up, fast, slow, paths
    await up.stop()


def _log_lines(r, path) -> list[dict]:
    import json

    r.app.http.access_log.flush()
    return [{k: v for k, v in json.loads(ln).items() if k not in _PER_PROXY}
            for ln in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("case", sorted(CASES))
async def test_access_log_lines_match_the_general_path(logged_pair, monkeypatch, case):
    """Every case of ``CASES`` with the access log on: the same bytes, answers and metrics as
    without it, and the same access log lines on both lanes (the express lane writes its own)."""
    up, fast, slow, paths = logged_pair
    raw, script = CASES[case]
    results = await run_both((up, fast, slow), monkeypatch, raw, script, timeout=1.0)
    assert_same(results, head_request=raw.startswith(b"HEAD"))
    fast_lines, slow_lines = _log_lines(fast, paths[0]), _log_lines(slow, paths[1])
    assert fast_lines == slow_lines
    assert len(fast_lines) == sum(v[0] for v in results[0][2].values())  # a line per recorded request
    if case in ("bad-header", "bad-request", "no-host"):  # refused by the codec: logged too, as Envoy does
        assert [(e["response_code"], e["response_flags"]) for e in fast_lines] == [(400, "DPE")]


async def test_access_log_keeps_plain_requests_on_the_lane(logged_pair):
    up, fast, _, paths = logged_pair
    up.script = [OK_CL] * 2
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port("web"))
    one = b"GET /p/x?y=1 HTTP/1.1\r\nHost: svc.local\r\nUser-Agent: t/1\r\nx-request-id: r-1\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(one)
            assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200 OK\r\n")
        assert [type(c) for c in fast.app.http.connections] == [ExpressServer]
    finally:
        writer.close()
    lines = _log_lines(fast, paths[0])
    assert len(lines) == 2
    assert {k: lines[0][k] for k in ("method", "path", "protocol", "response_code", "response_flags",
                                     "bytes_sent", "user_agent", "request_id", "authority", "upstream_host",
                                     "upstream_cluster", "route_name")} == {
        "method": "GET", "path": "/p/x?y=1", "protocol": "HTTP/1.1", "response_code": 200, "response_flags": "-",
        "bytes_sent": len(BODY), "user_agent": "t/1", "request_id": "r-1", "authority": "svc.local",
        "upstream_host": f"127.0.0.1:{up.port}", "upstream_cluster": "c", "route_name": "to-c"}
