"""HTTP/2 codec: round trips through a codec pair, flow control, hostile peers
built frame by frame, and chunking-independence under hypothesis."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame
from hypothesis import given, settings, strategies as st

from h2helpers import ConnectionPair, FrameFactory, RawServer, goaways, parse_frames, request_fields, rsts
from meshproxy.codec.events import (CANCEL, ENHANCE_YOUR_CALM, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM,
                                    ConnectionEnded, Data, EndStream, ProtocolError, Reset, RequestHead,
                                    ResponseHead, Trailers, WindowOpened)
from meshproxy.codec import http2
from meshproxy.codec.http2 import Http2Limits, StreamUnavailable


@pytest.fixture(autouse=True, params=["h2", "nghttp2", "nghttp2-cffi"])
def backend(request, monkeypatch):
    """Every test runs on both codec backends (nghttp2 only where libnghttp2 loads),
    and nghttp2 both with its C helpers (``_ngfast``, when built) and without."""
    try:
        cls = http2.codec_class(request.param.split("-")[0])
    except ImportError as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    if request.param == "nghttp2-cffi":
        from meshproxy.codec import _ng_wire
        monkeypatch.setattr(_ng_wire, "native", None)
    monkeypatch.setattr(http2, "Http2Codec", cls)
    return request.param


def Http2Codec(*args, **kwargs):  # noqa: N802 - the backend under test
    return http2.Http2Codec(*args, **kwargs)


def kinds(events):
    return [type(e).__name__ for e in events]


def body(events, sid):
    return b"".join(e.data for e in events if isinstance(e, Data) and e.stream_id == sid)


def request(method=b"GET", target=b"/", headers=None, end_stream=True, authority=b"svc"):
    return RequestHead(0, method, target, authority, headers or [], "2", end_stream=end_stream)


# === round trips ===

def test_request_with_body_and_trailers_round_trip():
    pair = ConnectionPair()
    sid = pair.client.send_head(request(b"POST", b"/upload?x=1", [(b"content-type", b"text/plain")],
                                        end_stream=False))
    assert sid == 1
    pair.client.send_data(sid, b"hello ")
    pair.client.send_data(sid, b"world")
    pair.client.send_trailers(sid, [(b"x-checksum", b"abc")])
    got, _ = pair.pump()
    assert got[0] == RequestHead(1, b"POST", b"/upload?x=1", b"svc", [(b"content-type", b"text/plain")],
                                 "2", b"http")
    assert got[-2:] == [Trailers(1, [(b"x-checksum", b"abc")]), EndStream(1)]
    # Frame boundaries carry no meaning: h2 sends a DATA frame per send_data, nghttp2
    # packs what is queued into as few frames as the window allows.
    middle = got[1:-2]
    assert all(isinstance(e, Data) and e.flow_controlled_length == len(e.data) for e in middle)
    assert body(middle, 1) == b"hello world"
    pair.server.send_head(ResponseHead(1, 201, [(b"x-a", b"b")]))
    pair.server.send_data(1, b"done", end_stream=True)
    _, back = pair.pump()
    assert back == [ResponseHead(1, 201, [(b"x-a", b"b")], "2"), Data(1, b"done", 4), EndStream(1)]
    assert pair.client.open_streams == pair.server.open_streams == 0


def test_grpc_style_trailers_and_trailers_only_response():
    pair = ConnectionPair()
    grpc = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    a = pair.client.send_head(request(b"POST", b"/pkg.Svc/Call", grpc, end_stream=False))
    pair.client.send_data(a, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    b = pair.client.send_head(request(b"POST", b"/pkg.Svc/Fail", grpc, end_stream=True))
    got, _ = pair.pump()
    assert got[0].headers == grpc and got[0].end_stream is False
    pair.server.send_head(ResponseHead(a, 200, [(b"content-type", b"application/grpc")]))
    pair.server.send_data(a, b"\x00\x00\x00\x00\x02ok")
    pair.server.send_trailers(a, [(b"grpc-status", b"0"), (b"grpc-message", b"")])
    pair.server.send_head(ResponseHead(b, 200, [(b"grpc-status", b"12")], end_stream=True))
    _, back = pair.pump()
    assert [e for e in back if e.stream_id == a][-2:] == [
        Trailers(a, [(b"grpc-status", b"0"), (b"grpc-message", b"")]), EndStream(a)]
    assert [e for e in back if e.stream_id == b] == [
        ResponseHead(b, 200, [(b"grpc-status", b"12")], "2", end_stream=True), EndStream(b)]


def test_many_concurrent_interleaved_streams():
    pair = ConnectionPair()
    ids = [pair.client.send_head(request(b"POST", b"/%d" % i, end_stream=False)) for i in range(50)]
    for round_ in range(3):
        for sid in ids:
            pair.client.send_data(sid, b"%d:%d;" % (sid, round_), end_stream=round_ == 2)
    got, _ = pair.pump()
    assert sum(isinstance(e, RequestHead) for e in got) == 50
    for sid in ids:
        assert body(got, sid) == b"%d:0;%d:1;%d:2;" % (sid, sid, sid)
        pair.server.send_head(ResponseHead(sid, 200, [], end_stream=True))
    _, back = pair.pump()
    assert sum(isinstance(e, EndStream) for e in back) == 50
    assert pair.client.open_streams == pair.server.open_streams == 0


def test_informational_100_continue_then_final():
    pair = ConnectionPair()
    sid = pair.client.send_head(request(b"PUT", b"/", [(b"expect", b"100-continue")], end_stream=False))
    got, _ = pair.pump()
    assert got[0].expect_continue is True
    pair.server.send_head(ResponseHead(sid, 100, []))
    _, back = pair.pump()
    assert back == [ResponseHead(sid, 100, [], "2")]
    pair.client.send_data(sid, b"x", end_stream=True)
    pair.server.send_head(ResponseHead(sid, 204, [], end_stream=True))
    got, back = pair.pump()
    assert kinds(got) == ["Data", "EndStream"] and back[0].status == 204


# === header hygiene ===

def test_sent_heads_lose_connection_specific_headers_and_host_becomes_authority():
    srv = RawServer(handshake=False)
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(srv.codec.data_to_send())
    client.send_head(RequestHead(0, b"GET", b"/p", None, [
        (b"Host", b"example.com:8080"), (b"Connection", b"close, X-Hop"), (b"keep-alive", b"1"),
        (b"Upgrade", b"h2c"), (b"X-Hop", b"1"), (b"TE", b"gzip"), (b"X-Mixed", b"v"),
        (b"transfer-encoding", b"chunked"), (b"proxy-connection", b"k")], "1.1", end_stream=True))
    got = srv.feed(client.data_to_send())
    assert got[0] == RequestHead(1, b"GET", b"/p", b"example.com:8080", [(b"x-mixed", b"v")], "2",
                                 end_stream=True)
    srv.drain()
    srv.codec.send_head(ResponseHead(1, 200, [(b"Connection", b"keep-alive"), (b"Keep-Alive", b"5"),
                                              (b"Server", b"x")], end_stream=True))
    assert srv.headers_sent(srv.drain()) == [(1, [(b":status", b"200"), (b"server", b"x")])]


def test_received_request_lifts_host_joins_cookies():
    srv = RawServer()
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
              (b"host", b"h.example"), (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")]
    (head, _end) = srv.feed(srv.ff.headers(1, fields, end_stream=True))
    assert (head.authority, head.scheme) == (b"h.example", b"https")
    assert head.headers == [(b"x", b"y"), (b"cookie", b"a=1; b=2")]


BAD_REQUESTS = [
    [(b"connection", b"keep-alive")], [(b"keep-alive", b"5")], [(b"proxy-connection", b"x")],
    [(b"transfer-encoding", b"chunked")], [(b"upgrade", b"websocket")], [(b"te", b"gzip")],
    [(b"X-Upper", b"1")], [(b"x", b" padded")], [(b"x", b"a\x00b")], [(b":custom", b"1")],
    [(b"x", b"tab\t")], [(b"x", b"a\rb")], [(b"x", b"a\nb")], [(b"x-\xff", b"1")], [(b"a b", b"1")],
    [(b"ok", b"1"), (b"x", b"trailing ")],
]


def test_connection_specific_and_malformed_requests_reset_stream_connection_survives():
    srv = RawServer()
    sid = 1
    for extra in BAD_REQUESTS:
        fields = request_fields(extra=extra) if extra[0][0][:1] != b":" else extra + request_fields()
        events = srv.feed(srv.ff.headers(sid, fields, end_stream=True))
        assert events == [Reset(sid, PROTOCOL_ERROR, remote=False)], extra
        frames = srv.drain()
        assert rsts(frames) == [(sid, PROTOCOL_ERROR)] and not goaways(frames)
        sid += 2
    events = srv.feed(srv.ff.headers(sid, request_fields(extra=[(b"te", b"trailers")]), end_stream=True))
    assert kinds(events) == ["RequestHead", "EndStream"]
    assert events[0].headers == [(b"te", b"trailers")]


def test_header_list_too_large_is_a_local_431_not_a_connection_error():
    srv = RawServer()
    big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(70)]  # ~72 KiB > 60 KiB
    block = srv.ff.block(request_fields(b"/", b"POST", extra=big))
    chunks = [block[i:i + 16000] for i in range(0, len(block), 16000)]
    raw = srv.ff.headers(1, chunks[0], end_headers=False)
    for i, chunk in enumerate(chunks[1:]):
        raw += srv.ff.continuation(1, chunk, end_headers=i == len(chunks) - 2)
    events = srv.feed(raw + srv.ff.data(1, b"body", end_stream=False))
    assert events == [ProtocolError(1, 431, "request header fields too large", False, NO_ERROR)]
    srv.codec.send_head(ResponseHead(1, 431, [], end_stream=True))
    frames = srv.drain()
    assert rsts(frames) == [(1, NO_ERROR)] and not goaways(frames)
    assert srv.codec.open_streams == 0
    events = srv.feed(srv.ff.headers(3, request_fields(), end_stream=True))
    assert kinds(events) == ["RequestHead", "EndStream"]


def test_too_many_header_fields_is_431():
    srv = RawServer()
    many = [(b"x-%d" % i, b"1") for i in range(101)]
    events = srv.feed(srv.ff.headers(1, request_fields(extra=many), end_stream=True))
    assert [(type(e), e.status) for e in events] == [(ProtocolError, 431)]


# === flow control ===

def test_large_body_is_held_in_pending_until_receiver_acks():
    pair = ConnectionPair()
    sid = pair.client.send_head(request())
    pair.pump()
    size = 2 * 1024 * 1024
    pair.server.send_head(ResponseHead(sid, 200, []))
    pair.server.send_data(sid, b"x" * size)
    pair.server.send_end(sid)
    _, back = pair.pump()
    received = body(back, sid)
    assert len(received) == 256 * 1024  # the client's advertised stream window
    assert pair.server.pending(sid) == size - len(received)
    assert not any(isinstance(e, EndStream) for e in back)
    assert pair.pump() == ([], [])  # nothing moves without ack()
    total, opened = len(received), 0
    while True:
        for e in back:
            if isinstance(e, Data):
                pair.client.ack(sid, e.flow_controlled_length)
        at_server, back = pair.pump()
        opened += at_server.count(WindowOpened(sid))
        if not back:
            break
        total += len(body(back, sid))
    assert total == size and pair.server.pending(sid) == 0 and opened > 0
    assert pair.server.open_streams == 0 and pair.client.open_streams == 0


def test_queued_chunks_of_any_size_fill_data_frames_in_order(backend):
    """Chunks smaller and larger than a frame, and slices, leave in order with their
    trailers; on nghttp2 each DATA frame is filled to the 16 KiB maximum."""
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(), end_stream=True))
    srv.drain()
    srv.codec.send_head(ResponseHead(1, 200, []))
    chunks = [b"a" * 10000, b"b" * 10000, b"c" * 5, memoryview(b"0123456789" * 3000)[7:], b"d" * 40000,
              b"e"]
    for chunk in chunks:
        srv.codec.send_data(1, chunk)
    srv.codec.send_trailers(1, [(b"grpc-status", b"0")])
    frames, sent = [], 0
    while True:
        got = srv.drain()
        frames += got
        data = sum(len(f.data) for f in got if isinstance(f, DataFrame))
        if not data:
            break
        sent += data
        srv.feed(srv.ff.window_update(0, data) + srv.ff.window_update(1, data))
    want = b"".join(bytes(c) for c in chunks)
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame)) == want
    assert isinstance(frames[-1], HeadersFrame) and "END_STREAM" in frames[-1].flags
    sizes = [len(f.data) for f in frames if isinstance(f, DataFrame)]
    assert max(sizes) <= 16384
    if backend != "h2":
        windowed = [s for s in sizes[:-1] if s != 16384]  # only window edges cut a frame short
        assert all(s in (65535 % 16384,) for s in windowed), sizes


def test_window_update_releases_queue_and_emits_window_opened():
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(), end_stream=True))
    srv.drain()
    srv.codec.send_head(ResponseHead(1, 200, []))
    srv.codec.send_data(1, b"y" * 70000)
    srv.codec.send_trailers(1, [(b"grpc-status", b"0")])
    frames = srv.drain()
    assert sum(len(f.data) for f in frames if isinstance(f, DataFrame)) == 65535
    assert srv.codec.pending(1) == 70000 - 65535
    assert srv.feed(srv.ff.window_update(1, 10000)) == []  # connection window still empty
    events = srv.feed(srv.ff.window_update(0, 10000))
    assert events == [WindowOpened(1)] and srv.codec.pending(1) == 0
    frames = srv.drain()
    assert [type(f) for f in frames] == [DataFrame, HeadersFrame]
    assert "END_STREAM" in frames[-1].flags and len(frames[0].data) == 70000 - 65535


@pytest.mark.parametrize("size", [1, 70000, 200000])
def test_send_response_is_send_head_then_send_data(size):
    """``send_response`` (nghttp2 submits the head with the body already queued) gives the
    same frames, the same pending counts and the same WindowOpened events as ``send_head``
    followed by ``send_data(..., end_stream=True)``, through the peer's flow-control window."""
    runs = []
    for fused in (True, False):
        srv = RawServer()
        srv.feed(srv.ff.headers(1, request_fields(), end_stream=True))
        srv.drain()
        head = ResponseHead(1, 200, [(b"content-type", b"text/plain")])
        if fused:
            srv.codec.send_response(head, b"z" * size)
        else:
            srv.codec.send_head(head)
            srv.codec.send_data(1, b"z" * size, True)
        steps = []
        for _ in range(10):
            frames = srv.drain()
            steps.append(([(type(f).__name__, len(getattr(f, "data", b"")), sorted(f.flags)) for f in frames],
                          srv.codec.pending(1), srv.codec.open_streams))
            sent = sum(len(f.data) for f in frames if isinstance(f, DataFrame))
            if not sent:
                break
            steps.append(srv.feed(srv.ff.window_update(0, sent) + srv.ff.window_update(1, sent)))
        runs.append(steps)
    assert runs[0] == runs[1]
    data = [f for step in runs[0][::2] for f in step[0] if f[0] == "DataFrame"]
    assert sum(n for _, n, _ in data) == size and "END_STREAM" in data[-1][2]
    assert runs[0][-1][1:] == (0, 0)  # nothing pending, the stream closed


