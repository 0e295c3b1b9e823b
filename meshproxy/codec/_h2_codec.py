"""HTTP/2 codec backend on h2 (pure Python): one connection's bytes <-> events.

Where this sits: ``codec/http2.py`` exports this class as ``Http2Codec`` when
libnghttp2 is missing or ``MESHPROXY_H2_BACKEND=h2`` asks for it (otherwise the
native ``_ng_codec.NgHttp2Codec``, which keeps exactly these semantics).
``http/server.py`` drives a ``role="server"`` codec for each
downstream h2/h2c connection and ``upstream/client.py`` a ``role="client"`` codec
for each pooled upstream connection. They feed it what the transport read
(``receive_data``/``receive_eof``), call ``send_*`` for what the stream layer
decided, and write ``data_to_send()`` to the transport. Nothing above this module
imports h2. It is pure: no asyncio, no sockets, no clock.

Invariants:

1. ``receive_data`` never raises on peer input. A peer error is a
   ``ProtocolError`` event; when ``connection_fatal`` is set a GOAWAY is already
   queued and the caller flushes ``data_to_send()`` and closes.
2. Window opens only through ``ack()`` for DATA the layer above was handed, so a
   slow reader slows its sender end to end. Bytes the layer never sees (padding,
   refused or rejected streams) are acknowledged here so the connection window
   cannot leak away.
3. ``send_data`` never overruns the peer's window. The rest waits per stream, in
   order, and ``send_end``/``send_trailers`` wait behind it; ``pending()`` says
   how much waits.
4. After a fatal error, EOF or a non-graceful GOAWAY every still-open stream gets
   a ``Reset`` event and nothing more is emitted.
5. Sends on a stream that is already closed or reset are dropped silently (the
   caller may not have seen the ``Reset`` yet); misuse that cannot be a race
   (opening a stream on a connection that cannot take one) raises
   ``StreamUnavailable``.
"""

from __future__ import annotations

import logging

import h2.events as h2e
from h2.connection import ConnectionState
from h2.exceptions import H2Error, ProtocolError as H2ProtocolError
from h2.settings import SettingCodes

from ._h2_base import StreamTable
from ._h2_conn import PatchedH2Connection, goaway_frame
from ._h2_flow import Stream, flush
from ._h2_guard import Guard, Http2Limits, StreamUnavailable
from ._h2_headers import check_trailers, lift_request, lift_response, request_block
from ._h2_headers import response_block, trailer_block
from .events import (CANCEL, ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR,
                     REFUSED_STREAM, ConnectionEnded, Data, EndStream, Event, Headers,
                     ProtocolError, Reset, RequestHead, ResponseHead, Trailers, WindowOpened)

__all__ = ["H2Codec"]

_DEFAULT_WINDOW = 65535
log = logging.getLogger("meshproxy.codec.http2")
_announced = False  # the backend is logged with the first codec, once logging is set up
_MAX_STREAM_ID = 2**31 - 1


