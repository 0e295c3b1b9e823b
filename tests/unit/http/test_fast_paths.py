"""The HTTP/1 path's shortcuts give exactly what the general code gives.

Each shortcut (response hygiene in comprehensions, the client codec's
one-request send, the upstream connection's one-read response dispatch) is
compared with the general code on generated inputs: a shortcut that drifts
fails here, not in production.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codec._http1_write import WATCH, Rendered, render_fields
from meshproxy.codec.events import Data, EndStream, RequestHead, ResponseHead
from meshproxy.codec.http1 import Http1Codec
from meshproxy.http import headers as h

# Names that exercise every rule, plus plain ones.
NAMES = [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"upgrade",
         b"x-forwarded-client-cert", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
         b"x-meshproxy-orig-proto", b"x-meshproxy-x", b"x-other", b"host", b"content-length", b"accept",
         b"user-agent", b"foo", b"bar", b"trailer"]
VALUES = [b"", b"keep-alive", b"close", b"upgrade", b"Keep-Alive, foo", b"foo", b"bar, x-other", b"trailers",
          b"trailers, deflate", b"gzip", b"websocket", b"1.2.3.4", b"https", b"abc", b"0", b"h2c"]
fields = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=10)


@settings(max_examples=400, deadline=None)
@given(fields, st.sampled_from([200, 101, 404]), st.booleans())
def test_clean_response_matches_the_rules(headers, status, local):
    head = ResponseHead(1, status, list(headers))
    ref = copy.deepcopy(head)
    h.clean_response(head, local=local)
    h._clean_response_rules(ref, local, status == 101)
    assert head.headers == ref.headers


def _render_reference(lines, headers):
    """The renderer as it was: one test per field."""
    seen = Rendered()
    for name, value in headers:
        if name in WATCH:
            if name == b"content-length":
                seen.content_length = value
                continue
            if name == b"transfer-encoding":
                continue
            if name == b"connection":
                seen.connection = value if seen.connection is None else seen.connection + b"," + value
            elif name == b"host":
                seen.host = True
            else:
                seen.upgrade = True
        lines.extend((name, b": ", value, b"\r\n"))
        seen.count += 1
    return seen


@settings(max_examples=300, deadline=None)
@given(fields)
def test_render_fields_matches_the_reference(headers):
    a, b = [b"start\r\n"], [b"start\r\n"]
    sa, sb = render_fields(a, headers), _render_reference(b, headers)
    assert b"".join(a) == b"".join(b)
    assert (sa.count, sa.content_length, sa.connection, sa.host, sa.upgrade) == (
        sb.count, sb.content_length, sb.connection, sb.host, sb.upgrade)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS"]),
       st.lists(st.tuples(st.sampled_from([b"accept", b"host", b"foo", b"connection", b"x-a"]),
                          st.sampled_from([b"1", b"svc", b"keep-alive", b"close"])), max_size=5),
       st.sampled_from([None, b"svc", b"other:8080"]))
def test_client_send_alone_matches_the_pipelined_send(method, headers, authority):
    """A request sent with nothing in flight takes the short path; sent behind a request whose
    body is still streaming it takes the general one. The bytes and the codec's bookkeeping agree."""
    def head():
        return RequestHead(0, method, b"/p", authority, list(headers), end_stream=True)

    alone = Http1Codec("client")
    alone.send_head(head())
    fast = alone.data_to_send()

    behind = Http1Codec("client")
    first = behind.send_head(RequestHead(0, b"POST", b"/up", b"svc", []))  # chunked, still open
    behind.send_head(head())
    behind.data_to_send()
    behind.send_end(first)
    queued = behind.data_to_send()
    assert queued == b"0\r\n\r\n" + fast
    assert [s.stream_id for s in alone._awaiting] == [1]
    assert [s.stream_id for s in behind._awaiting] == [1, 2]
    assert not alone._streams and not alone._order
    assert not behind._streams and not behind._order
    assert (alone._awaiting[0].is_head, alone._awaiting[0].ended) == (behind._awaiting[1].is_head, True)


@pytest.mark.sources_only("a Server stand-in borrows HttpServerConnection's send methods")
def test_whole_response_dispatch_matches_event_by_event():
    """The upstream connection's one-read response shortcut calls the handler as the loop does."""
    from meshproxy.upstream.client import Http1Connection, UpstreamConnection

    class Handler:
        def __init__(self):
            self.calls = []

        def on_response_head(self, head):
            self.calls.append(("head", head.status))

        def on_response_data(self, data, flow):
            self.calls.append(("data", data, flow))

        def on_response_end(self):
            self.calls.append(("end",))

        def on_response_rest(self, data):  # the exchange's contract: data, then end
            self.on_response_data(data, 0)
            self.on_response_end()

    class Pool:
        def release(self, conn):
            pass

        def forget(self, conn):
            pass

    results = []
    for dispatch in (Http1Connection._dispatch, UpstreamConnection._dispatch):
        conn = Http1Connection(("h", 1, "http1", None), Pool(), None)
        conn.mark = lambda: None
        handler = Handler()
        s = conn.open_stream(handler)
        s.send_head(RequestHead(0, b"GET", b"/", b"a", [], end_stream=True))
        events = [ResponseHead(s.sid, 200, [], content_length=2), Data(s.sid, b"ok"), EndStream(s.sid)]
        dispatch(conn, events)
        results.append((handler.calls, s.resp_ended, conn.stream))
    assert results[0] == results[1]