def test_padding_counts_in_flow_controlled_length():
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(method=b"POST")))
    events = srv.feed(srv.ff.data(1, b"abc", pad_length=10))
    assert events == [Data(1, b"abc", 3 + 10 + 1)]


# === protections ===

def test_stream_101_is_refused_and_the_connection_survives():
    srv = RawServer()
    raw = b"".join(srv.ff.headers(2 * i + 1, request_fields()) for i in range(101))
    events = srv.feed(raw)
    assert sum(isinstance(e, RequestHead) for e in events) == 100
    frames = srv.drain()
    assert rsts(frames) == [(201, REFUSED_STREAM)] and not goaways(frames)
    srv.codec.send_head(ResponseHead(1, 200, [], end_stream=True))
    srv.feed(srv.ff.data(1, b"", end_stream=True))
    events = srv.feed(srv.ff.headers(203, request_fields(), end_stream=True))
    assert kinds(events) == ["RequestHead", "EndStream"]


def test_rapid_reset_sends_goaway_enhance_your_calm():
    srv = RawServer(Http2Limits(premature_reset_total_stream_count=20))
    raw = b"".join(srv.ff.headers(2 * i + 1, request_fields(), end_stream=True) + srv.ff.rst(2 * i + 1)
                   for i in range(20))
    events = srv.feed(raw)
    fatal = [e for e in events if isinstance(e, ProtocolError)]
    assert fatal == [ProtocolError(None, 400, "too many premature stream resets", True, ENHANCE_YOUR_CALM)]
    assert sum(isinstance(e, Reset) for e in events) == 10  # the 10th reset trips it
    (goaway,) = goaways(srv.drain())
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert srv.feed(srv.ff.headers(41, request_fields())) == []


