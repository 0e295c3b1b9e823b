"""The nghttp2 codec's optional C helpers (``codec/_ngfast.c``): built where CI
runs, used by default, and exactly what the pure-cffi path does at the edges
(never-indexed fields, long header lists, non-bytes fields, the hard header
limit, callbacks called outside ``recv``, a freed session).

The codec's behaviour as a whole runs with and without them in test_http2.py
(backends ``nghttp2`` and ``nghttp2-cffi``)."""

from __future__ import annotations

import os

import pytest
from hpack import Decoder
from hyperframe.frame import HeadersFrame, SettingsFrame

from h2helpers import ConnectionPair, RawServer, goaways, parse_frames, request_fields
from meshproxy.codec import _ng_ffi, http2
from meshproxy.codec.events import ENHANCE_YOUR_CALM, EndStream, ProtocolError, RequestHead, ResponseHead
from meshproxy.codec.http2 import Http2Limits

pytestmark = pytest.mark.skipif(not _ng_ffi.available(), reason="libnghttp2 not loadable here")


@pytest.fixture
def native(monkeypatch):
    """The bound helpers, with the nghttp2 backend as ``http2.Http2Codec``."""
    from meshproxy.codec import _ng_wire
    if _ng_wire.native is None:
        if os.environ.get("CI"):
            pytest.fail("meshproxy.codec._ngfast was not built (setup.py; needs gcc and Python headers)")
        pytest.skip("meshproxy.codec._ngfast not built here")
    monkeypatch.setattr(http2, "Http2Codec", http2.codec_class("nghttp2"))
    return _ng_wire.native


def test_codecs_use_the_helpers_unless_switched_off(native, monkeypatch):
    from meshproxy.codec import _ng_wire
    assert http2.Http2Codec("server")._fast is native.fast
    monkeypatch.setattr(_ng_wire, "native", None)
    assert http2.Http2Codec("client")._fast is None


