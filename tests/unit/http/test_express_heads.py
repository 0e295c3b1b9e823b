"""``http/express_heads.py`` against the general path's helpers, without sockets.

``plain_request`` must render exactly what header hygiene + the Host rule + the
HTTP/1 client codec render for the same head (or decline); ``plain_response``
must keep exactly the lines ``clean_response`` + ``render_fields`` keep and read
the same framing as ``inspect_response`` / ``keep_alive`` (or decline). Both read
raw field lines (any name case, blanks around the value) through a memo, so each
case is checked twice: the first reading classifies the lines, the second comes
from the memo.
"""

from __future__ import annotations

import os
import random

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codec._http1_checks import SPECIAL, Reject, inspect_request, inspect_response, keep_alive
from meshproxy.codec.events import RequestHead
from meshproxy.codec.http1 import Http1Codec
from meshproxy.http import headers as hdr
from meshproxy.http import express_heads
from meshproxy.http.express_heads import (fields_of, head_lines, known_response, plain_request, plain_response,
                                          remember_start, split_field_line)
from meshproxy.upstream.express import _clean_lines

NAMES = [b"host", b"content-length", b"connection", b"keep-alive", b"proxy-connection", b"x-request-id",
         b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-client-cert", b"te", b"upgrade", b"expect",
         b"transfer-encoding", b"content-type", b"x-meshproxy-flag", b"accept", b"user-agent", b"x_under",
         b"cookie", b"grpc-status", b"x-b3-traceid"]
VALUES = [b"", b"h", b"svc.local:8080", b"0", b"5", b"007", b"close", b"keep-alive", b"Keep-Alive", b"x-secret",
          b"chunked", b"gzip, chunked", b"trailers", b"100-continue", b"application/grpc", b"text/plain",
          b"1.2.3.4", b"https", b"abc", b"12 "]

PLAIN_NAMES = [b"content-length", b"connection", b"keep-alive", b"x-request-id", b"x-forwarded-for",
               b"x-forwarded-proto", b"x-forwarded-client-cert", b"content-type", b"accept", b"cookie",
               b"x-meshproxy-flag"]
PLAIN_VALUES = [b"", b"0", b"5", b"007", b"close", b"keep-alive", b"Keep-Alive", b"text/plain", b"1.2.3.4",
                b"https", b"abc"]
fields_st = st.one_of(
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8),
    st.lists(st.tuples(st.sampled_from(PLAIN_NAMES), st.sampled_from(PLAIN_VALUES)), max_size=8),
)


def raw_lines(fields, seed, trailing=True):
    """The fields as a client might write them: names in any case, blanks around values
    (after them only when ``trailing``)."""
    rnd = random.Random(seed)
    out = []
    for k, v in fields:
        name = bytes(c ^ 0x20 if 97 <= c <= 122 and rnd.random() < 0.3 else c for c in k)
        out.append(name + b":" + rnd.choice([b"", b" ", b"  ", b"\t"]) + v + (rnd.choice([b"", b" ", b"\t "]) if trailing else b""))
    return out


def general_request(method, target, fields, inbound, seed):
    """What the general path sends upstream for this head (None where it would not send it as is)."""
    special = [f for f in fields if f[0] in SPECIAL]
    head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
    try:
        authority, scheme, cl, chunked, upgrade, expect = inspect_request(
            method, target, "1.1", fields, special, head, Http1Codec().limits)
    except Reject:
        return None
    if chunked or upgrade is not None or expect:
        return None
    req = RequestHead(1, method, target, authority, list(fields), "1.1", scheme, keep_alive("1.1", special),
                      None, False, not cl, cl)
    random.seed(seed)
    rid = hdr.clean_request(req, direction="inbound" if inbound else "outbound", peer_ip="10.0.0.9", scheme="http")
    hdr.to_http1_request(req)
    codec = Http1Codec("client")
    codec.send_head(req)
    return codec.data_to_send(), rid, authority, cl or 0, req.keep_alive


@pytest.fixture(autouse=True)
def _restore_random():
    """Tests seed the ``random`` module, whose ``getrandbits`` makes request ids (in Python and in C)."""
    saved = random.getstate()
    yield
    random.setstate(saved)


@settings(max_examples=600, deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE"]),
       target=st.sampled_from([b"/", b"/a?b=c", b"/x/y"]), fields=fields_st, inbound=st.booleans(),
       seed=st.integers(0, 1000))