class _Up:
    """The exchange's upstream stream, recording what it acknowledges."""

    paused = False

    def __init__(self):
        self.acked = []

    def consumed(self, n):
        self.acked.append(n)


@pytest.mark.parametrize("flow", [0, 7])
def test_exchange_rest_of_response_matches_data_then_end(flow):
    """``Exchange.on_response_rest`` leaves the downstream codec, the upstream stream's
    acknowledgements and the exchange as ``on_response_data`` followed by ``on_response_end`` do."""
    from meshproxy.http.exchange import Exchange

    class Server:
        h2 = False
        write_paused = False

        def __init__(self):
            self.codec = Http1Codec("server")
            self.done = []
            self.loop = type("L", (), {"time": staticmethod(lambda: 0.0)})()

        def send_data(self, sid, data, end=False):
            self.codec.send_data(sid, data, end)

        def send_end(self, sid):
            self.codec.send_end(sid)

        def exchange_done(self, ex):
            self.done.append(ex.sid)

    results = []
    for whole in (True, False):
        srv = Server()
        head = srv.codec.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0]
        ex = Exchange(srv, head)
        ex.req_done = True
        ex.up = up = _Up()
        srv.codec.send_head(ResponseHead(head.stream_id, 200, [], content_length=2))
        if whole:
            ex.on_response_rest(b"ok", flow)
        else:
            ex.on_response_data(b"ok", flow)
            ex.on_response_end()
        results.append((srv.codec.data_to_send(), srv.done, ex.resp_bytes, ex.resp_done, ex.finished,
                        srv.codec.should_close, up.acked))
    assert results[0] == results[1]


class _Recorder:
    """An exchange stand-in that records what the upstream connection calls."""

    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def on_response_head(self, head):
        self.calls.append((self.name, "head", head.status))

    def on_response_data(self, data, flow):
        self.calls.append((self.name, "data", data, flow))

    def on_response_end(self):
        self.calls.append((self.name, "end"))

    def on_response_trailers(self, headers):
        self.calls.append((self.name, "trailers"))

    def on_response_rest(self, data, flow=0):  # the exchange's contract: data, then end
        self.on_response_data(data, flow)
        self.on_response_end()

    def on_response_whole(self, head, data, flow):  # the exchange's contract: head, then the rest
        self.on_response_head(head)
        self.on_response_rest(data, flow)

    def on_upstream_reset(self, code):
        self.calls.append((self.name, "reset", code))

    def on_upstream_writable(self):
        self.calls.append((self.name, "writable"))


class _Pool:
    def release(self, conn):
        pass

    def forget(self, conn):
        pass

    def idle_h2(self, conn):
        pass


def _h2_events(draw_kinds, sids):
    from meshproxy.codec.events import Reset, Trailers, WindowOpened
    out = []
    for kind, sid in zip(draw_kinds, sids):
        if kind == "head":
            out.append(ResponseHead(sid, 200, []))
        elif kind == "data":
            out.append(Data(sid, b"x" * sid, sid + 1))
        elif kind == "end":
            out.append(EndStream(sid))
        elif kind == "trailers":
            out.append(Trailers(sid, []))
        elif kind == "reset":
            out.append(Reset(sid, 8))
        else:
            out.append(WindowOpened(sid))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["head", "data", "end", "trailers", "reset", "window"]),
                          st.sampled_from([1, 3, 5, 7])), max_size=14))
def test_h2_body_end_dispatch_matches_event_by_event(events):
    """The HTTP/2 upstream connection's (last Data, EndStream) shortcut calls the handlers as the
    general loop does, in the same order, and releases the same streams."""
    from meshproxy.upstream.client import Http2Connection, UpStream, UpstreamConnection

    results = []
    for dispatch in (Http2Connection._dispatch, UpstreamConnection._dispatch):
        conn = Http2Connection(("h", 1, "http2", None), _Pool(), None)
        conn.mark = lambda: None
        calls = []
        for sid in (1, 3, 5):  # 7 is not (or no longer) ours
            s = UpStream(conn, _Recorder(calls, sid))
            s.sid, s.req_ended = sid, True
            conn.streams[sid] = s
        dispatch(conn, _h2_events([k for k, _ in events], [sid for _, sid in events]))
        results.append((calls, sorted(conn.streams)))
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("whole"), st.sampled_from([1, 3, 5, 7])),
    st.tuples(st.sampled_from(["head", "data", "end", "trailers", "reset", "window"]), st.sampled_from([1, 3, 5, 7]))),
    max_size=10))