def test_env_switch_turns_the_helpers_off(native):
    import subprocess
    import sys
    code = "from meshproxy.codec import _ng_wire; print(_ng_wire.native is None)"
    env = {**os.environ, "MESHPROXY_NGFAST": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def _decoded_heads(data: bytes) -> list:
    """(name, value, sensitive) of each HEADERS block in ``data`` (server output)."""
    decoder = Decoder()
    return [[(bytes(f[0]), bytes(f[1]), f.__class__.__name__ == "NeverIndexedHeaderTuple")
             for f in decoder.decode(fr.data, raw=True)]
            for fr in parse_frames(data) if isinstance(fr, HeadersFrame)]


def test_sensitive_fields_go_out_never_indexed(native):
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    raw.codec.send_head(ResponseHead(1, 200, [(b"authorization", b"s3cret"), (b"x-plain", b"v")],
                                     end_stream=True))
    (block,) = _decoded_heads(raw.codec.data_to_send())
    assert (b"authorization", b"s3cret", True) in block and (b"x-plain", b"v", False) in block


def test_header_lists_longer_than_the_stack_array_round_trip(native):
    """More than the 64 fields _ngfast packs on the stack: the heap path, both ways."""
    pair = ConnectionPair(Http2Limits(max_headers_count=200))
    extra = [(b"x-h%d" % i, b"v%d" % i) for i in range(150)]
    sid = pair.client.send_head(RequestHead(0, b"GET", b"/", b"svc", extra, end_stream=True))
    server_events, _ = pair.pump()
    (head,) = [e for e in server_events if isinstance(e, RequestHead)]
    assert [h for h in head.headers if h[0].startswith(b"x-h")] == extra
    pair.server.send_head(ResponseHead(sid, 200, extra, end_stream=True))
    _, client_events = pair.pump()
    (resp,) = [e for e in client_events if isinstance(e, ResponseHead)]
    assert [h for h in resp.headers if h[0].startswith(b"x-h")] == extra
    assert any(isinstance(e, EndStream) for e in client_events)


def test_fields_that_are_not_bytes_fall_back_to_python_packing(native):
    fast = native.fast
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    with pytest.raises(TypeError):
        fast.submit_response(raw.codec._sa, 1, [(b":status", bytearray(b"200"))], None)
    with pytest.raises(TypeError):
        fast.submit_response(raw.codec._sa, 1, ((b":status", b"200"),), None)
    # the codec packs such a list in Python and sends it all the same
    raw.codec.send_head(ResponseHead(1, 200, [(b"x-a", bytearray(b"1"))], end_stream=True))
    (block,) = _decoded_heads(raw.codec.data_to_send())
    assert block == [(b":status", b"200", False), (b"x-a", b"1", False)]


def test_a_header_list_over_the_hard_limit_ends_the_connection(native):
    limits = Http2Limits(max_header_list_size=1024)
    raw = RawServer(limits)
    big = request_fields(extra=[(b"x-big-%d" % i, b"v" * 200) for i in range(12)])  # > 2 x 1024
    events = raw.feed(raw.ff.headers(1, big, end_stream=True))
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert errors and errors[0].error_code == ENHANCE_YOUR_CALM
    assert "header list larger than 2048 bytes" in errors[0].message
    (goaway,) = goaways(raw.drain())
    assert goaway.error_code == ENHANCE_YOUR_CALM


def test_collecting_callbacks_refuse_to_run_outside_recv(native):
    """Called by nghttp2 anywhere but inside ``recv`` they fail the call rather than
    touch a collector."""
    from meshproxy.codec._ng_wire import ffi
    cbs = native.fast.callbacks()
    on_header = ffi.cast("nghttp2_on_header_callback", cbs["on_header"])
    on_begin = ffi.cast("nghttp2_on_begin_headers_callback", cbs["on_begin_headers"])
    on_chunk = ffi.cast("nghttp2_on_data_chunk_recv_callback", cbs["on_data_chunk_recv"])
    assert on_header(ffi.NULL, ffi.NULL, b"a", 1, b"b", 1, 0, ffi.NULL) == -902
    assert on_begin(ffi.NULL, ffi.NULL, ffi.NULL) == -902
    assert on_chunk(ffi.NULL, 0, 1, b"x", 1, ffi.NULL) == -902
    on_frame = ffi.cast("nghttp2_on_frame_recv_callback", cbs["on_frame_recv"])
    on_close = ffi.cast("nghttp2_on_stream_close_callback", cbs["on_stream_close"])
    assert on_frame(ffi.NULL, ffi.NULL, ffi.NULL) == -902
    assert on_close(ffi.NULL, 1, 0, ffi.NULL) == -902
    on_read = ffi.cast("nghttp2_data_source_read_callback", cbs["data_source_read"])
    buf, flags = ffi.new("char[]", 16), ffi.new("uint32_t *")
    assert on_read(ffi.NULL, 1, buf, 16, flags, ffi.NULL, ffi.NULL) == -902


def test_a_failing_read_callback_ends_the_connection(native, caplog):
    """The data provider's read runs inside ``send``; a bug there is a connection error
    (INTERNAL_ERROR), never an exception through C."""
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    raw.drain()

    def broken(sid, length):
        raise RuntimeError("read boom")

    raw.codec._col = native.fast.Collector(2 * 65536, raw.codec._frame, raw.codec._closed, broken)
    raw.codec.send_head(ResponseHead(1, 200, []))
    raw.codec.send_data(1, b"body", True)
    with caplog.at_level("ERROR", logger="meshproxy.codec.http2"):
        raw.codec.data_to_send()
        events = raw.feed(b"")
    (error,) = [e for e in events if isinstance(e, ProtocolError)]
    assert error.message == "internal error: RuntimeError" and error.error_code == 0x2
    assert any(r.exc_info and r.exc_info[1].args == ("read boom",) for r in caplog.records)


def test_an_exception_in_the_codec_callbacks_ends_the_connection_and_is_logged(native, caplog, monkeypatch):
    """A bug in ``_frame``'s work never propagates into C: nghttp2 sees a callback
    failure, the codec ends the connection with INTERNAL_ERROR naming the exception,
    and the traceback is logged."""
    from meshproxy.codec import _ng_codec

    raw = RawServer()

    def broken(*args):
        raise RuntimeError("boom")

    # a module global, not a method: the compiled build calls its own methods directly
    monkeypatch.setattr(_ng_codec, "lift_request", broken)
    with caplog.at_level("ERROR", logger="meshproxy.codec.http2"):
        events = raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    (error,) = [e for e in events if isinstance(e, ProtocolError)]
    assert error.connection_fatal and error.message == "internal error: RuntimeError"
    (goaway,) = goaways(raw.drain())
    assert goaway.error_code == 0x2  # INTERNAL_ERROR
    assert any(r.exc_info and r.exc_info[1].args == ("boom",) for r in caplog.records)
    assert raw.codec._col.error is None  # taken, not kept for the next connection error


def test_a_codec_dropped_without_close_is_collected(native):
    """Codec -> collector -> the codec's bound methods is a cycle; the collector takes
    part in garbage collection, so a dropped codec (and its session) goes away."""
    import gc
    import weakref
    codec = http2.Http2Codec("server")
    codec.initiate()
    ref = weakref.ref(codec)
    del codec
    gc.collect()
    assert ref() is None


def test_a_freed_session_is_refused_not_touched(native):
    codec = http2.Http2Codec("server")
    codec.initiate()
    codec.close()
    assert codec._sa == 0
    with pytest.raises(ValueError, match="freed"):
        native.fast.send(codec._sa, codec._col)
    with pytest.raises(ValueError, match="freed"):
        native.fast.recv(codec._sa, b"x", codec._col)
    for call in (lambda: native.fast.consume(codec._sa, 1, 10), lambda: native.fast.want_read(codec._sa),
                 lambda: native.fast.submit_data(codec._sa, 1), lambda: native.fast.resume_data(codec._sa, 1),
                 lambda: native.fast.submit_whole(codec._sa, 1, [], b"x", codec._col)):
        with pytest.raises(ValueError, match="freed"):
            call()
    with pytest.raises(TypeError):
        native.fast.consume(codec._sa, 1)
    with pytest.raises(TypeError):
        native.fast.submit_whole(codec._sa, 1, [], b"x", None)  # not a Collector
    assert codec.receive_data(b"more") == []  # the codec itself never gets that far


def test_headers_and_data_frames_come_with_what_was_collected(native):
    """With ``on_headers``/``on_data`` given, HEADERS and DATA frames reach them with the
    fields and the joined chunks (no ``on_frame`` call, no ``take``/``data``); every other
    frame still goes to ``on_frame``. Without them (``on_frame`` only) the codec reads the
    same events."""
    runs = []
    for typed in (True, False):
        raw = RawServer()
        codec, calls = raw.codec, []

        def record(name, fn):
            def call(*args):
                calls.append((name, args[0]) if name == "frame" else (name, args[:3]))
                return fn(*args)
            return call

        extra = (record("headers", codec._headers_frame), record("data", codec._data_frame)) if typed else ()
        codec._col = native.fast.Collector(2 * 65536, record("frame", codec._frame), codec._closed, codec._read,
                                           *extra)
        events = raw.feed(raw.ff.headers(1, request_fields(method="POST"), end_stream=False)
                          + raw.ff.data(1, b"abc") + raw.ff.data(1, b"de", end_stream=True))
        runs.append(events)
        kinds = [c[0] for c in calls]
        if typed:
            assert ("headers", (1, 4, 0)) in calls and ("data", (1, 0, 3)) in calls and ("data", (1, 1, 2)) in calls
            assert all(c[1] not in (0, 1) for c in calls if c[0] == "frame")  # no DATA (0) or HEADERS (1) there
        else:
            assert set(kinds) == {"frame"}
    assert runs[0] == runs[1]
    assert [type(e).__name__ for e in runs[0]] == ["RequestHead", "Data", "Data", "EndStream"]


def test_collector_take_and_data_start_over(native):
    col = native.fast.Collector(100)
    assert col.take() == ([], 0) and col.data() == b"" and col.hard_limit == 100
    assert (col.over, col.failed) == (0, 0)


def test_many_streams_through_the_helpers_leave_nothing_behind(native, memory_growth):
    """Requests, responses with bodies and trailers, resets and GOAWAYs through a codec
    pair on the C callbacks leave no objects behind (a leaked reference per field, chunk
    or frame would keep thousands alive)."""
    from meshproxy.codec.events import Data

    def exchange(pair, i):
        sid = pair.client.send_head(RequestHead(0, b"POST", b"/x", b"svc", [(b"x-i", b"%d" % i)],
                                                end_stream=False))
        pair.client.send_data(sid, b"q" * 100, True)
        server_events, _ = pair.pump()
        for e in server_events:
            if isinstance(e, Data):
                pair.server.ack(e.stream_id, e.flow_controlled_length)
        if i % 7 == 0:
            pair.server.send_reset(sid)
        elif i % 7 == 1:  # a whole response, sent from C (``_col.bodies``)
            pair.server.send_response(ResponseHead(sid, 200, [(b"content-type", b"a/b")]), b"w" * 2000)
        else:
            pair.server.send_head(ResponseHead(sid, 200, [(b"content-type", b"a/b")]))
            pair.server.send_data(sid, b"r" * 3000)
            pair.server.send_trailers(sid, [(b"grpc-status", b"0")])
        _, client_events = pair.pump()
        for e in client_events:
            if isinstance(e, Data):
                pair.client.ack(e.stream_id, e.flow_controlled_length)
        pair.pump()

    pair = ConnectionPair()
    counter = iter(range(10**6))
    for _ in range(50):
        exchange(pair, next(counter))
    grown = memory_growth([lambda: exchange(pair, next(counter))], 2000)
    assert pair.client.open_streams == 0 and pair.server.open_streams == 0 and not pair.server._col.bodies
    assert grown < 100_000, grown


def _recording_collector(native, codec, on_close_calls: list | None = None, read_calls: list | None = None):
    """The codec's collector again, with ``on_close``/``on_read`` recording their calls."""
    def closed(sid, code):
        if on_close_calls is not None:
            on_close_calls.append(sid)
        return codec._closed(sid, code)

    def read(sid, length):
        if read_calls is not None:
            read_calls.append(sid)
        return codec._read(sid, length)

    col = native.fast.Collector(2 * 65536, codec._frame, closed, read, codec._headers_frame, codec._data_frame)
    col.streams = codec._streams
    codec._col = col
    return col


def test_a_whole_small_response_goes_from_c_and_the_stream_is_forgotten(native):
    """``send_response`` with a body the peer's windows take: the body waits in the
    collector (not in a stream queue), the stream is over for the codec at once, and the
    next flush sends HEADERS then one DATA frame with END_STREAM without calling ``_read``."""
    from hyperframe.frame import DataFrame
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    raw.drain()
    reads: list = []
    col = _recording_collector(native, raw.codec, read_calls=reads)
    raw.codec.send_response(ResponseHead(1, 200, [(b"content-type", b"text/plain")]), b"hello body")
    assert 1 not in raw.codec._streams and col.bodies == {1: b"hello body"}
    frames = raw.drain()
    (head,) = [f for f in frames if isinstance(f, HeadersFrame)]
    (data,) = [f for f in frames if isinstance(f, DataFrame)]
    assert "END_STREAM" not in head.flags and "END_STREAM" in data.flags and data.data == b"hello body"
    assert reads == [] and col.bodies == {}
    # a stream nghttp2 does not know has no window: nothing is submitted, nothing kept
    assert native.fast.submit_whole(raw.codec._sa, 99, [(b":status", b"200")], b"x", col) is False
    assert col.bodies == {} and not raw.drain()
    # a second whole response for a stream whose body still waits replaces nothing
    raw.feed(raw.ff.headers(3, request_fields(), end_stream=True))
    raw.drain()
    assert native.fast.submit_whole(raw.codec._sa, 3, [(b":status", b"200")], b"first", col) is True
    assert native.fast.submit_whole(raw.codec._sa, 3, [(b":status", b"200")], b"second", col) is False
    assert col.bodies == {3: b"first"}
    # nghttp2 refuses a response from a client session (the windows would take it): False,
    # and the body is not kept for a read callback that will never come
    pair = ConnectionPair()
    sid = pair.client.send_head(RequestHead(0, b"GET", b"/", b"a.example", [], scheme=b"http", end_stream=True))
    pair.pump()
    ccol = _recording_collector(native, pair.client)
    assert native.fast.submit_whole(pair.client._sa, sid, [(b":status", b"200")], b"x", ccol) is False
    assert ccol.bodies == {}


def test_a_response_the_windows_hold_back_stays_a_counted_stream(native):
    """A body larger than the peer's stream window is not handed to C: it stays queued on
    a stream the codec tracks (so it counts against the concurrent-stream limit), goes
    out as the window allows, and ends whole after a WINDOW_UPDATE."""
    from hyperframe.frame import DataFrame
    raw = RawServer(handshake=False)
    raw.feed(raw.ff.preamble({SettingsFrame.INITIAL_WINDOW_SIZE: 4}) + raw.ff.settings(ack=True))
    raw.drain()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    raw.drain()
    raw.codec.send_response(ResponseHead(1, 200, []), b"0123456789")
    assert raw.codec._col.bodies == {}
    first = b"".join(f.data for f in raw.drain() if isinstance(f, DataFrame))
    assert first == b"0123" and 1 in raw.codec._streams and raw.codec.pending(1) == 6
    raw.feed(raw.ff.window_update(1, 100))
    rest = [f for f in raw.drain() if isinstance(f, DataFrame)]
    assert b"".join(f.data for f in rest) == b"456789" and "END_STREAM" in rest[-1].flags
    assert 1 not in raw.codec._streams


def test_a_reset_drops_a_body_waiting_in_c(native):
    """The client resets the stream between ``send_response`` and the flush: nghttp2
    closes the stream, the body goes with it, and no DATA is written for it."""
    from hyperframe.frame import DataFrame
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields(), end_stream=True))
    raw.drain()
    raw.codec.send_response(ResponseHead(1, 200, []), b"x" * 100)
    assert raw.codec._col.bodies
    raw.feed(raw.ff.rst(1, 0x8))
    assert raw.codec._col.bodies == {}
    assert not [f for f in raw.drain() if isinstance(f, DataFrame)]


