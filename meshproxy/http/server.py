"""The downstream HTTP connection: codec ⇄ exchanges, plus per-connection timeouts and drain.

Where this sits: ``net/listener.py`` hands a connection here once detection
(or a declared port) says HTTP/1 or HTTP/2 prior knowledge; the peeked bytes
are fed first. Each ``RequestHead`` becomes an ``http/exchange.py`` ``Exchange``;
this class is the exchanges' view of the downstream (``send_*``, flow control)
and records each finished request's metrics, access-log line and span.

Invariants:
1. The codec decides the wire; this class never writes bytes of its own, and it
   writes at most once per loop turn (``net/flush.py``).
2. HTTP/1 protocol errors (400/413/414/431 ...) are answered with a local reply
   and the connection is closed; not one byte of that request went upstream.
3. Draining: HTTP/1 answers the request in flight with ``connection: close``;
   HTTP/2 sends GOAWAY and lets open streams finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..codec.events import (ConnectionEnded, Data, EndStream, ProtocolError, RequestHead, Reset, ResponseHead,
                            Trailers, WindowOpened)
from ..codec.http1 import Http1Codec
from ..codec.http2 import Http2Codec
from ..errors import DOWNSTREAM_PROTOCOL_ERROR, REQUEST_HEADERS_TIMEOUT
from ..net.flush import BULK
from ..observe.requests import ConnectionSeries
from . import headers as hdr
from .exchange import Exchange

log = logging.getLogger("meshproxy.http")

HIGH_WATER = 1024 * 1024
DEADLINE_SLACK = 0.001
"""Timers may fire this early (the loop's clock resolution): a deadline within it has passed."""
MAX_PIPELINED = 16
"""HTTP/1 requests in flight on one connection before reading pauses."""


class HttpServerConnection(asyncio.Protocol):
    def __init__(self, ctx, conn, target, h2: bool) -> None:
        """``ctx``: the listener's ``HttpContext``; ``conn``: the ``ConnContext``;
        ``target``: the L4 decision (``Forward``) used for passthrough requests."""
        self.ctx = ctx
        self.loop = ctx.loop
        self.flusher = ctx.flusher
        self.conn = conn
        self.target = target
        self.h2 = h2
        self.protocol = "http2" if h2 else "http1"
        self.http_version = "2" if h2 else "1.1"
        self.direction = conn.direction.value
        self.reporter = "destination" if self.direction == "inbound" else "source"
        self.span_kind = "server" if self.direction == "inbound" else "client"
        self.peer_ip = conn.peer.host
        self.peer_info = conn.peer_info
        """``net.mesh.PeerInfo`` of an mTLS peer sidecar, else None."""
        self.principal = conn.peer_info.principal if conn.peer_info is not None else None
        self.destination_port = conn.orig.port if conn.orig is not None else target.upstream.port
        self.scheme = "https" if conn.peer_info is not None else "http"
        self.passthrough_service = str(conn.orig) if conn.orig is not None else str(target.upstream)
        self.codec: Any = Http2Codec("server", ctx.h2_limits) if h2 else Http1Codec("server", ctx.h1_limits)
        """``Http1Codec`` or ``Http2Codec``: they share the event vocabulary and the ``send_*`` calls."""
        self.transport: Any = None
        """The ``asyncio.Transport``; None until ``connection_made``."""
        self.exchanges: dict[int, Exchange] = {}
        self.dirty = False
        self.write_paused = False
        self.stalled: list = []
        """Exchanges that paused their upstream for this connection's congestion: looked at
        again after each ``flush`` (what a flush sent may have ended the congestion without
        any event saying so: the window was open, the bytes were only waiting for the turn's end)."""
        self.read_pausers = 0
        self.closed = False
        self.head_since: float | None = None
        self.last_active = self.loop.time()
        self.recorder = ConnectionSeries(ctx.requests, ctx.me, self.reporter, conn.peer_info)
        """This connection's request series: recording a request is one small tuple lookup."""
        self._tick: asyncio.TimerHandle | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        """One timer for every exchange's response deadline: armed for the earliest, never
        cancelled per request (an exchange that ends just clears its ``deadline``)."""
        self._deadline_at = 0.0

    # === transport callbacks =============================================
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, HIGH_WATER // 4)
        self.ctx.connections.add(self)
        if self.h2:
            self.codec.initiate()
            self.mark()
        if self.ctx.draining:
            self.drain()
        self._arm_tick()

    def data_received(self, data: bytes) -> None:
        if self.head_since is None and not self.exchanges:
            self.head_since = self.loop.time()
        try:
            self._handle(self.codec.receive_data(data))
            if self.h2:
                self.mark()
        except Exception:  # the per-connection boundary: a bug closes this connection only
            log.exception("internal error on HTTP connection from %s; closing it", self.conn.peer)
            self.closed = True
            self.transport.abort()

    def eof_received(self):
        with self.flusher:
            self._handle(self.codec.receive_eof())
        if not self.exchanges:
            self.close()
            return False
        return True  # answer what is in flight, then close

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self._tick is not None:
            self._tick.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        with self.flusher:
            for ex in list(self.exchanges.values()):
                ex.on_downstream_reset()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        with self.flusher:
            for ex in list(self.exchanges.values()):
                ex.on_downstream_writable()

    # === codec events ====================================================
    def _handle(self, events) -> None:
        exchanges = self.exchanges
        for ev in events:
            t = type(ev)
            if t is Data:
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.on_request_data(ev.data, ev.flow_controlled_length)
                elif ev.flow_controlled_length:
                    self.codec.ack(ev.stream_id, ev.flow_controlled_length)
            elif t is RequestHead:
                self.head_since = None
                ex = Exchange(self, ev)
                exchanges[ev.stream_id] = ex
                if not self.h2 and len(exchanges) > MAX_PIPELINED:
                    self.pause_request(ev.stream_id)
                ex.start()
                if ev.end_stream and not ex.finished:
                    pass  # EndStream follows as its own event
            elif t is EndStream:
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.on_request_end()
            elif t is Trailers:
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.on_request_trailers(ev.headers)
            elif t is Reset:
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.on_downstream_reset()
            elif t is WindowOpened:
                targets = exchanges.values() if ev.stream_id == 0 else (
                    [exchanges[ev.stream_id]] if ev.stream_id in exchanges else [])
                for ex in list(targets):
                    ex.on_downstream_writable()
            elif t is ProtocolError:
                self._protocol_error(ev)
            elif t is ConnectionEnded:
                if not exchanges:
                    self.close()

    def _protocol_error(self, ev: ProtocolError) -> None:
        if ev.stream_id is not None and (not self.h2 or not ev.connection_fatal):
            head, body = hdr.local_reply(ev.stream_id, ev.status, ev.message, DOWNSTREAM_PROTOCOL_ERROR.flag,
                                         http_version=self.http_version, keep_alive=not ev.connection_fatal)
            self.codec.send_head(head)
            self.codec.send_data(ev.stream_id, body, True)
            self.recorder.observe(self.passthrough_service, "http", ev.status, "-", DOWNSTREAM_PROTOCOL_ERROR.flag,
                                  0.0, 0, len(body))
            if self.ctx.access_log is not None:  # Envoy logs these too (DPE): no request was taken from them
                self.ctx.access_log.log({
                    "start_time": time.time(), "protocol": "HTTP/2" if self.h2 else "HTTP/1.1",
                    "response_code": ev.status, "response_flags": DOWNSTREAM_PROTOCOL_ERROR.flag,
                    "response_code_details": ev.message, "bytes_received": 0, "bytes_sent": len(body),
                    "duration": 0, "downstream_remote_address": str(self.conn.peer),
                    "downstream_local_address": str(self.conn.local), "downstream_peer_uri_san": self.principal})
            log.debug("%s: %d %s", self.conn.peer, ev.status, ev.message)
        self.mark()
        if ev.connection_fatal and (self.h2 or not self.exchanges):
            self.close()  # HTTP/1 with requests in flight: flush() closes once they are answered

    # === what exchanges call ============================================
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
                ex.on_downstream_writable()
        if not self.h2 and not self.exchanges and not self.closed and self.codec.should_close:
            self.close()

    def send_continue(self, sid: int) -> None:
        if self.h2:
            self.codec.send_head(ResponseHead(sid, 100, []))
        else:
            self.codec.send_continue(sid)
        self.mark()

    def send_head(self, head: ResponseHead, upgrade: bool = False) -> None:
        """``upgrade``: the answer to an Upgrade/CONNECT request; the HTTP/1 codec decides
        tunnel-or-not on it, and what it held back is collected here."""
        if self.ctx.draining and not self.h2:
            head.keep_alive = False
        self.codec.send_head(head)
        self.mark()
        if upgrade and not self.h2:
            self._handle(self.codec.receive_data(b""))

    def send_response(self, head: ResponseHead, data: bytes) -> None:
        """``send_head(head)`` then ``send_data(sid, data, True)``: a final response and its
        whole body (not an upgrade's), in one codec call where the codec has one (HTTP/2)."""
        if not self.h2:
            self.send_head(head)
            self.send_data(head.stream_id, data, True)
            return
        self.codec.send_response(head, data)
        self.mark()

    def send_data(self, sid: int, data: bytes | memoryview, end: bool = False) -> None:
        self.codec.send_data(sid, data, end)
        if len(data) >= BULK:
            self.flush()  # bulk: now, so the transport's own flow control sees it (net/flush.py)
        else:
            self.mark()

    def send_trailers(self, sid: int, headers) -> None:
        self.codec.send_trailers(sid, headers)
        self.mark()

    def send_end(self, sid: int) -> None:
        self.codec.send_end(sid)
        self.mark()

    def reset_stream(self, sid: int) -> None:
        """Abort a stream whose response already started (HTTP/1: the connection)."""
        self.codec.send_reset(sid)
        self.mark()
        if not self.h2:
            self.flush()
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def abandon_request(self, sid: int) -> None:
        """The response ended before the request did: HTTP/1 cannot resync, so close after it."""
        if not self.h2:
            self.codec.close_after_current()
        else:
            self.codec.send_reset(sid, 0)  # NO_ERROR: stop sending us the body
        self.mark()

    def consumed(self, sid: int, n: int) -> None:
        if self.h2 and n:
            self.codec.ack(sid, n)
            self.mark()

    def pause_request(self, sid: int) -> None:
        if not self.h2:
            self.read_pausers += 1
            if self.read_pausers == 1 and self.transport is not None:
                self.transport.pause_reading()

    def resume_request(self, sid: int) -> None:
        if not self.h2 and self.read_pausers:
            self.read_pausers -= 1
            if self.read_pausers == 0 and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def congested(self, sid: int) -> bool:
        return self.write_paused or (self.h2 and self.codec.pending(sid) > HIGH_WATER)

    def exchange_done(self, ex: Exchange) -> None:
        if self.exchanges.pop(ex.sid, None) is None:
            return
        if ex.req_paused:
            ex.req_paused = False
            self.resume_request(ex.sid)
        ctx = self.ctx
        now = self.loop.time()
        grpc = ex.grpc_status != "-" or _is_grpc(ex.head)
        duration = (now - ex.started) * 1000.0
        self.recorder.observe(ex.service, "grpc" if grpc else "http", ex.status, ex.grpc_status, ex.flag, duration,
                              ex.req_bytes, ex.resp_bytes, ex.up_peer)
        if ex.span is not None:
            ex.span.end(ex.status, ex.flag, ex.upstream_host, ex.req_bytes, ex.resp_bytes,
                        None if ex.grpc_status == "-" else ex.grpc_status)
        if ctx.access_log is not None:
            ctx.access_log.log(self._log_entry(ex, duration))
        if not self.exchanges:
            self.last_active = now
            if self.h2 and self.ctx.draining:
                self.mark()
                self.close()

    def _log_entry(self, ex: Exchange, duration: float) -> dict:
        h = ex.head
        return access_entry(
            ex.wall, h.method, h.target, "HTTP/2" if self.h2 else f"HTTP/{h.http_version}", ex.status, ex.flag,
            ex.detail, ex.req_bytes, ex.resp_bytes, duration, h.headers,
            ex.fctx.request_id if ex.fctx else None, h.authority, ex.upstream_host,
            ex.cluster.name if ex.cluster is not None else ("PassthroughCluster" if ex.route is not None else None),
            ex.route.name if ex.route is not None else None, self.conn, self.principal)

    # === timeouts, drain, close ==========================================
    def watch_deadline(self, when: float) -> None:
        """An exchange's response must end by ``when`` (``loop.time()``)."""
        t = self._deadline_timer
        if t is None or when < self._deadline_at:
            if t is not None:
                t.cancel()
            self._deadline_at = when
            self._deadline_timer = self.loop.call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._deadline_timer = None
        if self.closed:
            return
        now = self.loop.time() + DEADLINE_SLACK
        later = 0.0
        with self.flusher:
            for ex in list(self.exchanges.values()):
                d = ex.deadline
                if d:
                    if d <= now:
                        ex.timed_out()
                    elif not later or d < later:
                        later = d
        if later and not self.closed:
            self.watch_deadline(later)

    def _arm_tick(self) -> None:
        cfg = self.ctx.http
        periods = [t for t in (cfg.headers_timeout, cfg.idle_timeout) if t > 0]
        if periods and not self.closed:
            self._tick = self.loop.call_later(max(min(periods) / 4, 0.05), self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._tick = None
        if self.closed:
            return
        cfg = self.ctx.http
        now = self.loop.time()
        if not self.exchanges:
            if (not self.h2 and cfg.headers_timeout > 0 and self.head_since is not None
                    and now - self.head_since >= cfg.headers_timeout):
                with self.flusher:
                    self._protocol_error(ProtocolError(self.codec.next_stream_id(), REQUEST_HEADERS_TIMEOUT.status,
                                                       "request headers not received in time"))
                    self.close()
                return
            if self.head_since is None and cfg.idle_timeout > 0 and now - self.last_active >= cfg.idle_timeout:
                self.close()
                return
        self._arm_tick()

    def drain(self) -> None:
        if self.h2:
            self.codec.start_drain()
            self.mark()
            if not self.exchanges:
                self.close()
        elif not self.exchanges:
            self.close()
        else:
            self.codec.close_after_current()

    def close(self) -> None:
        if self.closed:
            return
        data = self.codec.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _is_grpc(head: RequestHead) -> bool:
    for k, v in head.headers:
        if k == b"content-type":
            return v.startswith(b"application/grpc")
    return False


def _get(headers, name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


def access_entry(wall: float, method: bytes, target: bytes, protocol: str, status: int, flag: str, detail: str,
                 req_bytes: int, resp_bytes: int, duration: float, headers, request_id: bytes | None,
                 authority: bytes | None, upstream_host: str | None, cluster: str | None, route: str | None,
                 conn, principal: str | None) -> dict:
    """One finished request's access log entry (``observe/access_log.py`` keys), as both lanes
    write it: ``headers`` are the request's after hygiene; ``cluster`` is the upstream cluster's
    name (``PassthroughCluster`` for passthrough, None when no route was chosen)."""
    return {
        "start_time": wall, "method": method.decode("latin-1"), "path": target.decode("latin-1"),
        "protocol": protocol, "response_code": status, "response_flags": flag,
        "response_code_details": detail or None,
        "bytes_received": req_bytes, "bytes_sent": resp_bytes, "duration": int(duration),
        "x_forwarded_for": _get(headers, b"x-forwarded-for"), "user_agent": _get(headers, b"user-agent"),
        "request_id": request_id.decode("latin-1") if request_id else None,
        "authority": authority.decode("latin-1") if authority else None,
        "upstream_host": upstream_host, "upstream_cluster": cluster, "route_name": route,
        "downstream_remote_address": str(conn.peer), "downstream_local_address": str(conn.local),
        "requested_server_name": None,
        "downstream_peer_uri_san": principal,
    }