def test_plain_request_renders_what_the_general_path_renders(method, target, fields, inbound, seed):
    fields = [(b"host", b"h")] + fields if random.Random(seed).random() < 0.8 else fields
    random.seed(seed)
    body = sum(1 for k, _ in fields if k == b"content-length")
    cl = next((int(v) for k, v in fields if k == b"content-length" and v.strip().isdigit()), 0)
    # a head is only offered when its Host passed the codec once (``_GOOD_HOSTS``)
    for k, v in fields:
        if k == b"host":
            try:
                inspect_request(b"GET", b"/", "1.1", [], [(b"host", v)], b"", Http1Codec().limits)
            except Reject:
                pass
    lines = raw_lines(fields, seed)
    # what the parser reports for these lines is what the general path works on; a head the
    # parser refuses never reaches plain_request (the lane hands it over)
    try:
        fields = fields_of(b"GET / HTTP/1.1\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n",
                           httptools.HttpRequestParser)
    except httptools.HttpParserError:
        return
    random.seed(seed)
    fast = plain_request(method, target, lines, inbound, b"10.0.0.9", False, cl if body else 0)
    random.seed(seed)
    again = plain_request(method, target, lines, inbound, b"10.0.0.9", False, cl if body else 0)
    assert fast == again  # the second reading comes from the memo
    if fast is None:
        return
    assert fast == general_request(method, target, fields, inbound, seed)


def test_plain_request_takes_the_common_heads():
    random.seed(1)
    for fields in ([(b"host", b"h")], [(b"host", b"h"), (b"user-agent", b"x"), (b"accept", b"*/*")],
                   [(b"host", b"h"), (b"connection", b"keep-alive"), (b"x-request-id", b"r1")],
                   [(b"host", b"h"), (b"content-type", b"application/json"), (b"content-length", b"2")]):
        cl = 2 if (b"content-length", b"2") in fields else 0
        assert plain_request(b"POST", b"/", raw_lines(fields, 1, False), False, b"1.1.1.1", False, cl) is not None


@pytest.mark.parametrize("fields", [
    [(b"host", b"h"), (b"transfer-encoding", b"chunked")],
    [(b"host", b"h"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
    [(b"host", b"h"), (b"expect", b"100-continue")],
    [(b"host", b"h"), (b"te", b"trailers")],
    [(b"host", b"h"), (b"connection", b"close, x-secret")],
    [(b"host", b"h"), (b"host", b"h")],
    [(b"accept", b"*/*")],
    [(b"host", b"h"), (b"content-type", b"application/grpc")],
    [(b"host", b"h"), (b"x_under", b"1")],
    [(b"host", b"h"), (b"content-length", b"1x")],
])
def test_plain_request_declines_what_needs_the_general_rules(fields):
    inspect_request(b"GET", b"/", "1.1", [], [(b"host", b"h")], b"", Http1Codec().limits)  # Host h is known
    assert plain_request(b"GET", b"/", raw_lines(fields, 2), False, b"1.1.1.1", False, 0) is None
    assert plain_request(b"GET", b"/", raw_lines(fields, 2), False, b"1.1.1.1", False, 0) is None  # memo


def test_plain_request_declines_a_body_that_is_not_all_there():
    inspect_request(b"GET", b"/", "1.1", [], [(b"host", b"h")], b"", Http1Codec().limits)
    lines = [b"Host: h", b"Content-Length: 5"]
    assert plain_request(b"POST", b"/", lines, False, b"1.1.1.1", False, 3) is None
    assert plain_request(b"POST", b"/", lines, False, b"1.1.1.1", False, 9) is None  # another request follows
    assert plain_request(b"POST", b"/", lines, False, b"1.1.1.1", False, 5) is not None


RESPONSE_NAMES = [b"content-length", b"connection", b"transfer-encoding", b"keep-alive", b"proxy-connection",
                  b"te", b"upgrade", b"x-meshproxy-response-flags", b"grpc-status", b"server", b"date",
                  b"content-type", b"x-up", b"set-cookie"]


@settings(max_examples=600, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from(RESPONSE_NAMES), st.sampled_from(VALUES)), max_size=8),
       status=st.sampled_from([200, 204, 304, 404]))