def test_resets_after_a_response_are_not_premature():
    srv = RawServer(Http2Limits(premature_reset_total_stream_count=20))
    for i in range(30):
        sid = 2 * i + 1
        srv.feed(srv.ff.headers(sid, request_fields(), end_stream=True))
        srv.codec.send_head(ResponseHead(sid, 200, []))
        assert srv.feed(srv.ff.rst(sid)) == [Reset(sid, CANCEL)]
    assert not goaways(srv.drain())


def test_headers_and_rst_in_one_read_emit_head_then_reset():
    srv = RawServer()
    events = srv.feed(srv.ff.headers(1, request_fields()) + srv.ff.rst(1, CANCEL))
    assert kinds(events) == ["RequestHead", "Reset"] and events[1] == Reset(1, CANCEL, True)
    assert srv.codec.open_streams == 0
    srv.codec.send_head(ResponseHead(1, 200, [], end_stream=True))  # late answer: dropped, no raise
    srv.codec.send_data(1, b"late")
    assert srv.drain() == []
    assert kinds(srv.feed(srv.ff.headers(3, request_fields(), end_stream=True))) == ["RequestHead", "EndStream"]


def test_ping_flood_sends_goaway_unless_drained():
    srv = RawServer()
    assert srv.feed(srv.ff.ping() * 1000) == []
    srv.drain()  # the transport took the ACKs: the count starts over
    assert srv.feed(srv.ff.ping() * 1000) == []
    events = srv.feed(srv.ff.ping())
    assert events == [ProtocolError(None, 400, "outbound control frame flood", True, ENHANCE_YOUR_CALM)]
    frames = srv.drain()
    assert [type(f) for f in frames] == [GoAwayFrame]  # the flood of ACKs is not written back
    assert frames[0].error_code == ENHANCE_YOUR_CALM


