"""Upstream HTTP connections: one codec (HTTP/1.1 or HTTP/2) on one transport,
carrying the upstream half of request exchanges.

Where this sits: ``upstream/pool.py`` opens and keeps these; ``http/exchange.py``
opens a stream on one (``open_stream(handler)``) and drives it through the
returned ``UpStream``. Events from the codec are passed to the stream's handler
(the exchange): ``on_response_head/_data/_trailers/_end``, ``on_upstream_error``
and ``on_upstream_writable``.

Invariants:
1. HTTP/1.1: at most one stream at a time; the connection goes back to the pool
   only after both the request and the response ended cleanly and both sides
   allow keep-alive. After any error it is closed, never reused.
2. HTTP/2: many streams; flow control back to the upstream is explicit: data is
   acknowledged (``consumed``) only once the downstream took it, and not while
   the stream is paused.
3. Output is coalesced through ``net/flush.py``: one write per loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..codec.events import (CANCEL, ConnectionEnded, Data, EndStream, ProtocolError, Reset,
                            ResponseHead, Trailers, WindowOpened)
from ..codec.http1 import Http1Codec
from ..codec.http2 import Http2Codec
from ..errors import UPSTREAM_CONNECTION_TERMINATION, UPSTREAM_PROTOCOL_ERROR
from ..net.flush import BULK

log = logging.getLogger("meshproxy.upstream")

HIGH_WATER = 1024 * 1024
"""Bytes queued for one stream (HTTP/2 window wait) before the producer is paused."""


class UpStream:
    """The upstream half of one exchange. ``handler`` receives the response."""

    __slots__ = ("conn", "sid", "handler", "req_ended", "resp_ended", "paused", "unacked", "closed")

    def __init__(self, conn: Any, handler: Any) -> None:
        self.conn = conn
        """The ``Http1Connection`` or ``Http2Connection`` carrying it."""
        self.sid = 0
        self.handler = handler
        self.req_ended = False
        self.resp_ended = False
        self.paused = False
        self.unacked = 0
        self.closed = False

    def send_head(self, head) -> None:
        self.conn._send_head(self, head)
        if head.end_stream:
            self.req_ended = True

    def send_data(self, data: bytes | memoryview, end: bool = False) -> None:
        if self.closed:
            return
        self.conn.codec.send_data(self.sid, data, end)
        if end:
            self.req_ended = True
        if len(data) >= BULK:
            self.conn.flush()  # bulk: now, so the transport's own flow control sees it (net/flush.py)
        else:
            self.conn.mark()

    def send_trailers(self, headers) -> None:
        if self.closed:
            return
        self.conn.codec.send_trailers(self.sid, headers)
        self.req_ended = True
        self.conn.mark()

    def send_end(self) -> None:
        if self.closed or self.req_ended:
            return
        self.conn.codec.send_end(self.sid)
        self.req_ended = True
        self.conn.mark()
        self.conn._maybe_release(self)

    def reset(self) -> None:
        """Abandon the exchange (downstream went away, timeout)."""
        if self.closed:
            return
        self.closed = True
        self.conn._reset(self)

    def consumed(self, n: int) -> None:
        """The downstream took ``n`` response bytes (HTTP/2 window update unless paused)."""
        if n:
            if self.paused:
                self.unacked += n
            else:
                self.conn._ack(self, n)

    def pause(self) -> None:
        """The downstream is congested: stop reading this stream's response."""
        if not self.paused:
            self.paused = True
            self.conn._pause(self)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.conn._resume(self)

    @property
    def congested(self) -> bool:
        """True while the request body should not be fed faster."""
        return self.conn.write_paused or self.conn.codec.pending(self.sid) > HIGH_WATER