def test_plain_response_keeps_what_the_general_path_keeps(fields, status):
    lines = raw_lines(fields, status)
    try:
        fields = fields_of(b"HTTP/1.1 200 OK\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n",
                           httptools.HttpResponseParser)
    except httptools.HttpParserError:
        return  # never reaches plain_response
    fast = plain_response(lines)
    assert plain_response(lines) == fast  # the second reading comes from the memo
    if fast is None:
        return
    lines, cl, chunked, keep, grpc = fast
    special = [f for f in fields if f[0] in SPECIAL]
    assert (cl, chunked) == inspect_response("1.1", special)
    assert keep == keep_alive("1.1", special)
    exact_lines, exact_grpc = _clean_lines(status, fields)
    assert b"".join(lines) == b"".join(exact_lines)
    assert grpc == exact_grpc


def test_plain_response_takes_nginx_heads_and_declines_odd_ones():
    nginx = [b"Server: nginx", b"Date: x", b"Content-Type: text/plain", b"Content-Length: 1013",
             b"Connection: keep-alive"]
    assert plain_response(nginx) == ([b"server: nginx\r\n", b"date: x\r\n", b"content-type: text/plain\r\n",
                                      b""], 1013, False, True, None)
    assert plain_response([b"Connection: keep-alive, x-up", b"X-Up: 1"]) is None
    assert plain_response([b"Transfer-Encoding: gzip, chunked"]) is None
    assert plain_response([b"Transfer-Encoding: chunked", b"Content-Length: 1"]) is None
    assert plain_response([b"Content-Length: 1", b"Content-Length: 1"]) is None


@pytest.mark.parametrize("line", [b" folded", b"\tfolded", b"A: b\nC: d", b"A: b\rC", b"no-colon", b": v", b""])
def test_a_line_that_is_not_exactly_one_field_is_declined(line):
    assert split_field_line(line) is None
    assert plain_response([b"Server: x", line]) is None
    inspect_request(b"GET", b"/", "1.1", [], [(b"host", b"h")], b"", Http1Codec().limits)
    assert plain_request(b"GET", b"/", [b"Host: h", line], False, b"1.1.1.1", False, 0) is None


def test_lines_read_as_the_parser_reads_fields():
    head = (b"HTTP/1.1 200 OK\r\nServer:  nginx \r\nX-Empty:\r\nContent-Length: 0\r\n"
            b"Set-Cookie: a=b; Path=/\r\n\r\n")
    start, lines = head_lines(head)
    assert start == b"HTTP/1.1 200 OK"
    assert [split_field_line(x) for x in lines] == fields_of(head, httptools.HttpResponseParser)
    assert lines == [b"Server:  nginx ", b"X-Empty:", b"Content-Length: 0", b"Set-Cookie: a=b; Path=/"]
    assert split_field_line(lines[0]) == (b"server", b"nginx ")  # as httptools reports it


def test_the_memo_is_bounded_and_never_keeps_request_ids():
    express_heads._REQ_MEMO.clear()
    inspect_request(b"GET", b"/", "1.1", [], [(b"host", b"h")], b"", Http1Codec().limits)
    for i in range(express_heads._MEMO_MAX + 10):
        out = plain_request(b"GET", b"/", [b"Host: h", b"X-Request-Id: r%d" % i, b"X-N: %d" % i], False,
                            b"1.1.1.1", False, 0)
        assert out is not None and out[1] == b"r%d" % i
        assert b"x-n: %d\r\n" % i in out[0]
    assert len(express_heads._REQ_MEMO) <= express_heads._MEMO_MAX
    assert not any(k.lower().startswith(b"x-request-id") for k in express_heads._REQ_MEMO)


def test_known_response_needs_a_start_line_and_every_field_line_seen_before():
    express_heads._START_MEMO.clear()
    express_heads._RESP_MEMO.clear()
    start = b"HTTP/1.1 200 OK"
    nginx = [b"Server: nginx", b"Date: x", b"Content-Length: 3", b"Connection: keep-alive"]
    assert known_response(start, nginx) is None  # nothing seen yet
    plain = plain_response(nginx)
    assert known_response(start, nginx) is None  # the lines are known, the start line is not
    remember_start(start, 200)
    assert known_response(start, nginx) == (200, plain)
    assert known_response(b"HTTP/1.1 200 Fine", nginx) is None
    assert known_response(start, nginx + [b"X-New: 1"]) is None
    assert b"X-New: 1" not in express_heads._RESP_MEMO  # a head not yet parsed teaches the memo nothing
    # what plain_response checks across lines still applies to known lines
    assert known_response(start, nginx + [b"Content-Length: 3"]) is None
    plain_response([b"Transfer-Encoding: chunked"])
    assert known_response(start, [b"Transfer-Encoding: chunked", b"Content-Length: 3"]) is None
    assert known_response(start, [b"Connection: keep-alive, x-up"]) is None  # remembered as odd