def test_settings_flood_sends_goaway():
    srv = RawServer(Http2Limits(max_outbound_control_frames=10))
    events = srv.feed(srv.ff.settings({}) * 11)
    assert [e.error_code for e in events] == [ENHANCE_YOUR_CALM]
    assert goaways(srv.drain())[0].error_code == ENHANCE_YOUR_CALM


def test_empty_data_frame_flood():
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(method=b"POST")))
    assert srv.feed(srv.ff.data(1, b"") + srv.ff.data(1, b"x")) == [Data(1, b"x", 1)]
    events = srv.feed(srv.ff.data(1, b"") + srv.ff.data(1, b""))
    assert events == [ProtocolError(None, 400, "empty frame flood", True, ENHANCE_YOUR_CALM),
                      Reset(1, ENHANCE_YOUR_CALM, remote=False)]
    assert goaways(srv.drain())[0].error_code == ENHANCE_YOUR_CALM


def test_continuation_flood_is_bounded():
    # Many small CONTINUATION frames: h2's 64-frame backlog.
    srv = RawServer()
    raw = srv.ff.headers(1, srv.ff.block(request_fields()), end_headers=False)
    raw += b"".join(srv.ff.continuation(1, b"") for _ in range(100))
    events = srv.feed(raw)
    assert [(type(e), e.connection_fatal) for e in events] == [(ProtocolError, True)]
    assert goaways(srv.drain())
    # Few large CONTINUATION frames: our compressed-size cap (2 x 60 KiB).
    srv = RawServer()
    junk = b"\x00\x05x-big\x7f\x81\x7f" + b"v" * 16000  # literal, never ends within the cap
    raw = srv.ff.headers(1, junk[:16000], end_headers=False)
    raw += b"".join(srv.ff.continuation(1, b"w" * 16000) for _ in range(8))
    events = srv.feed(raw)
    assert [(type(e), e.error_code) for e in events] == [(ProtocolError, ENHANCE_YOUR_CALM)]
    assert goaways(srv.drain())[0].error_code == ENHANCE_YOUR_CALM