def test_stream_close_calls_the_codec_only_for_streams_it_still_tracks(native):
    """nghttp2's stream-close callback reaches ``_closed`` only for a stream the codec
    still tracks (one nghttp2 closed by itself, which becomes a ``Reset``), not for the
    streams of finished exchanges: those cost no call."""
    from meshproxy.codec.events import Reset
    raw = RawServer()
    closes: list = []
    _recording_collector(native, raw.codec, on_close_calls=closes)
    for sid in (1, 3, 5):
        raw.feed(raw.ff.headers(sid, request_fields(), end_stream=True))
        raw.codec.send_response(ResponseHead(sid, 200, []), b"ok")
        raw.drain()
    assert closes == [] and not raw.codec._streams
    # a client's response body longer than its content-length: nghttp2 resets that stream
    # itself while the codec still tracks it
    client = http2.Http2Codec("client")
    client.initiate()
    client_closes: list = []
    _recording_collector(native, client, on_close_calls=client_closes)
    client.receive_data(raw.ff.settings())
    sid = client.send_head(RequestHead(0, b"GET", b"/", b"svc", []))
    client.data_to_send()
    events = client.receive_data(raw.ff.headers(sid, [(b":status", b"200"), (b"content-length", b"3")])
                                 + raw.ff.data(sid, b"abcdef"))
    assert client_closes == [sid] and Reset(sid, 0x1, False) in events