class _Call:
    """The express lane's downstream side, as an upstream ExpressConnection sees it."""

    def __init__(self):
        self.starts = []
        self.failures = []

    def response_start(self, status, reason, lines, grpc, cl, chunked, body, ended):
        self.starts.append((status, reason, b"".join(lines), cl, body, ended))

    def response_body(self, data, ended, trailers=None):
        self.starts.append((data, ended))

    def upstream_failed(self, kind, message):
        self.failures.append((kind.flag, message))


class _Flusher:
    """``net.flush.Flusher`` stand-in: marked connections are flushed when the test says."""

    def __init__(self):
        self.marked = []

    def mark(self, conn):
        conn.dirty = True
        self.marked.append(conn)

    def run(self):
        marked, self.marked = self.marked, []
        for conn in marked:
            conn.dirty = False
            conn.flush()


class _Pool:
    def __init__(self):
        self.released = []
        self.flusher = _Flusher()

    def release(self, conn):
        self.released.append(conn)

    def forget(self, conn):
        pass


class _Transport:
    def __init__(self):
        self.log = []

    def write(self, data):
        self.log.append(data)

    def abort(self):
        self.log.append("abort")

    def close(self):
        self.log.append("close")


def _upstream():
    from meshproxy.upstream.express import ExpressConnection
    conn = ExpressConnection(None, _Pool())
    conn.connection_made(_Transport())
    return conn


GOOD = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def test_a_response_head_of_known_lines_skips_the_parser(monkeypatch):
    from meshproxy.upstream import express as up_express
    conn, call = _upstream(), _Call()
    conn.send(call, b"GET / HTTP/1.1\r\n\r\n", False)
    conn.data_received(GOOD)  # parsed: its lines are remembered
    assert call.starts[-1] == (200, b"OK", b"server: s\r\ncontent-type: text/plain\r\n", 2, b"ok", True)

    def no_parser(*a):
        raise AssertionError("parsed a head made of known lines")

    monkeypatch.setattr(up_express, "HttpResponseParser", no_parser)
    conn.send(call, b"GET / HTTP/1.1\r\n\r\n", False)
    conn.data_received(GOOD)
    assert call.starts[-1] == (200, b"OK", b"server: s\r\ncontent-type: text/plain\r\n", 2, b"ok", True)
    assert not call.failures and len(conn.pool.released) == 2


def test_upstream_writes_wait_for_the_end_of_the_loop_turn():
    """``send`` queues the request; the flusher's end-of-turn run writes it (one write for
    what the turn queued); ``close`` writes what is queued first; ``abandon`` drops it."""
    conn = _upstream()
    conn.send(_Call(), b"GET /a HTTP/1.1\r\n\r\n", False)
    assert conn.transport.log == [] and conn.pool.flusher.marked == [conn]
    conn.pool.flusher.run()
    assert conn.transport.log == [b"GET /a HTTP/1.1\r\n\r\n"] and not conn.dirty
    conn.call = None
    conn.send(_Call(), b"GET /b HTTP/1.1\r\n\r\n", False)
    conn.close()
    assert conn.transport.log[1:] == [b"GET /b HTTP/1.1\r\n\r\n", "close"]
    conn.pool.flusher.run()  # nothing more after the close
    assert len(conn.transport.log) == 3
    conn = _upstream()
    conn.send(_Call(), b"GET /c HTTP/1.1\r\n\r\n", False)
    conn.abandon()
    conn.pool.flusher.run()
    assert conn.transport.log == ["abort"]


