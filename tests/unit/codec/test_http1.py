"""Sans-IO tests for ``meshproxy.codec.http1``: bytes in → events, events in → exact bytes
(h11 ``test_io`` style), hostile input, arbitrary chunking, and a client/server pair."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codec.events import (
    CANCEL,
    ConnectionEnded,
    Data,
    EndStream,
    ProtocolError,
    RequestHead,
    Reset,
    ResponseHead,
    Trailers,
)
from meshproxy.codec.http1 import Http1Codec, Http1Limits, LocalProtocolError


def coalesce(events: list) -> list:
    """Merge adjacent Data events of one stream (chunking may split them differently)."""
    out: list = []
    for e in events:
        if isinstance(e, Data) and out and isinstance(out[-1], Data) and out[-1].stream_id == e.stream_id:
            out[-1] = Data(e.stream_id, out[-1].data + e.data)
        else:
            out.append(e)
    return out


def server_events(*chunks: bytes, limits: Http1Limits | None = None) -> list:
    codec = Http1Codec("server", limits or Http1Limits())
    events: list = []
    for chunk in chunks:
        events += codec.receive_data(chunk)
    return coalesce(events)


def answered(codec: Http1Codec, head: ResponseHead, *body: bytes) -> bytes:
    codec.send_head(head)
    for part in body:
        codec.send_data(head.stream_id, part)
    codec.send_end(head.stream_id)
    return codec.data_to_send()


def respond(codec: Http1Codec, head: ResponseHead, *body: bytes) -> None:
    """Send a whole response without draining the output."""
    codec.send_head(head)
    for part in body:
        codec.send_data(head.stream_id, part)
    codec.send_end(head.stream_id)


def get(target: bytes = b"/", sid: int = 1, **kw) -> RequestHead:
    return RequestHead(sid, b"GET", target, b"example.com", [(b"host", b"example.com")], **kw)


# === server role: bytes in → events ===


def test_simple_get() -> None:
    assert server_events(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n") == [
        RequestHead(
            1, b"GET", b"/a?b=1", b"example.com", [(b"host", b"example.com"), (b"accept", b"*/*")],
            end_stream=True,
        ),
        EndStream(1),
    ]


def test_post_with_content_length() -> None:
    assert server_events(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel", b"lo") == [
        RequestHead(1, b"POST", b"/u", b"h", [(b"host", b"h"), (b"content-length", b"5")], content_length=5),
        Data(1, b"hello"),
        EndStream(1),
    ]


def test_chunked_request_with_extensions_and_trailers() -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n8\r\n\r\n\r\n\r\n\r\n\r\n0\r\nX-Sum: abc\r\nHost: other\r\n\r\n"
    )
    events = server_events(raw)
    assert events[1:] == [
        Data(1, b"hello\r\n\r\n\r\n\r\n"),
        Trailers(1, [(b"x-sum", b"abc")]),  # framing fields are dropped from trailers
        EndStream(1),
    ]
    assert events[0].content_length is None and not events[0].end_stream


def test_content_length_in_trailers_is_refused() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n"
    events = server_events(raw)
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 400


def test_absolute_form_sets_authority_and_scheme() -> None:
    (head, _) = server_events(b"GET https://Example.com:443/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (head.target, head.authority, head.scheme) == (b"https://Example.com:443/x", b"Example.com:443", b"https")


def test_http10_without_host_and_no_keep_alive() -> None:
    codec = Http1Codec("server")
    events = codec.receive_data(b"GET / HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n")
    assert events == [RequestHead(1, b"GET", b"/", None, [], "1.0", keep_alive=False, end_stream=True), EndStream(1)]
    assert codec.receive_data(b"GET /more HTTP/1.1\r\n\r\n") == []


def test_leading_empty_lines_are_ignored() -> None:
    assert server_events(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")[0].target == b"/"


def test_expect_continue() -> None:
    (head,) = server_events(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n")
    assert head.expect_continue
    (head,) = server_events(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not head.expect_continue
    codec = Http1Codec("server")
    codec.receive_data(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    codec.send_continue(1)
    assert codec.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert codec.receive_data(b"ok") == [Data(1, b"ok"), EndStream(1)]


def test_eof_mid_body_resets_and_clean_eof_ends() -> None:
    codec = Http1Codec("server")
    codec.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
    assert codec.receive_eof() == [Reset(1, CANCEL), ConnectionEnded()]
    assert codec.should_close
    codec = Http1Codec("server")
    assert codec.receive_eof() == [ConnectionEnded()]


# === server role: events in → exact bytes ===


def _one_request(raw: bytes = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") -> Http1Codec:
    codec = Http1Codec("server")
    codec.receive_data(raw)
    return codec


def test_response_with_content_length_is_one_write() -> None:
    codec = _one_request()
    head = ResponseHead(1, 200, [(b"content-type", b"text/plain"), (b"content-length", b"999")], content_length=2)
    assert answered(codec, head, b"hi") == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi"
    )
    assert not codec.should_close


def test_response_without_length_is_chunked_with_trailers() -> None:
    codec = _one_request()
    codec.send_head(ResponseHead(1, 200, [(b"transfer-encoding", b"gzip, chunked")], reason=b"Fine"))
    codec.send_data(1, b"hello")
    codec.send_data(1, b"")
    codec.send_trailers(1, [(b"grpc-status", b"0")])
    assert codec.data_to_send() == (
        b"HTTP/1.1 200 Fine\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"
    )


def test_end_stream_head_gets_content_length_zero() -> None:
    codec = _one_request()
    codec.send_head(ResponseHead(1, 404, [], end_stream=True))
    codec.send_end(1)  # idempotent: the EndStream event after the head is harmless
    assert codec.data_to_send() == b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def test_head_response_keeps_length_and_sends_no_body() -> None:
    codec = _one_request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answered(codec, ResponseHead(1, 200, [(b"content-length", b"10")]), b"ignored") == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    )


@pytest.mark.parametrize("status, expected", [
    (204, b"HTTP/1.1 204 No Content\r\n\r\n"),
    (304, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
])
def test_no_body_statuses(status: int, expected: bytes) -> None:
    codec = _one_request()
    assert answered(codec, ResponseHead(1, status, [], content_length=5)) == expected


def test_http10_client_gets_close_delimited_body() -> None:
    codec = _one_request(b"GET / HTTP/1.0\r\n\r\n")
    assert answered(codec, ResponseHead(1, 200, []), b"abc") == (
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"
    )
    assert codec.should_close


def test_http10_keep_alive_is_echoed() -> None:
    codec = _one_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert answered(codec, ResponseHead(1, 200, [], content_length=1), b"x") == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\nx"
    )
    assert not codec.should_close


def test_connection_close_request_gets_close() -> None:
    codec = _one_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert answered(codec, ResponseHead(1, 200, [], content_length=0)) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    assert codec.should_close


def test_drain_marks_the_last_response_close() -> None:
    codec = _one_request()
    codec.start_drain()
    assert codec.receive_data(b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n") == []
    assert b"connection: close\r\n" in answered(codec, ResponseHead(1, 200, [], content_length=0))
    assert codec.should_close


def test_close_after_current_is_a_drain() -> None:
    """What the server calls when a response ended before its request: no new request is read
    and the response carries ``connection: close``."""
    codec = _one_request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    codec.close_after_current()
    assert b"connection: close\r\n" in answered(codec, ResponseHead(1, 413, [], content_length=0))
    assert codec.should_close


def test_response_keep_alive_false_closes() -> None:
    codec = _one_request()
    out = answered(codec, ResponseHead(1, 503, [], keep_alive=False, content_length=0))
    assert out == b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert codec.should_close


def test_server_reserves_an_id_for_a_timeout_reply() -> None:
    codec = Http1Codec("server")
    assert codec.receive_data(b"GET / HTTP/1.1\r\nHo") == []
    sid = codec.next_stream_id()
    answered(codec, ResponseHead(sid, 408, [], content_length=0))
    assert codec.receive_data(b"st: h\r\n\r\n") == []
    assert codec.should_close


def test_header_injection_is_refused() -> None:
    codec = _one_request()
    with pytest.raises(LocalProtocolError):
        codec.send_head(ResponseHead(1, 200, [(b"x", b"a\r\n\r\nHTTP/1.1 200 OK")]))
    with pytest.raises(LocalProtocolError):
        codec.send_head(ResponseHead(1, 200, [(b"x", b"a\r\n")]))


def test_body_longer_than_declared_is_a_local_error() -> None:
    codec = _one_request()
    codec.send_head(ResponseHead(1, 200, [], content_length=1))
    with pytest.raises(LocalProtocolError):
        codec.send_data(1, b"too long")


def test_short_body_closes_the_connection() -> None:
    codec = _one_request()
    codec.send_head(ResponseHead(1, 200, [], content_length=10))
    codec.send_data(1, b"abc")
    codec.send_end(1)
    assert codec.should_close


def test_early_response_before_request_body_closes() -> None:
    codec = _one_request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    answered(codec, ResponseHead(1, 413, [], end_stream=True))
    assert codec.should_close


# === pipelining ===

PIPELINE = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in (1, 2, 3))


def test_pipelined_requests_are_all_emitted_and_answered_in_order() -> None:
    codec = Http1Codec("server")
    events = codec.receive_data(PIPELINE)
    assert [e.stream_id for e in events if isinstance(e, RequestHead)] == [1, 2, 3]
    for sid in (3, 2):
        codec.send_head(ResponseHead(sid, 200, [], content_length=1))
        codec.send_data(sid, b"%d" % sid, end_stream=True)
    assert codec.data_to_send() == b""  # held behind stream 1
    codec.send_head(ResponseHead(1, 200, [], content_length=1))
    assert codec.data_to_send() == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"
    codec.send_data(1, b"1", end_stream=True)
    assert codec.data_to_send() == b"1" + b"".join(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n%d" % sid for sid in (2, 3)
    )


def test_stream_behind_writes_directly_once_it_is_first() -> None:
    codec = Http1Codec("server")
    codec.receive_data(PIPELINE)
    codec.send_head(ResponseHead(2, 200, []))
    respond(codec, ResponseHead(1, 204, []))
    codec.send_data(2, b"x")
    assert codec.data_to_send() == (
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n"
    )


def test_reset_drops_later_responses_and_closes() -> None:
    codec = Http1Codec("server")
    codec.receive_data(PIPELINE)
    respond(codec, ResponseHead(2, 200, [], content_length=0))
    codec.send_head(ResponseHead(1, 200, [], content_length=5))
    codec.send_data(1, b"ab")
    codec.send_reset(1)
    respond(codec, ResponseHead(3, 200, [], content_length=0))
    assert codec.data_to_send() == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"
    assert codec.should_close


# === upgrade and CONNECT ===

WS = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_websocket_upgrade_switches_to_tunnel() -> None:
    codec = Http1Codec("server")
    events = codec.receive_data(WS + b"early")
    assert len(events) == 1 and events[0].upgrade == b"websocket" and not events[0].end_stream
    codec.send_head(ResponseHead(1, 101, [(b"sec-websocket-accept", b"x")]))
    assert codec.receive_data(b"") == [Data(1, b"early")]
    assert codec.receive_data(b"GET / HTTP/1.1\r\n") == [Data(1, b"GET / HTTP/1.1\r\n")]
    codec.send_data(1, b"\x81\x00")
    assert codec.data_to_send() == (
        b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: x\r\n"
        b"connection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x00"
    )
    assert codec.receive_eof() == [EndStream(1), ConnectionEnded()]
    assert codec.should_close


def test_declined_upgrade_resumes_http() -> None:
    codec = Http1Codec("server")
    assert len(codec.receive_data(WS + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")) == 1
    answered(codec, ResponseHead(1, 426, [], content_length=0))
    events = codec.receive_data(b"")
    assert events[0] == EndStream(1)
    assert events[1].target == b"/next"


def test_connect_tunnel() -> None:
    codec = Http1Codec("server")
    (head,) = codec.receive_data(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01")
    assert (head.method, head.authority, head.upgrade) == (b"CONNECT", b"db.internal:5432", b"connect")
    codec.send_head(ResponseHead(1, 200, [(b"content-length", b"0")]))
    assert codec.data_to_send() == b"HTTP/1.1 200 OK\r\n\r\n"
    assert codec.receive_data(b"") == [Data(1, b"\x00\x01")]


def test_refused_connect_closes() -> None:
    codec = Http1Codec("server")
    codec.receive_data(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nstuff")
    answered(codec, ResponseHead(1, 403, [], content_length=0))
    assert codec.receive_data(b"") == [EndStream(1)]
    assert codec.should_close


def test_upgrade_needs_http11_and_no_chunked_body() -> None:
    (head, _) = server_events(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert head.upgrade is None
    events = server_events(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert events[0].upgrade is None
    assert events[1:3] == [Data(1, b"x"), EndStream(1)] and events[3].target == b"/next"


def test_interim_responses_are_not_sent_to_http10_clients() -> None:
    codec = _one_request(b"GET / HTTP/1.0\r\n\r\n")
    codec.send_head(ResponseHead(1, 103, [(b"link", b"</a>")]))
    assert codec.data_to_send() == b""
    codec = _one_request()
    codec.send_head(ResponseHead(1, 103, [(b"link", b"</a>")]))
    assert codec.data_to_send() == b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"


def test_close_is_announced_even_if_the_caller_said_keep_alive() -> None:
    codec = _one_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    out = answered(codec, ResponseHead(1, 200, [(b"connection", b"keep-alive")], content_length=0))
    assert out.endswith(b"connection: keep-alive\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


def test_upgrade_request_with_a_body_then_declined() -> None:
    codec = Http1Codec("server")
    events = codec.receive_data(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert events[0].upgrade == b"h2c" and events[1:] == [Data(1, b"abc")]  # EndStream waits for the answer
    answered(codec, ResponseHead(1, 200, [], content_length=0))
    assert codec.receive_data(b"") == [EndStream(1)]
    assert not codec.should_close


def test_bytes_waiting_for_an_upgrade_answer_are_bounded() -> None:
    codec = Http1Codec("server", Http1Limits(max_header_bytes=1000))
    codec.receive_data(WS)
    (err,) = codec.receive_data(b"x" * 1001)
    assert isinstance(err, ProtocolError) and err.stream_id == 1 and err.status == 400


def test_101_without_upgrade_request_is_a_local_error() -> None:
    codec = _one_request()
    with pytest.raises(LocalProtocolError):
        codec.send_head(ResponseHead(1, 101, []))


# === hostile requests: ProtocolError, and never a RequestHead ===

HOST = b"Host: h\r\n"
HOSTILE = [
    (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /" + b"a" * 17000, 414),  # no line end yet
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 62000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 62000, 431),  # no end yet
    (b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0x3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n\tb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\nb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\nX: y\n\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X_Forwarded_For: 1.2.3.4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # 1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
    (b"GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n", 400),
    (b"GET http://user@good.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n", 400),
    (b"GET ftp://good.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"CONNECT /path HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    (b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 400),
    (b"GET / RTSP/1.0\r\n" + HOST + b"\r\n", 400),
    (b"FROB / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
]


@pytest.mark.parametrize("raw, status", HOSTILE, ids=[repr(r[:60]) for r, _ in HOSTILE])
def test_hostile_request_is_rejected_before_any_event(raw: bytes, status: int) -> None:
    codec = Http1Codec("server")
    events = codec.receive_data(raw)
    assert len(events) == 1, events
    (err,) = events
    assert isinstance(err, ProtocolError) and err.status == status and err.connection_fatal
    assert err.stream_id == 1
    assert codec.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []
    # the rejected stream can be answered, and the connection closes after it
    assert answered(codec, ResponseHead(1, status, [], end_stream=True)).endswith(
        b"content-length: 0\r\nconnection: close\r\n\r\n"
    )
    assert codec.should_close


@pytest.mark.parametrize("raw, status", [c for c in HOSTILE if len(c[0]) < 400], ids=repr)
def test_hostile_request_split_anywhere_is_rejected_before_any_event(raw: bytes, status: int) -> None:
    for cut in range(1, len(raw)):
        codec = Http1Codec("server")
        events = codec.receive_data(raw[:cut]) + codec.receive_data(raw[cut:])
        assert not any(isinstance(e, (RequestHead, Data)) for e in events), cut
        assert isinstance(events[-1], ProtocolError) and events[-1].status == status, cut


def test_smuggled_second_request_gets_nothing_through() -> None:
    good = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"
    evil = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin"
    events = server_events(good + evil + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, EndStream, ProtocolError]
    assert events[2].stream_id == 2 and events[2].status == 400


@pytest.mark.parametrize("body", [b"0x5\r\nhello\r\n0\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n", b"-1\r\n",
                                  b"fffffffffffffffffff\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\n0\n\n"])
def test_invalid_chunk_sizes(body: bytes) -> None:
    events = server_events(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert isinstance(events[0], RequestHead)
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 400 and events[-1].stream_id == 1
    assert all(e.data == b"hello" for e in events if isinstance(e, Data))  # only well-framed bytes pass


def test_oversize_trailers_are_refused() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"a" * 70000
    events = server_events(raw[:30000], raw[30000:])
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 431


def test_underscores_allowed_when_configured() -> None:
    limits = Http1Limits(reject_underscore_names=False)
    events = server_events(b"GET / HTTP/1.1\r\nHost: h\r\nX_Y: 1\r\n\r\n", limits=limits)
    assert events[0].headers == [(b"host", b"h"), (b"x_y", b"1")]


def test_limits_are_configurable_and_frozen() -> None:
    limits = Http1Limits(max_request_line=20, max_headers=1)
    assert server_events(b"GET /abcdefghijk HTTP/1.1\r\n", limits=limits)[0].status == 414
    assert server_events(b"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n", limits=limits)[0].status == 431
    with pytest.raises(AttributeError):
        limits.max_headers = 5  # type: ignore[misc]


def test_sends_on_finished_or_unknown_streams_are_dropped() -> None:
    codec = _one_request()
    answered(codec, ResponseHead(1, 200, [], content_length=0))
    codec.send_data(1, b"late")
    codec.send_end(1)
    codec.send_trailers(1, [])
    codec.send_reset(7)
    codec.ack(1, 10)
    assert codec.data_to_send() == b"" and codec.pending(1) == 0


def test_close_abandons_everything() -> None:
    codec = Http1Codec("server")
    codec.receive_data(PIPELINE)
    codec.send_head(ResponseHead(2, 200, [], content_length=0))
    codec.close()
    answered(codec, ResponseHead(1, 200, [], content_length=0))
    assert codec.data_to_send() == b"" and codec.should_close
    assert codec.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


# === client role ===


def test_client_send_head_allocates_ids() -> None:
    codec = Http1Codec("client")
    assert codec.send_head(RequestHead(0, b"GET", b"/", b"h", [], end_stream=True)) == 1
    assert codec.send_head(RequestHead(0, b"GET", b"/", b"h", [], end_stream=True)) == 2
    assert codec.next_stream_id() == 3


def client_with(*heads: RequestHead) -> Http1Codec:
    codec = Http1Codec("client")
    for head in heads:
        codec.send_head(head)
    codec.data_to_send()
    return codec


def test_client_serialises_requests() -> None:
    codec = Http1Codec("client")
    codec.send_head(RequestHead(1, b"GET", b"/a", b"svc:8080", [(b"accept", b"*/*")], end_stream=True))
    assert codec.data_to_send() == b"GET /a HTTP/1.1\r\nhost: svc:8080\r\naccept: */*\r\n\r\n"
    codec = Http1Codec("client")
    codec.send_head(RequestHead(1, b"POST", b"/", b"h", [(b"host", b"h"), (b"transfer-encoding", b"chunked")]))
    codec.send_data(1, b"abc")
    codec.send_trailers(1, [(b"x", b"y")])
    assert codec.data_to_send() == (
        b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx: y\r\n\r\n"
    )
    codec = Http1Codec("client")
    codec.send_head(RequestHead(1, b"PUT", b"/", b"h", [], end_stream=True))
    assert codec.data_to_send() == b"PUT / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
    codec = Http1Codec("client")
    codec.send_head(RequestHead(codec.next_stream_id(), b"POST", b"/", b"h", [], content_length=2))
    codec.send_data(1, b"hi", end_stream=True)
    assert codec.data_to_send() == b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\nhi"
    codec = Http1Codec("client")  # a Content-Length field is honoured when the head has no length
    codec.send_head(RequestHead(1, b"POST", b"/", b"h", [(b"content-length", b" 3")]))
    codec.send_data(1, b"abc", end_stream=True)
    assert codec.data_to_send() == b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc"


def test_client_parses_responses_in_order() -> None:
    codec = client_with(get(sid=1, end_stream=True), get(sid=2, end_stream=True))
    events = coalesce(codec.receive_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nyo\r\n0\r\nT: 1\r\n\r\n"
    ))
    assert events == [
        ResponseHead(1, 200, [(b"content-length", b"2")], reason=b"OK", content_length=2),
        Data(1, b"hi"),
        EndStream(1),
        ResponseHead(2, 200, [(b"transfer-encoding", b"chunked")], reason=b"OK"),
        Data(2, b"yo"),
        Trailers(2, [(b"t", b"1")]),
        EndStream(2),
    ]
    assert not codec.should_close


def test_client_head_and_no_body_statuses() -> None:
    codec = client_with(
        RequestHead(1, b"HEAD", b"/", b"h", [], end_stream=True), get(sid=2, end_stream=True), get(sid=3, end_stream=True)
    )
    events = codec.receive_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert [(h.stream_id, h.status, h.end_stream, h.content_length) for h in heads] == [
        (1, 200, True, 10), (2, 304, True, 10), (3, 204, True, None),
    ]
    assert [e for e in events if isinstance(e, EndStream)] == [EndStream(1), EndStream(2), EndStream(3)]


def test_client_informational_then_final() -> None:
    codec = client_with(get(end_stream=True))
    events = codec.receive_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert [(type(e).__name__, getattr(e, "status", None)) for e in events] == [
        ("ResponseHead", 100), ("ResponseHead", 103), ("ResponseHead", 200), ("EndStream", None),
    ]


def test_client_close_delimited_body_and_http10() -> None:
    codec = client_with(get(end_stream=True))
    events = codec.receive_data(b"HTTP/1.0 200 OK\r\n\r\npart1")
    assert events[0].keep_alive is False and events[0].http_version == "1.0"
    assert codec.receive_data(b"part2") == [Data(1, b"part2")]
    assert codec.receive_eof() == [EndStream(1), ConnectionEnded()]
    assert codec.should_close


def test_client_connection_close_response() -> None:
    codec = client_with(get(end_stream=True))
    (head, _, _) = codec.receive_data(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    assert head.keep_alive is False and codec.should_close


def test_client_eof_before_response_resets() -> None:
    codec = client_with(get(end_stream=True))
    assert codec.receive_eof() == [Reset(1, CANCEL), ConnectionEnded()]
    codec = client_with(get(end_stream=True))
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-")
    assert [type(e) for e in codec.receive_eof()] == [ProtocolError, ConnectionEnded]
    codec = client_with(get(end_stream=True))
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    assert codec.receive_eof() == [Reset(1, CANCEL), ConnectionEnded()]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # never asked for
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,
    b"SSH-2.0-OpenSSH\r\n\r\n",
])
def test_client_broken_response_framing_is_502(raw: bytes) -> None:
    codec = client_with(get(end_stream=True))
    events = codec.receive_data(raw)
    assert [type(e) for e in events] == [ProtocolError]
    assert events[0].status == 502 and events[0].stream_id == 1
    assert codec.should_close


def test_client_invalid_chunk_is_502() -> None:
    codec = client_with(get(end_stream=True))
    events = codec.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502


def test_client_unsolicited_response_is_502() -> None:
    codec = Http1Codec("client")
    (err,) = codec.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    assert isinstance(err, ProtocolError) and err.status == 502 and err.stream_id is None


def test_client_upgrade_and_connect_tunnels() -> None:
    codec = Http1Codec("client")
    codec.send_head(RequestHead(1, b"GET", b"/ws", b"h", [(b"host", b"h")], upgrade=b"websocket"))
    assert codec.data_to_send() == (
        b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )
    events = codec.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframe")
    assert [type(e) for e in events] == [ResponseHead, Data] and events[1] == Data(1, b"frame")
    codec.send_data(1, b"raw")
    assert codec.data_to_send() == b"raw"
    codec = Http1Codec("client")
    codec.send_head(RequestHead(1, b"CONNECT", b"db:5432", b"db:5432", [(b"host", b"db:5432")], upgrade=b"connect"))
    assert codec.data_to_send() == b"CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n"
    events = codec.receive_data(b"HTTP/1.1 200 Connection Established\r\n\r\n\x00")
    assert events[1:] == [Data(1, b"\x00")]
    assert codec.receive_eof() == [EndStream(1), ConnectionEnded()]


# === arbitrary chunking ===

SERVER_INPUT = (
    b"GET /1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
    b"\r\nPUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;a=b\r\n\r\n\r\n\r\n2\r\n\r\n\r\n6\r\n\r\n\r\n\r\n\r\n0\r\nT-A: 1\r\nT-B: 2\r\n\r\n"
    b"POST /4 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"GET /5 HTTP/1.0\r\n\r\n"
)
CLIENT_INPUT = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n\r\n\r\n\r\n\r\n0\r\nX: y\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def _client_events(chunks: list[bytes]) -> list:
    codec = Http1Codec("client")
    for sid in (1, 2, 3):
        codec.send_head(get(sid=sid, end_stream=True))
    events: list = []
    for chunk in chunks:
        events += codec.receive_data(chunk)
    return coalesce(events + codec.receive_eof())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_server_chunking_does_not_change_events(cuts: list[int]) -> None:
    expected = server_events(SERVER_INPUT)
    assert [type(e).__name__ for e in expected].count("RequestHead") == 5
    assert server_events(*_split(SERVER_INPUT, cuts)) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_client_chunking_does_not_change_events(cuts: list[int]) -> None:
    expected = _client_events([CLIENT_INPUT])
    assert expected[-2:] == [EndStream(3), ConnectionEnded()]
    assert _client_events(_split(CLIENT_INPUT, cuts)) == expected


def test_every_single_byte_split_of_a_chunked_body() -> None:
    expected = server_events(SERVER_INPUT)
    assert server_events(*[SERVER_INPUT[i : i + 1] for i in range(len(SERVER_INPUT))]) == expected


# === client and server codecs talking to each other ===


class ConnectionPair:
    """A client-role codec wired to a server-role codec (h11 ``ConnectionPair`` style)."""

    def __init__(self) -> None:
        self.client = Http1Codec("client")
        self.server = Http1Codec("server")

    def to_server(self) -> list:
        return coalesce(self.server.receive_data(self.client.data_to_send()))

    def to_client(self) -> list:
        return coalesce(self.client.receive_data(self.server.data_to_send()))


@pytest.mark.parametrize("body, trailers", [([], None), ([b"a", b"bc"], None), ([b"x" * 70000], [(b"t", b"1")])])
def test_round_trip(body: list[bytes], trailers: list | None) -> None:
    pair = ConnectionPair()
    headers = [(b"host", b"svc"), (b"x-b3", b"abc")]
    pair.client.send_head(RequestHead(1, b"POST", b"/p?q", b"svc", headers, end_stream=not body))
    for part in body:
        pair.client.send_data(1, part)
    if trailers:
        pair.client.send_trailers(1, trailers)
    else:
        pair.client.send_end(1)
    events = pair.to_server()
    head = events[0]
    assert (head.method, head.target, head.authority, head.headers[:2]) == (b"POST", b"/p?q", b"svc", headers)
    data = b"".join(e.data for e in events if isinstance(e, Data))
    assert data == b"".join(body)
    assert events[-1] == EndStream(1)
    if trailers:
        assert events[-2] == Trailers(1, trailers)

    pair.server.send_head(ResponseHead(1, 201, [(b"server", b"up")]))
    pair.server.send_data(1, b"created")
    pair.server.send_trailers(1, [(b"grpc-status", b"0")])
    events = pair.to_client()
    assert events == [
        ResponseHead(1, 201, [(b"server", b"up"), (b"transfer-encoding", b"chunked")], reason=b"Created"),
        Data(1, b"created"),
        Trailers(1, [(b"grpc-status", b"0")]),
        EndStream(1),
    ]
    assert not pair.client.should_close and not pair.server.should_close


def test_round_trip_keep_alive_many_requests() -> None:
    pair = ConnectionPair()
    for _ in range(5):
        sid = pair.client.next_stream_id()
        pair.client.send_head(get(b"/k", sid=sid, end_stream=True))
        (head, end) = pair.to_server()
        assert head.stream_id == sid and end == EndStream(sid)
        answered(pair.server, ResponseHead(sid, 200, [], content_length=2), b"ok")
        pair.client.receive_data(pair.server.data_to_send())
    assert not pair.server.should_close


# === peer input never raises ===


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([SERVER_INPUT, WS + b"data", PIPELINE] + [raw for raw, _ in HOSTILE if len(raw) < 400]),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=6),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_server_mutated_input_never_raises(base: bytes, edits: list, cuts: list[int]) -> None:
    data = bytearray(base)
    for pos, repl in edits:
        pos %= len(data) + 1
        data[pos : pos + len(repl)] = repl
    codec = Http1Codec("server")
    events: list = []
    for chunk in _split(bytes(data), cuts):
        events += codec.receive_data(chunk)
    events += codec.receive_eof()
    heads = [e.stream_id for e in events if isinstance(e, RequestHead)]
    assert heads == list(range(1, len(heads) + 1))
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert len(errors) <= 1
    if errors:  # nothing is emitted after a protocol error but the connection's end
        assert all(isinstance(e, ConnectionEnded) for e in events[events.index(errors[0]) + 1 :])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=6),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_client_mutated_input_never_raises(edits: list, cuts: list[int]) -> None:
    data = bytearray(CLIENT_INPUT)
    for pos, repl in edits:
        pos %= len(data) + 1
        data[pos : pos + len(repl)] = repl
    _client_events(_split(bytes(data), cuts))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["server", "client"]))
def test_random_bytes_never_raise(data: bytes, role: str) -> None:
    codec = Http1Codec(role)
    if role == "client":
        codec.send_head(get(end_stream=True))
    codec.receive_data(data)
    codec.receive_eof()