class UpstreamConnection(asyncio.Protocol):
    """Shared parts of both protocols."""

    protocol = ""
    codec: Any
    """The connection's ``Http1Codec`` or ``Http2Codec`` (set by the subclass)."""

    def __init__(self, key: Any, pool: Any, flusher: Any) -> None:
        """``flusher``: the loop's ``net.flush.Flusher``."""
        self.key = key
        self.pool = pool
        self.flusher = flusher
        self.transport: Any = None
        """The ``asyncio.Transport`` once connected."""
        self.dirty = False
        self.write_paused = False
        self.stalled: list = []
        """Exchanges that paused their request body for this connection's congestion: looked
        at again after each ``flush`` (as ``HttpServerConnection.stalled``)."""
        self.closed = False
        self.requests = 0
        """Streams opened on this connection so far."""
        self.idle_since = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def mark(self) -> None:
        if not self.dirty:
            self.flusher.mark(self)

    def flush(self) -> None:
        data = self.codec.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
        if self.stalled:
            stalled, self.stalled = self.stalled, []
            for ex in stalled:
                ex.on_upstream_writable()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for s in self._active():
            s.handler.on_upstream_writable()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.forget(self)
        with self.flusher:
            for s in list(self._active()):
                if not s.resp_ended and not s.closed:
                    s.closed = True
                    s.handler.on_upstream_error(UPSTREAM_CONNECTION_TERMINATION, "upstream connection closed")

    def data_received(self, data: bytes) -> None:
        try:
            self._dispatch(self.codec.receive_data(data))
            self._after_read()
        except Exception:  # the per-connection boundary: a bug closes this connection only
            log.exception("internal error on upstream connection %s:%s; closing it", self.key.host, self.key.port)
            if self.transport is not None:
                self.transport.abort()

    def eof_received(self):
        with self.flusher:
            self._dispatch(self.codec.receive_eof())
        return False

    def _after_read(self) -> None:
        pass

    # --- what each protocol's connection provides --------------------------
    def _active(self) -> list[UpStream]:
        """The streams in flight."""
        raise NotImplementedError

    def _stream(self, sid: int) -> UpStream | None:
        raise NotImplementedError

    def _forget_stream(self, s: UpStream) -> None:
        raise NotImplementedError

    def _maybe_release(self, s: UpStream) -> None:
        raise NotImplementedError

    def _protocol_error(self, ev: ProtocolError) -> None:
        raise NotImplementedError

    def _goaway(self, ev: Any) -> None:
        raise NotImplementedError

    def _dispatch(self, events) -> None:
        for ev in events:
            t = type(ev)
            s = self._stream(ev.stream_id) if t is not ConnectionEnded and t is not ProtocolError else None
            if t is Data:
                if s is not None:
                    s.handler.on_response_data(ev.data, ev.flow_controlled_length)
            elif t is ResponseHead:
                if s is not None:
                    s.handler.on_response_head(ev)
            elif t is EndStream:
                if s is not None:
                    s.resp_ended = True
                    s.handler.on_response_end()
                    self._maybe_release(s)
            elif t is Trailers:
                if s is not None:
                    s.handler.on_response_trailers(ev.headers)
            elif t is Reset:
                if s is not None and not s.resp_ended and not s.closed:
                    s.closed = True
                    self._forget_stream(s)
                    s.handler.on_upstream_reset(ev.error_code)
            elif t is WindowOpened:
                targets = self._active() if ev.stream_id == 0 else ([s] if s is not None else [])
                for st in list(targets):
                    st.handler.on_upstream_writable()
            elif t is ProtocolError:
                self._protocol_error(ev)
            elif t is ConnectionEnded:
                self._goaway(ev)


class Http1Connection(UpstreamConnection):
    protocol = "http1"

    def __init__(self, key, pool, flusher, limits=None) -> None:
        super().__init__(key, pool, flusher)
        self.codec = Http1Codec("client") if limits is None else Http1Codec("client", limits)
        self.stream: UpStream | None = None
        self.reusable = True

    def available(self) -> bool:
        return self.stream is None and not self.closed and self.reusable

    def open_stream(self, handler) -> UpStream:
        s = UpStream(self, handler)
        s.sid = self.codec.next_stream_id()
        self.stream = s
        self.requests += 1
        return s

    def _active(self):
        return [self.stream] if self.stream is not None else []

    def _stream(self, sid):
        s = self.stream
        return s if s is not None and s.sid == sid else None

    def _dispatch(self, events) -> None:
        # The common response (head, body, end in one read) without a lookup per event;
        # anything else takes the general loop.
        s = self.stream
        if (len(events) == 3 and s is not None and type(events[0]) is ResponseHead and type(events[1]) is Data
                and type(events[2]) is EndStream and events[0].stream_id == s.sid == events[2].stream_id):
            h = s.handler
            h.on_response_head(events[0])
            if self.stream is s:  # else the stream is gone: the general loop would skip the rest too
                s.resp_ended = True
                h.on_response_rest(events[1].data)  # on_response_data + on_response_end, one send
                self._maybe_release(s)
            return
        UpstreamConnection._dispatch(self, events)

    def _forget_stream(self, s) -> None:
        if self.stream is s:
            self.stream = None
        self.reusable = False
        self.close()

    def _send_head(self, s: UpStream, head) -> None:
        head.stream_id = s.sid
        self.codec.send_head(head)
        self.mark()

    def _maybe_release(self, s: UpStream) -> None:
        if not (s.req_ended and s.resp_ended) or self.stream is not s:
            return
        self.stream = None
        if s.closed or self.codec.should_close or not self.reusable:
            self.close()
        else:
            self.pool.release(self)

    def _reset(self, s: UpStream) -> None:
        # HTTP/1 cannot cancel one request: the connection goes.
        self.stream = None
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.pool.forget(self)

    def _ack(self, s, n) -> None:
        pass

    def _pause(self, s) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume(self, s) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _protocol_error(self, ev: ProtocolError) -> None:
        self.reusable = False
        s = self.stream
        self.stream = None
        if s is not None and not s.closed:
            s.closed = True
            s.handler.on_upstream_error(UPSTREAM_PROTOCOL_ERROR, ev.message)
        self.close()

    def _goaway(self, ev) -> None:
        self.reusable = False