@pytest.mark.parametrize("bad", [
    GOOD.replace(b"Server: s", b"Bad Name: s"),  # a space in a name
    GOOD.replace(b"Server: s", b"Server: s\x01"),  # a control byte in a value
    GOOD.replace(b"200 OK", b"2x0 OK"),  # a broken status line, every field line known
    GOOD.replace(b"HTTP/1.1 200", b"HTTP/9.9 200"),
    GOOD.replace(b"Server: s\r\n", b"Server: s\r\n folded\r\n"),
    GOOD.replace(b"Server: s\r\n", b"Content-Length: 2\r\n"),  # known lines, a duplicate Content-Length
])
def test_a_bad_response_head_fails_after_good_ones_taught_the_memo(bad):
    warm, call = _upstream(), _Call()
    warm.send(call, b"GET / HTTP/1.1\r\n\r\n", False)
    warm.data_received(GOOD)
    assert not call.failures
    conn, call = _upstream(), _Call()
    conn.send(call, b"GET / HTTP/1.1\r\n\r\n", False)
    conn.data_received(bad)
    assert [f for f, _ in call.failures] == ["UPE"], (call.starts, call.failures)
    assert conn.closed and not conn.pool.released


START_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 404 Nope",
               b"HTTP/1.1 500 ", b"HTTP/1.1 302 Found"]
FIELD_LINES = [b"Server: s", b"Content-Length: 0", b"Content-Length: 5", b"content-length:7 ",
               b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Connection: close",
               b"Connection: keep-alive", b"Connection: Upgrade", b"Upgrade: h2c", b"Keep-Alive: timeout=5",
               b"Content-Type: text/plain", b"grpc-status: 0", b"X-Meshproxy-Flags: UF", b"Trailer: x",
               b"Set-Cookie: a=b; Path=/", b"X-Empty:", b"Via:  1.1 p \t", b"X-Obs: caf\xe9"]


def _parser_accepts(head: bytes) -> bool:
    class Sink:
        def on_message_complete(self):
            pass

    try:
        httptools.HttpResponseParser(Sink()).feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(start=st.sampled_from(START_LINES), picks=st.lists(st.sampled_from(FIELD_LINES), max_size=6))
def test_what_known_response_takes_the_parser_takes_and_reads_the_same(start, picks):
    """The memo is taught the way ``ExpressConnection`` teaches it (only lines of heads the parser
    accepted); any head ``known_response`` then takes, the parser takes too, and it is read
    exactly as the parser path reads it."""
    express_heads._START_MEMO.clear()
    express_heads._RESP_MEMO.clear()
    for s in START_LINES:
        for line in FIELD_LINES:
            if _parser_accepts(s + b"\r\n" + line + b"\r\n\r\n"):
                if plain_response([line]) is not None:
                    remember_start(s, int(s[9:12]))
    head = start + b"\r\n" + b"".join(x + b"\r\n" for x in picks) + b"\r\n"
    got_start, lines = head_lines(head)
    known = known_response(got_start, lines)
    if known is None:
        return
    assert _parser_accepts(head), head
    status, plain = known
    assert status == int(start[9:12])
    assert plain == plain_response(lines)


# === the C loops (codec/_ngfast.c) against the Python reference ===

TAKEN_FIELDS = [(b"accept", b"*/*"), (b"user-agent", b"x"), (b"cookie", b"a=1"), (b"content-type", b"text/plain"),
                (b"x-request-id", b"abc"), (b"x-request-id", b""), (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-for", b"1.2.3.4"), (b"keep-alive", b"5"), (b"x-meshproxy-flag", b"1"),
                (b"connection", b"keep-alive"), (b"connection", b"close"), (b"content-length", b"5"),
                (b"content-length", b"0"), (b"x_under", b"1"), (b"x-forwarded-client-cert", b"By=x")]
"""Fields the lane takes (some only inbound, outbound or with underscores allowed)."""

needs_c = pytest.mark.skipif(express_heads._fast is None and not os.environ.get("CI"),
                             reason="meshproxy.codec._ngfast not built here")


@needs_c
@settings(max_examples=600, deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"HEAD"]), fields=st.one_of(
           fields_st, st.lists(st.sampled_from(TAKEN_FIELDS), max_size=6), st.lists(st.sampled_from(TAKEN_FIELDS), max_size=6)),
       inbound=st.booleans(), underscores=st.booleans(), seed=st.integers(0, 1000), extra=st.sampled_from(
           [b"", b"x-forwarded-client-cert: By=a\r\n"]), odd_length=st.booleans())
