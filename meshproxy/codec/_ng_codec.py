"""HTTP/2 codec backend on libnghttp2: one connection's bytes <-> events, natively.

Where this sits: ``codec/http2.py`` exports ``NgHttp2Codec`` as ``Http2Codec``
when ``_ng_ffi.load()`` succeeds (importing this module loads the library). The
public interface and every event it emits are those of ``_h2_codec.H2Codec``,
whose module docstring states the invariants both keep; ``http/server.py`` and
``upstream/client.py`` cannot tell the two apart. Pure like it: no asyncio, no
sockets, no clock.

How it drives nghttp2:

- Input goes through ``nghttp2_session_mem_recv``; output comes out of
  ``nghttp2_session_mem_send`` into ``_out`` (no send callback). A callback into
  Python (cffi's argument conversion, a Python frame, its body) costs far more
  than nghttp2's own work, so per request there are only: one
  ``on_header`` per field (collected into ``_fields``), one ``on_frame_recv`` per
  frame (which emits the events), one ``on_data_chunk_recv`` per DATA chunk,
  one ``on_begin_headers`` per received header block (client role),
  ``on_stream_close`` once per stream, and one read callback per DATA frame sent.
- Server role: nghttp2's HTTP checks are off and ``_h2_headers`` validates
  requests exactly as for the h2 backend (a malformed request is a stream event,
  431 is local); content-length is checked here, per stream (RFC 9113 section
  8.1.1). Client role: nghttp2 checks responses in C (names, values,
  pseudo-headers, connection-specific fields, content-length) and resets a
  malformed one, which ``on_stream_close`` reports as the h2 backend's
  ``Reset(PROTOCOL_ERROR, remote=False)``; ``on_begin_headers`` then discards
  the fields of a block cut short.
- Flow control is manual (``no_auto_window_update``): ``ack`` calls
  ``nghttp2_session_consume``. nghttp2 consumes padding and DATA it ignores by
  itself, so a padded frame's padding is remembered in ``_credit`` and not
  consumed twice when the layer above acks the full ``flow_controlled_length``.
- Bodies wait in a per-stream queue; a data provider's read callback copies from
  it into nghttp2's frame buffer as the windows allow (``pending()`` is what is
  still queued).
- Our SETTINGS advertise MAX_CONCURRENT_STREAMS without telling nghttp2 (the
  entry is added to the serialised frame): after the peer's ACK nghttp2 would
  make an excess stream a connection error, RFC 9113 section 5.1.2 and Envoy
  make it REFUSED_STREAM, which the codec sends itself. A graceful GOAWAY is
  likewise written by the codec, so streams above its last id get REFUSED_STREAM
  instead of being silently ignored.
- Connection errors nghttp2 finds itself queue its GOAWAY; the codec sees the
  frame leave (``mem_send`` right after ``mem_recv``) and reports it. Abuse the
  codec detects (``Guard``) and nghttp2's fatal returns (flood, CONTINUATION
  flood, bad preface) stop the session: the codec writes the GOAWAY, dropping
  queued output when the peer was flooding us, and frees the session.
- Limits are the h2 backend's (``Http2Limits``, ``Guard``). nghttp2's own
  defences stay on where they agree (outbound ACK flood = our control-frame
  limit, at most 8 CONTINUATION frames); its RST_STREAM token bucket (1000, then
  33/s, counting every client reset) is switched off: Envoy's premature-reset
  rule in ``Guard`` decides, so a client that cancels answered streams keeps
  its connection on either backend.

The C boundary (constants, header-list packing, the callbacks) is ``_ng_wire``.
The per-field and per-chunk callbacks collect into a ``Collector`` (``_col``).
When the optional extension ``_ngfast`` was built (``_ng_wire.native``), they
and the other callbacks are C functions, ``mem_recv``/``mem_send``/``submit_*`` are called
through it with the GIL held (cffi would release and retake it around every call
and callback), and header lists go to C without ``nva``; the events, and every
behaviour the tests check, are the same either way.

Invariants (besides ``_h2_codec``'s): callbacks only run inside ``mem_recv`` and
``mem_send``, never free the session and never raise into C (a failure is
returned as NGHTTP2_ERR_CALLBACK_FAILURE and turned into a connection error);
the session is deleted exactly once (``_free``; ``ffi.gc`` if the codec is
dropped unclosed).
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import Any, cast

from . import _ng_wire
from ._ng_wire import (CLIENT_CALLBACKS, DATA, DATA_EOF, DATA_NO_END_STREAM, DEFAULT_WINDOW,
                       ERR_BAD_CLIENT_MAGIC, ERR_CALLBACK_FAILURE, ERR_DEFERRED, ERR_FLOODED,
                       ERR_TOO_MANY_CONTINUATIONS, FLAG_ACK, FLAG_END_STREAM, GOAWAY, HCAT_REQUEST,
                       HCAT_RESPONSE, HEADERS, MAX_STREAM_ID, NULL, PING, PREFACE, PROVIDER,
                       RESET_RATE_LIMIT, RST_STREAM, SERVER_CALLBACKS, SETTINGS, SETTINGS_ENABLE_PUSH,
                       SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
                       SETTINGS_MAX_HEADER_LIST_SIZE, VERSION, Collector, callback_error, ffi,
                       goaway_frame, lib, nva, unpack)
from ._h2_base import StreamTable
from ._h2_guard import Guard, Http2Limits, StreamUnavailable
from ._h2_headers import check_trailers, lift_request, lift_response, request_block
from ._h2_headers import response_block, trailer_block
from .events import (CANCEL, ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR,
                     REFUSED_STREAM, ConnectionEnded, Data, EndStream, Event, Headers,
                     ProtocolError, Reset, RequestHead, ResponseHead, Trailers, WindowOpened)

BODY_IN_C = 16 * 1024
"""A whole response body up to this size (one DATA frame at the default frame size) is
handed to the C data provider in ``send_response`` and sent from there."""

__all__ = ["NgHttp2Codec"]

log = logging.getLogger("meshproxy.codec.http2")
_announced = False  # the backend is logged with the first codec, once logging is set up

class _Stream:
    """One stream's send queue and lifecycle flags, as the codec sees them.

    Flags default at class level and only the ones that change are set on the
    instance: a stream is created per request, and a dozen slot assignments in
    ``__init__`` cost more than the few writes most streams see."""

    queue: deque | None = None
    """Body chunks waiting for the read callback, in order (created on first use)."""
    pending = 0
    """Total bytes in ``queue``."""
    end_requested = False
    """The caller has ended its side; END_STREAM (or trailers) go after the queue."""
    trailers: list | None = None
    """Trailer fields to send instead of an empty END_STREAM."""
    local_ended = False
    """Our END_STREAM has been handed to nghttp2."""
    remote_ended = False
    """The peer's END_STREAM has been received."""
    responded = False
    """Server role: a final (>= 200) response head was sent."""
    rejected = False
    """Server role: refused with a local 431, or abandoned (``send_reset``
    NO_ERROR after our end): inbound events are swallowed, RST_STREAM NO_ERROR
    follows our END_STREAM."""
    attached = False
    """Our data provider is attached to the stream in nghttp2."""
    deferred = False
    """The read callback found nothing to send: ``resume_data`` when there is."""
    blocked = False
    """Bytes were left queued: the next read reports ``WindowOpened``."""
    final = False
    """Client role: a final (>= 200) response head was received."""
    content_length: int | None = None
    """The peer's declared body length."""
    received = 0
    """Body bytes received (content-length check)."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id


class NgHttp2Codec(StreamTable):
    """Sans-IO HTTP/2 connection on libnghttp2 for ``role`` "server" or "client"."""

    def __init__(self, role: str = "server", limits: Http2Limits = Http2Limits()) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        global _announced
        if not _announced:
            _announced = True
            log.debug("HTTP/2 codec backend: nghttp2 (libnghttp2 %s)", VERSION)
        self.role = role
        self.limits = limits
        self._client = client = role == "client"
        self._handle = ffi.new_handle(self)
        opt_p = ffi.new("nghttp2_option **")
        if lib.nghttp2_option_new(opt_p) != 0:
            raise MemoryError("nghttp2_option_new failed")
        opt = opt_p[0]
        try:
            lib.nghttp2_option_set_no_auto_window_update(opt, 1)
            # Requests are checked by _h2_headers (malformed is a stream event, 431 is
            # local); responses by nghttp2 in C: a malformed one is reset and
            # on_stream_close reports it, as the h2 backend would.
            lib.nghttp2_option_set_no_http_messaging(opt, 0 if client else 1)
            lib.nghttp2_option_set_no_closed_streams(opt, 1)
            lib.nghttp2_option_set_peer_max_concurrent_streams(opt, limits.max_concurrent_streams)
            lib.nghttp2_option_set_max_outbound_ack(opt, limits.max_outbound_control_frames)
            lib.nghttp2_option_set_max_send_header_block_length(opt, 4 * limits.max_header_list_size)
            if RESET_RATE_LIMIT:  # premature resets are the Guard's, as on the h2 backend
                lib.nghttp2_option_set_stream_reset_rate_limit(opt, 2**62, 2**62)
            session_p = ffi.new("nghttp2_session **")
            new = lib.nghttp2_session_client_new2 if client else lib.nghttp2_session_server_new2
            native = _ng_wire.native
            table = (CLIENT_CALLBACKS if client else SERVER_CALLBACKS) if native is None else native.callbacks
            rv = new(session_p, table, self._handle, opt)
        finally:
            lib.nghttp2_option_del(opt)
        if rv != 0:
            raise MemoryError(f"nghttp2 session: error {rv}")
        self._s = ffi.gc(session_p[0], lib.nghttp2_session_del)
        hard_limit = 2 * limits.max_header_list_size
        if native is None:
            self._fast = None
            self._col: Any = Collector(hard_limit)
            self._prd = PROVIDER
            self._pp = ffi.new("const char **")
        else:
            self._fast = native.fast
            """The C helpers (``_ngfast``): they collect into ``_col``, call ``_frame`` (HEADERS
            and DATA: ``_headers_frame`` and ``_data_frame``, with what was collected),
            ``_closed`` and ``_read``, and take the session by address (``_sa``, 0 once freed)."""
            self._col = native.fast.Collector(hard_limit, self._frame, self._closed, self._read,
                                              self._headers_frame, self._data_frame)
            self._prd = native.provider
            self._sa = int(ffi.cast("uintptr_t", self._s))
        """``_col``: the header fields and DATA chunks of the frame being received;
        ``_prd``: the data provider attached to streams with a body (nghttp2 copies it)."""
        self._streams: dict[int, _Stream] = {}
        if self._fast is not None:
            self._col.streams = self._streams  # nghttp2's stream-close calls ``_closed`` only for these
        self._out: list[bytes] = []
        self._credit: dict[int, int] = {}  # stream -> padding nghttp2 consumed itself
        self._late: list = []
        self._ev: list = self._late  # where callbacks put events
        self._opened: dict | None = None  # WindowOpened, collected during receive_data
        self._fatal: tuple | None = None
        self._dead = False
        self._drain_last = MAX_STREAM_ID
        self._goaway_sent = False
        self._goaway_received = False
        self._stream_cap = limits.max_concurrent_streams
        """Client role: streams we may have open, min(the peer's MAX_CONCURRENT_STREAMS, ours)."""
        self._next_id = 1
        self._guard = Guard(limits)

    # === connection ===

    def initiate(self) -> None:
        """Queue the preface (client) and SETTINGS, then open the connection window."""
        lim = self.limits
        iv = [(SETTINGS_INITIAL_WINDOW_SIZE, lim.initial_stream_window),
              (SETTINGS_MAX_HEADER_LIST_SIZE, lim.max_header_list_size)]
        if self._client:
            iv.append((SETTINGS_ENABLE_PUSH, 0))
        lib.nghttp2_submit_settings(self._s, 0, ffi.new("nghttp2_settings_entry[]", iv), len(iv))
        if lim.initial_connection_window > DEFAULT_WINDOW:
            lib.nghttp2_session_set_local_window_size(self._s, 0, 0, lim.initial_connection_window)
        self._send()
        data = b"".join(self._out)
        at = len(PREFACE) if data.startswith(PREFACE) else 0
        size = int.from_bytes(data[at:at + 3], "big")
        if data[at + 3] != SETTINGS:
            raise RuntimeError("nghttp2 did not start with SETTINGS")
        end = at + 9 + size
        entry = struct.pack(">HI", SETTINGS_MAX_CONCURRENT_STREAMS, lim.max_concurrent_streams)
        self._out = [data[:at] + (size + 6).to_bytes(3, "big") + data[at + 3:end] + entry
                     + data[end:]]

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (drains the outbound buffer)."""
        self._guard.control_queued = 0
        if not self._dead:
            self._send()
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def can_open_stream(self) -> bool:
        """Client role: whether ``send_head`` may open a stream now (no GOAWAY either
        way, the peer's MAX_CONCURRENT_STREAMS not reached, ids left). Until the
        peer's SETTINGS arrive we assume our own limit."""
        return (not self._dead and not self._goaway_received and not self._goaway_sent
                and len(self._streams) < self._stream_cap and self._next_id < MAX_STREAM_ID - 2)

    def _set_peer_streams(self, n: int) -> None:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (client role)."""
        self._stream_cap = min(n, self.limits.max_concurrent_streams)

    def start_drain(self) -> None:
        """Graceful GOAWAY: the server refuses streams above the highest one it has
        seen and finishes the rest; the client stops opening streams."""
        if self._goaway_sent or self._dead:
            return
        self._goaway_sent = True
        last = 0
        if not self._client:
            last = self._drain_last = lib.nghttp2_session_get_last_proc_stream_id(self._s)
        self._send()
        self._out.append(goaway_frame(last, NO_ERROR))

    def close(self, error_code: int = NO_ERROR) -> None:
        """Queue a final GOAWAY; the caller flushes ``data_to_send()`` and closes.
        No events follow; the caller ends its own streams."""
        if self._dead:
            return
        self._dead = True
        lib.nghttp2_session_terminate_session(self._s, error_code)
        self._send()
        self._free()

    # === receiving ===

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the transport; return the events they complete."""
        if self._dead:  # events of a failure found while sending, if any
            out, self._late = self._late, []
            return out
        out = self._ev = self._late
        self._late = []
        try:
            if self._fast is not None:
                rv = self._fast.recv(self._sa, data, self._col)
            else:
                rv = lib.nghttp2_session_mem_recv(
                    self._s, data if data.__class__ is bytes else ffi.from_buffer(data), len(data))
            if self._dead:  # a GOAWAY with an error: events are out, nothing more
                self._free()
                return out
            if rv < 0:
                self._recv_failed(rv, out)
                return out
            self._opened = {}
            start = len(self._out)
            self._send()
            if self._dead:
                return out
            if self._opened:
                out += [WindowOpened(sid) for sid in self._opened]
            if not (self._fast.want_read(self._sa) if self._fast is not None
                    else lib.nghttp2_session_want_read(self._s)):
                self._check_terminated(start, out)
        finally:
            self._opened = None
            self._ev = self._late
        return out

    def receive_eof(self) -> list[Event]:
        """The transport hit EOF: open streams are reset, then ``ConnectionEnded``."""
        out, self._late = self._late, []
        if self._dead:
            return out
        self._dead = True
        self._reset_all(out, CANCEL)
        out.append(ConnectionEnded())
        self._free()
        return out

    def _frame(self, t: int, sid: int, flags: int, length: int, code: int, extra: int,
               debug: bytes) -> int:
        """A frame was received (nghttp2's ``on_frame_recv``): ``code`` is RST_STREAM's or
        GOAWAY's error code, ``extra`` the HEADERS category or GOAWAY's last stream id,
        ``debug`` GOAWAY's debug data. Returns NGHTTP2_ERR_CALLBACK_FAILURE to stop
        reading once the connection is over."""
        if t == HEADERS:
            fields, size = self._col.take()  # size: what lift_* would count again
            self._on_headers(sid, flags, extra, fields, size)
        elif t == DATA:
            self._on_data(sid, flags, length, self._col.data())
        elif t == RST_STREAM:
            self._on_reset(sid, code)
        elif t == SETTINGS or t == PING:
            if not flags & FLAG_ACK:
                if t == SETTINGS and self._client:
                    self._set_peer_streams(lib.nghttp2_session_get_remote_settings(
                        self._s, SETTINGS_MAX_CONCURRENT_STREAMS))
                self._count_control()
        elif t == GOAWAY:
            self._on_goaway(extra, code, debug)
        if self._fatal is not None or self._dead:
            return ERR_CALLBACK_FAILURE  # stop reading: the connection is over
        return 0

    def _headers_frame(self, sid: int, flags: int, cat: int, fields: list, size: int) -> int:
        """``_frame`` for a HEADERS frame, its fields already taken from the collector (``_ngfast``)."""
        self._on_headers(sid, flags, cat, fields, size)
        if self._fatal is not None or self._dead:
            return ERR_CALLBACK_FAILURE
        return 0

    def _data_frame(self, sid: int, flags: int, length: int, data: bytes) -> int:
        """``_frame`` for a DATA frame, its chunks already joined (``_ngfast``)."""
        self._on_data(sid, flags, length, data)
        if self._fatal is not None or self._dead:
            return ERR_CALLBACK_FAILURE
        return 0

    def _closed(self, sid: int, error_code: int) -> int:
        """nghttp2 closed a stream (``on_stream_close``)."""
        st = self._streams.pop(sid, None)
        if st is not None:  # closed by nghttp2 itself: a stream error it found, or a
            self._guard.closed += 1  # request it may no longer start after the peer's GOAWAY
            if self._credit:
                self._credit.pop(sid, None)
            remote = error_code == REFUSED_STREAM and self._goaway_received
            self._ev.append(Reset(sid, error_code, remote))
        return 0

    def _read(self, sid: int, length: int):  # noqa: ANN202 - int, or (bytes-like, flags)
        """The data provider's read (nghttp2 asks for at most ``length`` bytes of ``sid``'s
        queue): ``(data, NGHTTP2_DATA_FLAG_*)``, or NGHTTP2_ERR_DEFERRED when there is
        nothing to send yet. The last read ends the stream, or submits the trailers."""
        st = self._streams.get(sid)
        if st is None:
            return ERR_DEFERRED  # forgotten: nghttp2 drops the provider when it closes
        if st.blocked:
            st.blocked = False
            if self._opened is not None:
                self._opened[sid] = None
        q = st.queue
        data: bytes | memoryview = b""
        if q:
            chunk = q[0]
            size = len(chunk)
            if size > length:  # part of one chunk
                data = memoryview(chunk)[:length]
                q[0] = memoryview(chunk)[length:]
            else:
                q.popleft()
                if not q or size == length:
                    data = chunk
                else:  # the frame takes more chunks (the last maybe in part): joined
                    parts = [chunk]
                    n = size
                    while q and n < length:
                        chunk = q[0]
                        room = length - n
                        if len(chunk) <= room:
                            parts.append(q.popleft())
                            n += len(chunk)
                        else:
                            parts.append(memoryview(chunk)[:room])
                            q[0] = memoryview(chunk)[room:]
                            n = length
                    data = b"".join(parts)
        n = len(data)
        st.pending -= n
        if q:
            st.blocked = True
            return data, 0
        if st.end_requested:
            flags = DATA_EOF
            if st.trailers is not None:
                flags = DATA_EOF | DATA_NO_END_STREAM
                arr, k, _keep = nva(st.trailers)
                lib.nghttp2_submit_trailer(self._s, sid, arr, k)
            st.attached = False
            self._local_end(st)
            return data, flags
        if n:
            return data, 0
        st.deferred = True
        return ERR_DEFERRED

    def _on_headers(self, sid: int, flags: int, cat: int, fields: list, size: int) -> None:
        self._guard.empty_frames = 0
        end = flags & FLAG_END_STREAM
        if cat == HCAT_REQUEST:
            if not self._client:
                self._on_request(sid, fields, end, size)
            return
        st = self._streams.get(sid)
        if st is None:
            return
        if self._client and (cat == HCAT_RESPONSE or not st.final):
            lim = self.limits
            head = lift_response(sid, fields, bool(end), lim.max_header_list_size,
                                 lim.max_headers_count, True, size)
            if head.__class__ is ResponseHead:
                if head.status >= 200:  # (content-length: nghttp2 checks it, knowing
                    st.final = True      # HEAD and 304 responses have no content)
                self._ev.append(head)
                if end:
                    self._on_end(st)
            else:
                self._malformed(st)
            return
        if st.rejected:
            if end:
                self._on_end(st)
            return
        lim = self.limits
        trailers = check_trailers(fields, lim.max_header_list_size, lim.max_headers_count,
                                  self._client)
        if not end or isinstance(trailers, str):  # trailers must end the stream (RFC 9113 8.1)
            self._malformed(st)
            return
        self._ev.append(Trailers(sid, trailers))
        self._on_end(st)

    def _on_request(self, sid: int, fields: list, end: int, size: int) -> None:
        lim = self.limits
        if len(self._streams) >= lim.max_concurrent_streams or sid > self._drain_last:
            self._send_rst(sid, REFUSED_STREAM, True)
            return
        head = lift_request(sid, fields, bool(end), lim.max_header_list_size,
                            lim.max_headers_count, size)
        if head.__class__ is RequestHead and end and head.content_length:
            # No content but a content-length that promises some: malformed (RFC
            # 9113 8.1.1), and an HTTP/1 upstream would wait for the body.
            self._send_rst(sid, PROTOCOL_ERROR, True)
            self._ev.append(Reset(sid, PROTOCOL_ERROR, False))
        elif head.__class__ is RequestHead:
            st = self._streams[sid] = _Stream(sid)
            st.content_length = head.content_length
            self._ev.append(head)
            if end:
                self._on_end(st)
        elif head == 431:
            st = self._streams[sid] = _Stream(sid)
            st.rejected = True
            self._ev.append(ProtocolError(sid, 431, "request header fields too large", False,
                                          NO_ERROR))
            if end:
                self._on_end(st)
        else:
            self._send_rst(sid, PROTOCOL_ERROR, True)
            self._ev.append(Reset(sid, PROTOCOL_ERROR, False))

    def _on_data(self, sid: int, flags: int, length: int, data: bytes) -> None:
        end = flags & FLAG_END_STREAM
        st = self._streams.get(sid)
        if not data:
            if not end:
                reason = self._guard.empty_frame()
                if reason is not None:
                    self._fatal = (ENHANCE_YOUR_CALM, reason)
                    return
        else:
            self._guard.empty_frames = 0
            n = len(data)
            if st is None or st.rejected:
                lib.nghttp2_session_consume(self._s, sid, n)  # the layer never sees it
            else:
                st.received += n
                cl = st.content_length
                if cl is not None and (st.received > cl or (end and st.received != cl)):
                    lib.nghttp2_session_consume(self._s, sid, n)
                    self._malformed(st)
                    return
                if length > n:  # padding: nghttp2 has consumed it already
                    self._credit[sid] = self._credit.get(sid, 0) + length - n
                self._ev.append(Data(sid, data, length))
        if end and st is not None:
            self._on_end(st)

    def _on_end(self, st: _Stream) -> None:
        """The peer's END_STREAM (on DATA, a head or trailers)."""
        if not st.rejected and st.content_length is not None and st.received != st.content_length:
            self._malformed(st)
            return
        st.remote_ended = True
        if not st.rejected:
            self._ev.append(EndStream(st.id))
        if st.local_ended:
            self._forget(st)

    def _malformed(self, st: _Stream) -> None:
        """A malformed message is a stream error (RFC 9113 section 8.1.1)."""
        self._reset_stream(st, PROTOCOL_ERROR, True)
        self._ev.append(Reset(st.id, PROTOCOL_ERROR, False))

    def _on_reset(self, sid: int, code: int) -> None:
        st = self._streams.pop(sid, None)
        if st is None:
            return
        self._guard.closed += 1
        self._ev.append(Reset(sid, code, True))
        if not self._client and not st.responded:
            reason = self._guard.premature_reset()
            if reason is not None:
                self._fatal = (ENHANCE_YOUR_CALM, reason)

    def _on_goaway(self, last: int, code: int, debug: bytes) -> None:
        self._goaway_received_events(last, code, debug, self._ev)

    def _count_control(self) -> None:
        reason = self._guard.control_frame()
        if reason is not None:
            self._fatal = (ENHANCE_YOUR_CALM, reason)

    def _recv_failed(self, rv: int, out: list) -> None:
        """``mem_recv`` returned a fatal error: ours (``_fatal``, a header list over the
        collector's hard limit) or nghttp2's."""
        col = self._col
        if self._fatal is not None:
            code, message = self._fatal
        elif col.over:
            code, message = ENHANCE_YOUR_CALM, "header list larger than %d bytes" % col.hard_limit
        elif col.failed:
            code, message = INTERNAL_ERROR, "internal error: MemoryError"
        elif rv == ERR_BAD_CLIENT_MAGIC:
            code, message = PROTOCOL_ERROR, "invalid HTTP/2 connection preface"
        elif rv == ERR_FLOODED:
            code, message = ENHANCE_YOUR_CALM, "outbound control frame flood"
        elif rv == ERR_TOO_MANY_CONTINUATIONS:
            code, message = ENHANCE_YOUR_CALM, "too many CONTINUATION frames"
        elif rv == ERR_CALLBACK_FAILURE:
            exc = self._callback_exception()
            code, message = INTERNAL_ERROR, f"internal error: {exc.__class__.__name__}"
        else:
            code, message = INTERNAL_ERROR, f"nghttp2 error {rv}"
        self._die(out, message, code)

    def _check_terminated(self, start: int, out: list) -> None:
        """nghttp2 wants no more input: if it just sent a GOAWAY with an error (a
        connection error it found itself), report it like the h2 backend does."""
        for frame in self._out[start:]:
            if len(frame) >= 17 and frame[3] == GOAWAY:
                code = int.from_bytes(frame[13:17], "big")
                if code != NO_ERROR:
                    reason = frame[17:].decode("latin-1") or f"HTTP/2 error {code}"
                    self._die(out, reason, code, queued=True)
                return

    # === sending ===

    def send_head(self, head: RequestHead | ResponseHead) -> int:
        """Send a head: a ``RequestHead`` (client role; a new stream, whose id is
        allocated and returned) or a ``ResponseHead`` (server role, 1xx or final)."""
        if self._client:
            if not self.can_open_stream():
                raise StreamUnavailable("connection cannot open another stream")
            end = head.end_stream
            block = request_block(cast(RequestHead, head))
            try:
                if self._fast is None:
                    raise TypeError
                sid = self._fast.submit_request(self._sa, block, not end)
            except TypeError:  # no C helpers, or a field that is not plain bytes (packed here)
                arr, n, _keep = nva(block)
                sid = lib.nghttp2_submit_request(self._s, NULL, arr, n, NULL if end else self._prd, NULL)
            if sid < 0:
                raise StreamUnavailable(f"nghttp2 cannot open a stream: error {sid}")
            self._next_id = sid + 2
            st = self._streams[sid] = _Stream(sid)
            if end:
                st.end_requested = True
                self._local_end(st)
            else:
                st.attached = True
            return sid
        sid = head.stream_id
        rst = self._streams.get(sid)
        if rst is None or rst.end_requested or self._dead:
            return sid
        resp = cast(ResponseHead, head)
        block = response_block(resp)
        try:
            if self._fast is None:
                raise TypeError
            self._fast.submit_response(self._sa, sid, block, head.end_stream)
        except TypeError:  # no C helpers, or a field that is not plain bytes (packed here)
            arr, n, _keep = nva(block)
            if head.end_stream:
                lib.nghttp2_submit_response(self._s, sid, arr, n, NULL)
            else:
                lib.nghttp2_submit_headers(self._s, 0, sid, NULL, arr, n, NULL)
        if resp.status >= 200:
            rst.responded = True
        if resp.end_stream:
            rst.end_requested = True
            self._local_end(rst)
        return sid

    def send_response(self, head: ResponseHead, data: bytes) -> None:
        """``send_head(head)`` then ``send_data(sid, data, True)``, for a final response whose
        whole body is known: one submit, the head with the data provider already attached
        (the frames are the same: HEADERS, then DATA as the peer's window allows)."""
        sid = head.stream_id
        st = self._streams.get(sid)
        if (self._fast is None or not data or head.status < 200 or head.end_stream or st is None
                or st.end_requested or st.attached or self._dead):
            StreamTable.send_response(self, head, data)
            return
        block = response_block(head)
        try:
            # The whole body at once, when the peer's windows take it now: the C read callback
            # sends it from ``_col.bodies`` with the next flush (no ``_read``, no queue), so the
            # stream is over as far as the codec's bookkeeping goes. A body the windows would
            # hold back stays a queued stream below, counted against the stream limit.
            if len(data) <= BODY_IN_C and self._fast.submit_whole(self._sa, sid, block, data, self._col):
                st.responded = True
                st.end_requested = True
                self._local_end(st)
                return
            self._fast.submit_response(self._sa, sid, block, 2)
        except TypeError:  # a field that is not plain bytes: the two-step path packs it
            StreamTable.send_response(self, head, data)
            return
        st.responded = True
        st.attached = True  # the provider is on the stream already: send_data only queues
        self.send_data(sid, data, True)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Send body bytes as the peer's window allows; queue the rest (``pending``)."""
        st = self._streams.get(stream_id)
        if st is None or st.end_requested or self._dead:
            return
        if data:
            q = st.queue
            if q is None:
                q = st.queue = deque()
            q.append(data)
            st.pending += len(data)
            st.blocked = True
        elif not end_stream:
            return
        if end_stream:
            st.end_requested = True
        self._wake(st)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """End the stream with trailers, after any queued data."""
        st = self._streams.get(stream_id)
        if st is None or st.end_requested or self._dead:
            return
        st.trailers = trailer_block(headers)
        st.end_requested = True
        self._wake(st)

    def send_reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Reset the stream now; queued data is dropped. NO_ERROR once our side has
        ended ("stop sending the request body") waits behind our END_STREAM, as it
        would on the h2 backend, whose END_STREAM is already serialised by then."""
        st = self._streams.get(stream_id)
        if st is None or self._dead:
            return
        if error_code == NO_ERROR and st.end_requested:
            if not st.remote_ended:
                st.rejected = True  # swallow the rest; RST_STREAM at our local end
            return
        self._reset_stream(st, error_code, False)

    def ack(self, stream_id: int, n: int) -> None:
        """``n`` flow-controlled bytes of ``Data`` on ``stream_id`` were passed on;
        hand the window back to the peer (nghttp2 batches WINDOW_UPDATEs)."""
        if n <= 0 or self._dead:
            return
        if self._credit:
            credit = self._credit.pop(stream_id, 0)
            if credit > n:
                self._credit[stream_id] = credit - n
                return
            n -= credit
        if n:
            if self._fast is not None:
                self._fast.consume(self._sa, stream_id, n)
            else:
                lib.nghttp2_session_consume(self._s, stream_id, n)

    def _wake(self, st: _Stream) -> None:
        """Make nghttp2 ask the read callback for ``st``'s queue."""
        fast = self._fast
        if st.deferred:
            st.deferred = False
            if fast is not None:
                fast.resume_data(self._sa, st.id)
            else:
                lib.nghttp2_session_resume_data(self._s, st.id)
        elif not st.attached:
            st.attached = True
            if fast is not None:
                fast.submit_data(self._sa, st.id)
            else:
                lib.nghttp2_submit_data(self._s, FLAG_END_STREAM, st.id, self._prd)

    def _send(self) -> None:
        """Move everything nghttp2 can send now into ``_out``."""
        out = self._out
        if self._fast is not None:
            data, n = self._fast.send(self._sa, self._col)
            if data:
                out.append(data)
        else:
            s, pp = self._s, self._pp
            send = lib.nghttp2_session_mem_send
            while True:
                n = send(s, pp)
                if n <= 0:
                    break
                out.append(unpack(pp[0], n))
        if n < 0:  # fatal (an exception in the read callback, out of memory)
            exc = self._callback_exception()
            self._die(self._ev, f"internal error: {exc.__class__.__name__ if exc else n}",
                      INTERNAL_ERROR)

    def _callback_exception(self) -> BaseException | None:
        """The exception a callback raised into nghttp2, if any (then forgotten), to
        name in the connection error; it is logged here with its traceback."""
        exc, callback_error[0] = callback_error[0], None
        if self._col.error is not None:
            exc, self._col.error = self._col.error, None
        if exc is not None:
            log.error("HTTP/2 codec: a callback failed", exc_info=exc)
        return exc

    def _local_end(self, st: _Stream) -> None:
        st.local_ended = True
        if st.remote_ended:
            self._forget(st)
        elif st.rejected:  # answered locally; the rest of the request is unwanted
            self._reset_stream(st, NO_ERROR, True)

    def _forget(self, st: _Stream) -> None:
        if self._streams.pop(st.id, None) is not None:
            self._guard.closed += 1
            if self._credit:
                self._credit.pop(st.id, None)

    def _reset_stream(self, st: _Stream, code: int, provoked: bool) -> None:
        self._forget(st)
        self._send_rst(st.id, code, provoked)

    def _send_rst(self, sid: int, code: int, provoked: bool) -> None:
        """RST_STREAM; counted as a control frame when the peer provoked it."""
        lib.nghttp2_submit_rst_stream(self._s, 0, sid, code)
        if provoked:
            self._count_control()

    def _die(self, out: list, message: str, code: int, queued: bool = False) -> None:
        """Fatal connection error: GOAWAY (already sent by nghttp2 when ``queued``),
        ``ProtocolError``, then a ``Reset`` per open stream; the session is freed."""
        self._dead = True
        if not queued:
            if code == ENHANCE_YOUR_CALM:  # abuse: do not write the flood back out
                self._out.clear()
            last = lib.nghttp2_session_get_last_proc_stream_id(self._s) if self._s is not None else 0
            self._out.append(goaway_frame(last, code))
        out.append(ProtocolError(None, 400, message, True, code))
        self._reset_all(out, code, remote=False)
        self._free()

    def _free(self) -> None:
        """Delete the nghttp2 session now (once); later calls are no-ops."""
        s, self._s = self._s, None
        self._sa = 0
        if s is not None:
            ffi.release(s)
            # The C collector holds this codec's bound callbacks and the handle holds the codec:
            # with the session gone neither is needed, and kept they tie the codec in a cycle.
            if self._fast is not None:
                self._col = self._fast.Collector(self._col.hard_limit)
            self._handle = None