def test_garbage_preface_is_a_fatal_protocol_error():
    codec = Http2Codec("server")
    codec.initiate()
    events = codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [(type(e), e.connection_fatal, e.error_code) for e in events] == [(ProtocolError, True, PROTOCOL_ERROR)]
    frames = parse_frames(codec.data_to_send())
    assert isinstance(frames[0], SettingsFrame) and goaways(frames)[0].error_code == PROTOCOL_ERROR
    assert codec.receive_data(b"more") == [] and codec.receive_eof() == []


# === drain, GOAWAY, EOF ===

def test_server_drain_finishes_in_flight_and_refuses_new_streams():
    pair = ConnectionPair()
    sid = pair.client.send_head(request(b"POST", end_stream=False))
    pair.pump()
    pair.server.start_drain()
    _, back = pair.pump()
    assert back == [ConnectionEnded(sid, 0, {})]
    assert not pair.client.can_open_stream()
    pair.client.send_data(sid, b"late body", end_stream=True)  # still flows after GOAWAY
    got, _ = pair.pump()
    assert got == [Data(sid, b"late body", 9), EndStream(sid)]
    pair.server.send_head(ResponseHead(sid, 200, [], end_stream=True))
    _, back = pair.pump()
    assert kinds(back) == ["ResponseHead", "EndStream"]