def test_the_stream_calls_refuse_bad_arguments_with_an_error_not_a_crash(native):
    """``consume``, ``submit_data`` and ``resume_data`` check what they are given before
    nghttp2 sees it: the argument count (TypeError naming the call), a freed session (0:
    ValueError), a stream id that is not an int, a negative byte count."""
    fast = native.fast
    raw = RawServer()
    raw.feed(raw.ff.headers(1, request_fields()))
    sa = raw.codec._sa
    for call, args in ((fast.consume, (sa, 1, 1)), (fast.submit_data, (sa, 1)), (fast.resume_data, (sa, 1))):
        name = call.__name__
        with pytest.raises(TypeError, match=rf"{name}\(session, stream_id"):
            call(*args, 0)
        with pytest.raises(ValueError, match="no nghttp2 session"):
            call(0, *args[1:])
        with pytest.raises(TypeError):
            call(sa, "1", *args[2:])
    with pytest.raises(ValueError, match="must not be negative"):
        fast.consume(sa, 1, -1)
    # and with good arguments they reach nghttp2 (a known stream: 0, done)
    assert fast.consume(sa, 1, 0) == 0


def test_binding_a_zero_address_is_refused_and_changes_nothing(native):
    """``bind``/``bind_extra`` check every address before they take any: a 0 among them is a
    ValueError, and the helpers bound before go on working."""
    fast = native.fast
    with pytest.raises(ValueError, match="bind_extra: a function address is 0"):
        fast.bind_extra(1, 2, 3, 4, 5, 0)
    with pytest.raises(ValueError, match="bind: a function address is 0"):
        fast.bind(1, 2, 3, 4, 5, 0, (0,) * 9)
    with pytest.raises(ValueError, match="implausible"):
        fast.bind(1, 2, 3, 4, 5, 6, (0,) * 8 + (999,))
    pair = ConnectionPair()  # the real bindings are still in place
    sid = pair.client.send_head(RequestHead(0, b"GET", b"/", b"a.example", [], scheme=b"http", end_stream=True))
    server_events, _ = pair.pump()
    assert any(isinstance(e, RequestHead) and e.stream_id == sid for e in server_events)