class Http2Connection(UpstreamConnection):
    protocol = "http2"

    def __init__(self, key, pool, flusher, limits=None) -> None:
        super().__init__(key, pool, flusher)
        self.codec = Http2Codec("client") if limits is None else Http2Codec("client", limits)
        self.streams: dict[int, UpStream] = {}
        self.goaway = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.codec.initiate()
        self.mark()

    def available(self) -> bool:
        return not self.closed and not self.goaway and self.codec.can_open_stream()

    def open_stream(self, handler) -> UpStream:
        self.requests += 1
        return UpStream(self, handler)

    def _active(self):
        return list(self.streams.values())

    def _stream(self, sid):
        return self.streams.get(sid)

    def _forget_stream(self, s) -> None:
        self.streams.pop(s.sid, None)
        self._maybe_idle()

    def _send_head(self, s: UpStream, head) -> None:
        head.stream_id = 0
        s.sid = self.codec.send_head(head)
        self.streams[s.sid] = s
        self.mark()

    def _after_read(self) -> None:
        self.mark()  # window updates, SETTINGS ACKs, PING replies

    def _dispatch(self, events) -> None:
        # A stream's last body chunk and its end in a row (the usual small response, whether
        # its head came in this read or an earlier one) go to the handler as one
        # on_response_rest: one send downstream; with the head right before them, as one
        # on_response_whole. Every other event takes the general loop, in order.
        streams = self.streams
        general = UpstreamConnection._dispatch
        start = i = 0
        last = len(events) - 1
        while i < last:
            data = events[i]
            if type(data) is Data:
                end = events[i + 1]
                sid = data.stream_id
                if type(end) is EndStream and end.stream_id == sid:
                    head = events[i - 1] if i > start else None  # not yet dispatched
                    whole = type(head) is ResponseHead and head.stream_id == sid
                    first = i - 1 if whole else i
                    if start < first:
                        general(self, events[start:first])
                    s = streams.get(sid)
                    if s is not None:  # else gone: the general loop would skip these too
                        s.resp_ended = True
                        if whole:
                            s.handler.on_response_whole(head, data.data, data.flow_controlled_length)
                        else:
                            s.handler.on_response_rest(data.data, data.flow_controlled_length)
                        self._maybe_release(s)
                    i += 2
                    start = i
                    continue
            i += 1
        if start < len(events):
            general(self, events[start:] if start else events)

    def _maybe_release(self, s: UpStream) -> None:
        if s.req_ended and s.resp_ended:
            self.streams.pop(s.sid, None)
            if s.unacked:  # held back while the downstream was congested; nothing more comes
                n, s.unacked = s.unacked, 0
                self._ack(s, n)
            self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.goaway and not self.streams:
            self.close()
        elif not self.streams:
            self.pool.idle_h2(self)

    def _reset(self, s: UpStream) -> None:
        if s.sid:
            self.codec.send_reset(s.sid, CANCEL)
            self.mark()
        self.streams.pop(s.sid, None)
        self._maybe_idle()

    def _ack(self, s, n) -> None:
        self.codec.ack(s.sid, n)
        self.mark()

    def _pause(self, s) -> None:
        pass  # acks are withheld while paused (UpStream.consumed)

    def _resume(self, s) -> None:
        if s.unacked:
            n, s.unacked = s.unacked, 0
            self._ack(s, n)

    def _protocol_error(self, ev: ProtocolError) -> None:
        if ev.connection_fatal:
            self.goaway = True
            for s in list(self.streams.values()):
                if not s.closed and not s.resp_ended:
                    s.closed = True
                    s.handler.on_upstream_error(UPSTREAM_PROTOCOL_ERROR, ev.message)
            self.streams.clear()
            self.close()
        elif ev.stream_id in self.streams:
            s = self.streams.pop(ev.stream_id)
            if not s.closed:
                s.closed = True
                s.handler.on_upstream_error(UPSTREAM_PROTOCOL_ERROR, ev.message)

    def _goaway(self, ev) -> None:
        self.goaway = True
        self.pool.forget(self)
        if not self.streams:
            self.close()