def test_drain_goaway_frame_and_refusal_above_last_stream_id():
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields()) + srv.ff.headers(3, request_fields()))
    srv.drain()
    srv.codec.start_drain()
    (goaway,) = goaways(srv.drain())
    assert (goaway.last_stream_id, goaway.error_code) == (3, NO_ERROR)
    assert srv.feed(srv.ff.headers(5, request_fields())) == []
    assert rsts(srv.drain()) == [(5, REFUSED_STREAM)]


def test_client_graceful_goaway_refuses_streams_above_last():
    srv = RawServer(handshake=False)
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(srv.codec.data_to_send())
    a = client.send_head(request())
    b = client.send_head(request())
    srv.feed(client.data_to_send())  # both requests are on the wire
    events = client.receive_data(srv.ff.goaway(a))
    assert events == [Reset(b, REFUSED_STREAM, True), ConnectionEnded(a, 0, {})]
    assert not client.can_open_stream()
    try:
        client.send_head(request())
    except StreamUnavailable:
        pass
    else:
        raise AssertionError("send_head after GOAWAY must raise")


def test_goaway_error_code_last_stream_and_debug_data_reach_the_event():
    srv = RawServer(handshake=False)
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(srv.codec.data_to_send())
    a = client.send_head(request(end_stream=False))
    srv.feed(client.data_to_send())
    frame = GoAwayFrame(0, last_stream_id=a, error_code=ENHANCE_YOUR_CALM, additional_data=b"too busy")
    events = client.receive_data(frame.serialize())
    assert events == [Reset(a, ENHANCE_YOUR_CALM, True),
                      ConnectionEnded(a, ENHANCE_YOUR_CALM, {"additional_data": b"too busy"})]


def test_error_goaway_and_eof_reset_open_streams():
    pair = ConnectionPair()
    sid = pair.client.send_head(request(end_stream=False))
    pair.pump()
    pair.server.close(PROTOCOL_ERROR)
    _, back = pair.pump()
    assert back == [Reset(sid, PROTOCOL_ERROR, True), ConnectionEnded(sid, PROTOCOL_ERROR, {})]
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields()))
    assert srv.codec.receive_eof() == [Reset(1, CANCEL, True), ConnectionEnded()]


def test_client_respects_peer_max_concurrent_streams():
    pair = ConnectionPair(Http2Limits(max_concurrent_streams=2))
    pair.client.send_head(request(end_stream=False))
    assert pair.client.can_open_stream()
    pair.client.send_head(request(end_stream=False))
    assert not pair.client.can_open_stream()


# === chunking independence ===

def client_stream() -> bytes:
    ff = FrameFactory()
    return (ff.preamble() + ff.headers(1, request_fields(b"/a", b"POST"))
            + ff.data(1, b"x" * 300) + ff.data(1, b"y", pad_length=4)
            + ff.headers(1, [(b"grpc-status", b"0")], end_stream=True)
            + ff.headers(3, request_fields(b"/b"), end_stream=True) + ff.ping()
            + ff.headers(5, request_fields(b"/c", extra=[(b"x-long", b"z" * 5000)])) + ff.rst(5)
            + ff.window_update(0, 1000)
            + ff.headers(7, request_fields(b"/d", extra=[(b"connection", b"close")]), end_stream=True))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(client_stream())), max_size=25))