def test_h2_whole_response_dispatch_matches_event_by_event(items):
    """Head, last Data and EndStream of one stream in a row (one whole response) go to the
    handler as ``on_response_whole``: the same calls, in the same order, and the same streams
    released as the general loop, whatever comes around them."""
    from meshproxy.upstream.client import Http2Connection, UpStream, UpstreamConnection

    kinds, sids = [], []
    for kind, sid in items:
        for k in (("head", "data", "end") if kind == "whole" else (kind,)):
            kinds.append(k)
            sids.append(sid)
    results = []
    for dispatch in (Http2Connection._dispatch, UpstreamConnection._dispatch):
        conn = Http2Connection(("h", 1, "http2", None), _Pool(), None)
        conn.mark = lambda: None
        calls = []
        for sid in (1, 3, 5):
            s = UpStream(conn, _Recorder(calls, sid))
            s.sid, s.req_ended = sid, True
            conn.streams[sid] = s
        dispatch(conn, _h2_events(kinds, sids))
        results.append((calls, sorted(conn.streams)))
    assert results[0] == results[1]


def _server_with_request(kind: str):
    """A downstream connection stand-in with a real server codec (HTTP/1.1, or HTTP/2 on
    either backend) that has received one GET, and that request's head."""
    from meshproxy.codec.http2 import codec_class
    from meshproxy.http.server import HttpServerConnection

    class Server:
        write_paused = False
        ctx = type("Ctx", (), {"draining": False})()

        def __init__(self):
            self.done = []
            self.loop = type("L", (), {"time": staticmethod(lambda: 0.0)})()
            self.chain = type("Chain", (), {"run_response": staticmethod(
                lambda fctx, head: h.clean_response(head))})()
            if kind == "http1":
                self.h2 = False
                self.codec = Http1Codec("server")
                self.head = self.codec.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0]
                return
            import h2.config
            import h2.connection
            self.h2 = True
            self.codec = codec_class(kind)("server")
            self.codec.initiate()
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            client.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                    (":authority", "a")], end_stream=True)
            self.head = [e for e in self.codec.receive_data(client.data_to_send())
                         if type(e) is RequestHead][0]
            self.codec.data_to_send()

        def mark(self):
            pass

        send_response = HttpServerConnection.send_response
        send_head = HttpServerConnection.send_head
        send_data = HttpServerConnection.send_data
        send_end = HttpServerConnection.send_end

        def congested(self, sid):
            return False

        def exchange_done(self, ex):
            self.done.append(ex.sid)

    srv = Server()
    return srv, srv.head


@pytest.mark.sources_only("a Server stand-in borrows HttpServerConnection's send methods")
@pytest.mark.parametrize("kind", ["http1", "h2", "nghttp2"])
@pytest.mark.parametrize("status, flow", [(200, 0), (200, 7), (404, 3)])
def test_exchange_whole_response_matches_head_then_rest(kind, status, flow):
    """``Exchange.on_response_whole`` leaves the downstream codec's bytes, the upstream
    stream's acknowledgements and the exchange as ``on_response_head`` followed by
    ``on_response_rest`` do, on HTTP/1.1 and on both HTTP/2 backends (nghttp2's submits the
    head with the body already queued)."""
    from meshproxy.http.exchange import Exchange

    if kind == "nghttp2":
        from meshproxy.codec import _ng_ffi
        try:
            _ng_ffi.load()
        except _ng_ffi.Nghttp2Unavailable:
            pytest.skip("libnghttp2 not here")

    results = []
    for whole in (True, False):
        srv, head = _server_with_request(kind)
        ex = Exchange(srv, head)
        ex.req_done = True
        ex.fctx = None
        ex.chain = srv.chain  # what _start takes from the context's chains
        ex.up = up = _Up()
        resp = ResponseHead(9, status, [(b"content-type", b"text/plain"), (b"connection", b"x"), (b"x", b"1"),
                                        (b"content-length", b"2")], content_length=2)
        if whole:
            ex.on_response_whole(resp, b"ok", flow)
        else:
            ex.on_response_head(resp)
            ex.on_response_rest(b"ok", flow)
        results.append((srv.codec.data_to_send(), srv.done, ex.status, ex.resp_bytes, ex.resp_done, ex.finished,
                        up.acked, resp.headers))
    assert results[0] == results[1]
    assert results[0][1] == [head.stream_id] and b"ok" in results[0][0]


@pytest.mark.sources_only("replaces the connection's mark method on the instance")
def test_h2_release_acknowledges_what_a_paused_stream_held_back():
    """Bytes held back while the downstream was congested are handed back to the upstream's
    connection window when the stream is released: no more come on it, and nothing else would."""
    from meshproxy.upstream.client import Http2Connection, UpStream

    conn = Http2Connection(("h", 1, "http2", None), _Pool(), None)
    conn.mark = lambda: None
    acked = []
    conn.codec = type("Codec", (), {"ack": lambda self, sid, n: acked.append((sid, n))})()
    s = UpStream(conn, _Recorder([], 1))
    s.sid, s.req_ended = 1, True
    conn.streams[1] = s
    s.pause()
    s.consumed(100)
    assert acked == []
    s.resp_ended = True
    conn._maybe_release(s)
    assert acked == [(1, 100)] and not conn.streams and s.unacked == 0