class H2Codec(StreamTable):
    """Sans-IO HTTP/2 connection for ``role`` "server" (downstream) or "client"."""

    def __init__(self, role: str = "server", limits: Http2Limits = Http2Limits()) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        global _announced
        if not _announced:
            _announced = True
            log.debug("HTTP/2 codec backend: h2 (pure Python)")
        self.role = role
        self.limits = limits
        self._client = role == "client"
        self._conn = PatchedH2Connection(
            client_side=self._client,
            max_concurrent_streams=limits.max_concurrent_streams,
            initial_window_size=limits.initial_stream_window,
            max_header_list_size=limits.max_header_list_size,
            max_header_block=2 * limits.max_header_list_size,
            decoder_hard_limit=2 * limits.max_header_list_size,
        )
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, Stream] = {}
        self._out = bytearray()  # our own frames, ahead of anything h2 queues later
        self._dead = False
        self._drain_last = _MAX_STREAM_ID  # server: streams above this are refused
        self._goaway_sent = False
        self._goaway_received = False
        self._guard = Guard(limits)

    # === connection ===

    def initiate(self) -> None:
        """Queue the preface (client) and SETTINGS, then open the connection window."""
        conn = self._conn
        conn.initiate_connection()
        extra = self.limits.initial_connection_window - _DEFAULT_WINDOW
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self._out += conn.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (drains the outbound buffer)."""
        self._guard.control_queued = 0
        if self._out:
            data = bytes(self._out) + self._conn.data_to_send()
            self._out.clear()
            return data
        return self._conn.data_to_send()

    def can_open_stream(self) -> bool:
        """Client role: whether ``send_head`` may open a stream now (no GOAWAY either
        way, the peer's MAX_CONCURRENT_STREAMS not reached, ids left). Until the
        peer's SETTINGS arrive h2 assumes no limit; we assume our own (100), so a new
        connection is not flooded past a limit the server has not told us yet."""
        conn = self._conn
        limit = min(conn.remote_settings.max_concurrent_streams, self.limits.max_concurrent_streams)
        return (not self._dead and not self._goaway_received and not self._goaway_sent
                and len(self._streams) < limit
                and conn.highest_outbound_stream_id < _MAX_STREAM_ID - 2)

    def start_drain(self) -> None:
        """Graceful GOAWAY: the server refuses streams above the highest one it has
        seen and finishes the rest; the client stops opening streams."""
        if self._goaway_sent or self._dead:
            return
        self._goaway_sent = True
        last = 0
        if not self._client:
            last = self._drain_last = self._conn.highest_inbound_stream_id
        self._out += self._conn.data_to_send()
        self._out += goaway_frame(last)

    def close(self, error_code: int = NO_ERROR) -> None:
        """Queue a final GOAWAY; the caller flushes ``data_to_send()`` and closes.
        No events follow; the caller ends its own streams."""
        if self._dead:
            return
        self._dead = True
        try:
            self._conn.close_connection(error_code)
        except H2Error:
            pass

    # === receiving ===

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the transport; return the events they complete."""
        if self._dead:
            return []
        out: list[Event] = []
        try:
            for ev in self._conn.receive_data(data):
                handler = _HANDLERS.get(ev.__class__)
                if handler is not None:
                    handler(self, ev, out)
                    if self._dead:
                        break
        except H2ProtocolError as exc:
            # h2 queued GOAWAY (and went CLOSED) unless the preface itself was bad.
            queued = self._conn.state_machine.state is ConnectionState.CLOSED
            self._die(out, str(exc) or exc.__class__.__name__, int(exc.error_code), queued)
        except Exception as exc:  # noqa: BLE001 - untrusted input must never escape (invariant 1)
            self._die(out, f"internal error: {exc.__class__.__name__}", INTERNAL_ERROR)
        return out

    def receive_eof(self) -> list[Event]:
        """The transport hit EOF: open streams are reset, then ``ConnectionEnded``."""
        if self._dead:
            return []
        self._dead = True
        out: list[Event] = []
        self._reset_all(out, CANCEL)
        out.append(ConnectionEnded())
        return out

    def _on_request(self, ev: h2e.RequestReceived, out: list) -> None:
        sid = ev.stream_id
        self._guard.empty_frames = 0
        if len(self._streams) >= self.limits.max_concurrent_streams or sid > self._drain_last:
            self._send_rst(sid, REFUSED_STREAM, out)
            return
        lim = self.limits
        head = lift_request(sid, ev.headers, ev.stream_ended is not None,
                            lim.max_header_list_size, lim.max_headers_count)
        if head.__class__ is RequestHead and head.end_stream and head.content_length:
            # No content but a content-length that promises some: malformed (RFC
            # 9113 8.1.1), and an HTTP/1 upstream would wait for the body.
            self._send_rst(sid, PROTOCOL_ERROR, out)
            out.append(Reset(sid, PROTOCOL_ERROR, False))
        elif head.__class__ is RequestHead:
            self._streams[sid] = Stream(sid)
            out.append(head)
        elif head == 431:
            st = self._streams[sid] = Stream(sid)
            st.rejected = True
            out.append(ProtocolError(sid, 431, "request header fields too large", False,
                                     NO_ERROR))
        else:
            self._send_rst(sid, PROTOCOL_ERROR, out)
            out.append(Reset(sid, PROTOCOL_ERROR, False))

    def _on_response(self, ev: h2e.ResponseReceived, out: list) -> None:
        st = self._streams.get(ev.stream_id)
        self._guard.empty_frames = 0
        if st is None:
            return
        head = lift_response(st.id, ev.headers, getattr(ev, "stream_ended", None) is not None,
                             self.limits.max_header_list_size, self.limits.max_headers_count)
        if head.__class__ is ResponseHead:
            out.append(head)
        else:
            self._reset_stream(st, PROTOCOL_ERROR, out)
            out.append(Reset(st.id, PROTOCOL_ERROR, False))

    def _on_trailers(self, ev: h2e.TrailersReceived, out: list) -> None:
        st = self._streams.get(ev.stream_id)
        self._guard.empty_frames = 0
        if st is None or st.rejected:
            return
        lim = self.limits
        trailers = check_trailers(ev.headers, lim.max_header_list_size, lim.max_headers_count)
        if trailers.__class__ is str:
            self._reset_stream(st, PROTOCOL_ERROR, out)
            out.append(Reset(st.id, PROTOCOL_ERROR, False))
        else:
            out.append(Trailers(st.id, trailers))

    def _on_data(self, ev: h2e.DataReceived, out: list) -> None:
        sid, data, fcl = ev.stream_id, ev.data, ev.flow_controlled_length
        if not data:
            if ev.stream_ended is None:
                reason = self._guard.empty_frame()
                if reason is not None:
                    self._die(out, reason, ENHANCE_YOUR_CALM)
                    return
            if fcl:
                self._conn.acknowledge_received_data(fcl, sid)  # padding only
            return
        self._guard.empty_frames = 0
        st = self._streams.get(sid)
        if st is None or st.rejected:
            self._conn.acknowledge_received_data(fcl, sid)  # the layer never sees it
            return
        if self._length_mismatch(st, out):
            self._conn.acknowledge_received_data(fcl, sid)
            return
        out.append(Data(sid, data, fcl))

    def _length_mismatch(self, st: Stream, out: list) -> bool:
        """The body disagreed with its content-length (``_h2_conn`` patch 4): reset
        this stream only (RFC 9113 section 8.1.1) and tell the layer above."""
        h2s = self._conn.streams.get(st.id)
        if h2s is None or not getattr(h2s, "length_mismatch", False):
            return False
        self._reset_stream(st, PROTOCOL_ERROR, out)
        out.append(Reset(st.id, PROTOCOL_ERROR, False))
        return True

    def _on_stream_end(self, ev: h2e.StreamEnded, out: list) -> None:
        st = self._streams.get(ev.stream_id)
        if st is None:
            return
        if not st.rejected and self._length_mismatch(st, out):
            return
        st.remote_ended = True
        if not st.rejected:
            out.append(EndStream(st.id))
        if st.local_ended:
            self._forget(st)

    def _on_reset(self, ev: h2e.StreamReset, out: list) -> None:
        st = self._streams.get(ev.stream_id)
        if st is None:
            return
        self._forget(st)
        out.append(Reset(st.id, int(ev.error_code), ev.remote_reset))
        if not self._client and ev.remote_reset and not st.responded:
            reason = self._guard.premature_reset()
            if reason is not None:
                self._die(out, reason, ENHANCE_YOUR_CALM)

    def _on_window(self, ev: h2e.WindowUpdated, out: list) -> None:
        if not self._blocked:
            return
        if ev.stream_id == 0:
            self._flush_blocked(out)
            return
        st = self._blocked.get(ev.stream_id)
        if st is not None:
            before = st.pending
            self._flush(st)
            if st.pending < before or st.local_ended:
                out.append(WindowOpened(st.id))

    def _on_settings(self, ev: h2e.RemoteSettingsChanged, out: list) -> None:
        self._count_control(out)
        changed = ev.changed_settings
        if (SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed) \
                and self._blocked and not self._dead:
            self._flush_blocked(out)

    def _on_ping(self, ev: h2e.PingReceived, out: list) -> None:
        self._count_control(out)

    def _on_goaway(self, ev: h2e.ConnectionTerminated, out: list) -> None:
        self._goaway_received_events(ev.last_stream_id, int(ev.error_code or 0), ev.additional_data, out)

    # === sending ===

    def send_head(self, head: RequestHead | ResponseHead) -> int:
        """Send a head: a ``RequestHead`` (client role; a new stream, whose id is
        allocated when ``head.stream_id`` is 0/None and returned) or a
        ``ResponseHead`` (server role, 1xx or final)."""
        conn = self._conn
        if self._client:
            if not self.can_open_stream():
                raise StreamUnavailable("connection cannot open another stream")
            sid = head.stream_id or conn.get_next_available_stream_id()
            conn.send_headers(sid, request_block(head), end_stream=head.end_stream)
            st = self._streams[sid] = Stream(sid)
            if head.end_stream:
                st.end_requested = True
                self._local_end(st, None)
            return sid
        sid = head.stream_id
        st = self._streams.get(sid)
        if st is None or st.end_requested or self._dead:
            return sid
        conn.send_headers(sid, response_block(head), end_stream=head.end_stream)
        if head.status >= 200:
            st.responded = True
        if head.end_stream:
            st.end_requested = True
            self._local_end(st, None)
        return sid

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send body bytes as the peer's window allows; queue the rest (``pending``)."""
        st = self._streams.get(stream_id)
        if st is None or st.end_requested or self._dead:
            return
        if data:
            st.queue.append(data)
            st.pending += len(data)
        if end_stream:
            st.end_requested = True
        if stream_id not in self._blocked:
            self._flush(st)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """End the stream with trailers, after any queued data."""
        st = self._streams.get(stream_id)
        if st is None or st.end_requested or self._dead:
            return
        st.trailers = trailer_block(headers)
        st.end_requested = True
        if stream_id not in self._blocked:
            self._flush(st)

    def send_reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Reset the stream now; queued data is dropped."""
        st = self._streams.get(stream_id)
        if st is not None and not self._dead:
            self._reset_stream(st, error_code, None)

    def ack(self, stream_id: int, n: int) -> None:
        """``n`` flow-controlled bytes of ``Data`` on ``stream_id`` were passed on;
        hand the window back to the peer (h2 batches WINDOW_UPDATEs)."""
        if n > 0 and not self._dead:
            try:
                self._conn.acknowledge_received_data(n, stream_id)
            except (H2Error, ValueError):
                pass

    def _flush(self, st: Stream) -> None:
        """Send what the windows allow; park ``st`` in ``_blocked`` otherwise."""
        was_ended = st.local_ended
        if not flush(self._conn, st):
            self._blocked[st.id] = st
            return
        self._blocked.pop(st.id, None)
        if st.local_ended and not was_ended:
            self._local_end(st, None)

    def _flush_blocked(self, out: list) -> None:
        """Connection window opened: flush blocked streams in turn (round robin)."""
        conn = self._conn
        for st in list(self._blocked.values()):
            if conn.outbound_flow_control_window <= 0:
                break
            before = st.pending
            del self._blocked[st.id]
            self._flush(st)
            if st.pending < before or st.local_ended:
                out.append(WindowOpened(st.id))

    def _local_end(self, st: Stream, out: list | None) -> None:
        st.local_ended = True  # already set when flush() sent it
        if st.remote_ended:
            self._forget(st)
        elif st.rejected:  # answered locally; the rest of the request is unwanted
            self._reset_stream(st, NO_ERROR, out)

    def _forget(self, st: Stream) -> None:
        if self._streams.pop(st.id, None) is not None:
            self._blocked.pop(st.id, None)
            self._guard.closed += 1

    def _reset_stream(self, st: Stream, code: int, out: list | None) -> None:
        self._forget(st)
        self._send_rst(st.id, code, out)

    def _send_rst(self, sid: int, code: int, out: list | None) -> None:
        """RST_STREAM; counted as a control frame when the peer provoked it."""
        try:
            self._conn.reset_stream(sid, code)
        except H2Error:
            return
        if out is not None:
            self._count_control(out)

    def _count_control(self, out: list) -> None:
        reason = self._guard.control_frame()
        if reason is not None and not self._dead:
            self._die(out, reason, ENHANCE_YOUR_CALM)

    def _reset_all(self, out: list, code: int, remote: bool = True) -> None:
        super()._reset_all(out, code, remote)
        self._blocked.clear()

    def _die(self, out: list, message: str, code: int, queued: bool = False) -> None:
        """Fatal connection error: GOAWAY (already queued by h2 when ``queued``),
        ``ProtocolError``, then a ``Reset`` per open stream (invariant 4)."""
        self._dead = True
        if not queued:
            conn = self._conn
            if code == ENHANCE_YOUR_CALM:  # abuse: do not write the flood back out
                conn.clear_outbound_data_buffer()
            try:
                conn.close_connection(code)
            except H2Error:
                pass
        out.append(ProtocolError(None, 400, message, True, code))
        self._reset_all(out, code, remote=False)


_HANDLERS = {
    h2e.RequestReceived: H2Codec._on_request,
    h2e.ResponseReceived: H2Codec._on_response,
    h2e.InformationalResponseReceived: H2Codec._on_response,
    h2e.TrailersReceived: H2Codec._on_trailers,
    h2e.DataReceived: H2Codec._on_data,
    h2e.StreamEnded: H2Codec._on_stream_end,
    h2e.StreamReset: H2Codec._on_reset,
    h2e.WindowUpdated: H2Codec._on_window,
    h2e.RemoteSettingsChanged: H2Codec._on_settings,
    h2e.PingReceived: H2Codec._on_ping,
    h2e.ConnectionTerminated: H2Codec._on_goaway,
}