def test_arbitrary_chunking_yields_the_same_events(cuts):
    data = client_stream()
    whole = Http2Codec("server")
    whole.initiate()
    expected = whole.receive_data(data)
    assert kinds(expected) == ["RequestHead", "Data", "Data", "Trailers", "EndStream", "RequestHead",
                               "EndStream", "RequestHead", "Reset", "Reset"]
    split = Http2Codec("server")
    split.initiate()
    got = []
    bounds = [0, *sorted(cuts), len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        got += split.receive_data(data[lo:hi])
    assert got == expected
    assert split.data_to_send() == whole.data_to_send()


def test_data_on_refused_streams_does_not_leak_the_connection_window():
    srv = RawServer()
    srv.feed(b"".join(srv.ff.headers(2 * i + 1, request_fields(method=b"POST")) for i in range(100)))
    srv.drain()
    chunk = b"z" * 16000
    raw = b"".join(srv.ff.headers(sid, request_fields(method=b"POST")) + srv.ff.data(sid, chunk) * 10
                   for sid in (201, 203, 205, 207))
    assert srv.feed(raw) == []
    frames = srv.drain()
    assert rsts(frames) == [(sid, REFUSED_STREAM) for sid in (201, 203, 205, 207)]
    assert sum(f.window_increment for f in frames if f.type == 0x8 and f.stream_id == 0) >= 512 * 1024


def test_malformed_trailers_reset_the_stream():
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(method=b"POST")))
    events = srv.feed(srv.ff.headers(1, [(b":path", b"/x")], end_stream=True))
    assert events == [Reset(1, PROTOCOL_ERROR, remote=False)]
    assert rsts(srv.drain()) == [(1, PROTOCOL_ERROR)]


def test_connect_request_lifts_authority_as_target():
    srv = RawServer()
    (head,) = srv.feed(srv.ff.headers(1, [(b":method", b"CONNECT"), (b":authority", b"db:5432")]))
    assert (head.target, head.authority, head.upgrade) == (b"db:5432", b"db:5432", b"connect")


def test_client_assumes_our_stream_limit_until_the_server_settings_arrive():
    """h2 treats the peer's limit as unlimited before its SETTINGS; a fresh upstream
    connection must not open more streams than our own limit (REFUSED_STREAM floods)."""
    client = Http2Codec("client")
    client.initiate()
    opened = 0
    while client.can_open_stream() and opened < 1000:
        client.send_head(RequestHead(0, b"GET", b"/", b"up", [], "2", end_stream=True))
        opened += 1
    assert opened == client.limits.max_concurrent_streams == 100


def test_hpack_amplification_is_bounded_by_the_decoded_size():
    """A small block that references one large dynamic-table entry again and again
    decodes to far more than it weighs: past twice the advertised list size the
    connection is abused (GOAWAY ENHANCE_YOUR_CALM), whatever the compressed size."""
    srv = RawServer()
    value = b"v" * 4000
    block = srv.ff.block(request_fields(extra=[(b"x-a", value)]))  # indexes x-a (entry 62)
    block += b"\xbe" * 40  # 40 more references to it: ~160 KiB decoded from 40 bytes
    events = srv.feed(srv.ff.headers(1, block, end_stream=True))
    assert [(type(e), e.connection_fatal, e.error_code) for e in events] == [
        (ProtocolError, True, ENHANCE_YOUR_CALM)]
    assert goaways(srv.drain())[0].error_code == ENHANCE_YOUR_CALM


def test_trailers_without_end_stream_are_a_malformed_request(backend):
    """RFC 9113 section 8.1: a second HEADERS without END_STREAM makes the request
    malformed, a stream error (8.1.1); nghttp2 resets the stream and the connection
    goes on. h2 raises a connection error from its state machine; the fallback
    keeps that (pinned here so the difference stays known)."""
    srv = RawServer()
    srv.feed(srv.ff.headers(1, request_fields(method=b"POST")))
    events = srv.feed(srv.ff.headers(1, [(b"x-t", b"1")], end_stream=False))
    frames = srv.drain()
    if backend == "h2":
        assert [(type(e), e.stream_id) for e in events] == [(ProtocolError, None), (Reset, 1)]
        assert [g.error_code for g in goaways(frames)] == [PROTOCOL_ERROR]
        return
    assert events == [Reset(1, PROTOCOL_ERROR, remote=False)]
    assert rsts(frames) == [(1, PROTOCOL_ERROR)] and not goaways(frames)
    assert kinds(srv.feed(srv.ff.headers(3, request_fields(), end_stream=True))) == ["RequestHead", "EndStream"]


BAD_RESPONSES = [
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"200"), (b"X-Upper", b"1")],
    [(b":status", b"200"), (b"x", b"a\r\nb")],
    [(b":status", b"200"), (b"x", b" padded")],
    [(b"x", b"1")],  # no :status
    [(b":status", b"101")],
    [(b":status", b"2000")],
    [(b":status", b"200"), (b":path", b"/")],
    [(b"x", b"1"), (b":status", b"200")],
]