def test_the_c_request_loop_matches_python(method, fields, inbound, underscores, seed, extra, odd_length):
    assert express_heads._fast is not None, "CI: _ngfast must be built"
    # the Host value has passed the codec once (``_GOOD_HOSTS``), as on the lane
    inspect_request(b"GET", b"/", "1.1", [], [(b"host", b"svc.local:8080")], b"", Http1Codec().limits)
    fields = [(b"host", b"svc.local:8080")] + fields if seed % 5 else fields
    lines = raw_lines(fields, seed, trailing=seed % 3 == 0)  # trailing blanks: an unseen Host, declined
    declared = [v.strip() for k, v in fields if k == b"content-length"]
    available = int(declared[0]) if declared and declared[0].isdigit() and not odd_length else 5 * odd_length
    args = (method, b"/p", lines, inbound, b"10.0.0.9", underscores, available, b"https", extra)
    random.seed(seed)
    got = express_heads._fast.plain_request(*args)
    random.seed(seed)
    assert got == express_heads.plain_request_py(*args)
    TAKEN[got is not None] += 1


TAKEN = [0, 0]
"""How many generated requests the loops declined and took (checked below)."""


@needs_c
def test_the_c_request_loop_comparison_saw_taken_heads():
    assert TAKEN[1] >= 20, TAKEN  # the comparison above was not only of declines


@needs_c
@settings(max_examples=600, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from(RESPONSE_NAMES + NAMES), st.sampled_from(VALUES)), max_size=8),
       seed=st.integers(0, 1000), known_only=st.booleans())
def test_the_c_response_loop_matches_python(fields, seed, known_only):
    assert express_heads._fast is not None, "CI: _ngfast must be built"
    lines = raw_lines(fields, seed)
    got = express_heads._fast.plain_response(lines, known_only)
    assert got == express_heads.plain_response_py(lines, known_only)


@needs_c
def test_the_c_loops_hand_odd_input_back_and_leak_nothing(memory_growth):
    fast = express_heads._fast
    for lines in ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                  [b"Content-Length: 1", b"Content-Length: 1"], [b"Transfer-Encoding: chunked", b"Content-Length: 1"],
                  [b"grpc-status: 1", b"grpc-status: 2"], [b"Connection: close", b"Transfer-Encoding: chunked"]):
        assert fast.plain_response(lines, False) == express_heads.plain_response_py(lines)
    assert fast.plain_response([b"Transfer-Encoding: chunked"] * 2, False) is None
    # input that is not a list of exact bytes runs the Python reference, whatever it makes of it
    calls = []
    real_response_py = express_heads.plain_response_py

    def spy(*args):
        calls.append(args)
        return real_response_py(*args)

    fast.express_setup(express_heads._REQ_MEMO, express_heads._RESP_MEMO, express_heads._request_line,
                       express_heads._response_line, express_heads.new_request_id,
                       express_heads.plain_request_py, spy)
    try:
        assert fast.plain_response((b"Server: x",), False) == ([b"server: x\r\n"], None, False, True, None)
        with pytest.raises(TypeError):  # the reference's own answer to a line that is not bytes
            fast.plain_response([bytearray(b"Server: x")])
        assert len(calls) == 2
    finally:
        express_heads._load_fast()
    with pytest.raises(TypeError):  # the reference's own error: a str peer address is not bytes
        fast.plain_request(b"GET", b"/", [b"Host: h"], True, "1.1.1.1", False, 0, b"http", b"")
    assert fast.plain_request(b"GET", b"/", [b"Host: svc.local:8080"], False, b"1.1.1.1", False, 0)[2:] == \
        (b"svc.local:8080", 0, True)  # scheme and extra default as in Python
    nginx = [b"Server: nginx", b"Date: x", b"Content-Length: 3", b"Connection: close", b"grpc-status: 0"]
    req = [b"Host: svc.local:8080", b"X-Request-Id: abc", b"x_u: 1", b"Content-Length: 2", b"X-Forwarded-Proto: h"]
    cases = [lambda: fast.plain_response(nginx, False), lambda: fast.plain_response(nginx + [b"TE: x"], True),
             lambda: fast.plain_request(b"POST", b"/", req, False, b"1.1.1.1", True, 2, b"http", b""),
             lambda: fast.plain_request(b"POST", b"/", req, True, b"1.1.1.1", True, 2, b"http", b""),
             lambda: fast.plain_request(b"GET", b"/", req[:1], True, b"1.1.1.1", False, 0, b"http", b"x: y\r\n")]
    grown = memory_growth(cases, 3000)
    assert grown < 50_000, grown