def test_malformed_responses_reset_the_stream_and_the_connection_survives():
    """An upstream's malformed response is a stream error (RFC 9113 8.1.1): the
    client resets that stream, the layer above gets a Reset, other streams go on."""
    ff = FrameFactory()
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(ff.settings())
    for fields in BAD_RESPONSES:
        sid = client.send_head(request())
        client.data_to_send()
        events = client.receive_data(ff.headers(sid, fields))  # the stream stays open
        assert events == [Reset(sid, PROTOCOL_ERROR, remote=False)], fields
        frames = parse_frames(client.data_to_send())
        assert rsts(frames) == [(sid, PROTOCOL_ERROR)] and not goaways(frames), fields
    sid = client.send_head(request())
    client.data_to_send()
    events = client.receive_data(ff.headers(sid, [(b":status", b"204")], end_stream=True))
    assert kinds(events) == ["ResponseHead", "EndStream"] and client.open_streams == 0


def test_response_body_longer_than_its_content_length_resets_the_stream():
    ff = FrameFactory()
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(ff.settings())
    sid = client.send_head(request())
    client.data_to_send()
    events = client.receive_data(ff.headers(sid, [(b":status", b"200"), (b"content-length", b"3")])
                                 + ff.data(sid, b"abcdef"))
    assert kinds(events) == ["ResponseHead", "Reset"] and events[1] == Reset(sid, PROTOCOL_ERROR, False)
    assert rsts(parse_frames(client.data_to_send())) == [(sid, PROTOCOL_ERROR)]


def test_request_without_content_but_with_a_content_length_is_malformed():
    """END_STREAM on the HEADERS of a request that declares content-length: 5 is
    malformed (RFC 9113 8.1.1); forwarded to an HTTP/1.1 upstream it would leave
    that connection waiting for five bytes of the next request."""
    srv = RawServer()
    fields = request_fields(method=b"POST", extra=[(b"content-length", b"5")])
    assert srv.feed(srv.ff.headers(1, fields, end_stream=True)) == [Reset(1, PROTOCOL_ERROR, remote=False)]
    assert rsts(srv.drain()) == [(1, PROTOCOL_ERROR)]
    fields = request_fields(method=b"POST", extra=[(b"content-length", b"0")])
    assert kinds(srv.feed(srv.ff.headers(3, fields, end_stream=True))) == ["RequestHead", "EndStream"]


def test_responses_without_content_may_declare_a_content_length():
    """HEAD and 304 responses carry a content-length but no content (RFC 9113
    8.1.1); a 204 may say content-length: 0."""
    ff = FrameFactory()
    client = Http2Codec("client")
    client.initiate()
    client.receive_data(ff.settings())
    for method, status, length in ((b"HEAD", b"200", b"1024"), (b"GET", b"304", b"1024"),
                                   (b"GET", b"204", b"0")):
        sid = client.send_head(request(method))
        client.data_to_send()
        fields = [(b":status", status), (b"content-length", length)]
        events = client.receive_data(ff.headers(sid, fields, end_stream=True))
        assert kinds(events) == ["ResponseHead", "EndStream"], (method, status)
    assert client.open_streams == 0


_frames = st.lists(st.tuples(st.integers(0, 10), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
                             st.binary(max_size=64)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_frames, st.sampled_from(["server", "client"]))
def test_arbitrary_frames_never_raise(frames, role):
    """Invariant 1 on random frames (any type, flags, stream, payload) after a valid
    start, for both roles: events or a fatal ProtocolError, never an exception, and
    a dead codec stays quiet."""
    codec = Http2Codec(role)
    codec.initiate()
    ff = FrameFactory()
    start = ff.preamble() if role == "server" else ff.settings()
    if role == "client":
        codec.send_head(request(b"POST", end_stream=False))
    raw = start + b"".join(len(p).to_bytes(3, "big") + bytes([t, fl]) + sid.to_bytes(4, "big") + p
                           for t, fl, sid, p in frames)
    events = codec.receive_data(raw)
    assert all(type(e).__name__ in {"RequestHead", "ResponseHead", "Data", "Trailers", "EndStream", "Reset",
                                    "ProtocolError", "ConnectionEnded", "WindowOpened"} for e in events)
    codec.data_to_send()
    fatal = any(isinstance(e, ProtocolError) and e.connection_fatal for e in events)
    if fatal:
        assert codec.receive_data(b"\x00" * 9) == []
    codec.receive_eof()
    codec.data_to_send()
