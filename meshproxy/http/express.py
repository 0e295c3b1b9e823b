"""The HTTP/1.1 express lane: plain keep-alive request/response traffic, proxied lean.

Where this sits: ``net/listener.py`` gives a downstream HTTP/1 connection to an
``ExpressServer`` instead of ``http/server.py`` when ``express_eligible`` says
the listener needs nothing per request beyond header hygiene, authorization,
routing, Istio's request metrics and the access log (no tracing, no other
filters; an inbound mTLS peer sidecar is fine: its identity goes into
``x-forwarded-client-cert``, the labels, the policies and the log). Each request is then parsed once,
rewritten in one pass over its fields by ``http/express_heads.py`` (the same
bytes ``http/headers.py`` hygiene and the codec's rendering give), routed by the
same pure router and sent in one write on an ``upstream/express.py`` connection
from the cluster's pool (over mTLS to a mesh peer when HTTP/1.1 stays HTTP/1.1,
``security.h2_upgrade_policy``); the response comes back the same way. No codec
events, exchange or filter-chain objects are made per request: that is what the
general path spends most of its time on.

The lane takes a request only when it is ordinary: one whole HTTP/1.1 request
in one read (head and any Content-Length body, nothing after it), origin-form
target, no Upgrade/CONNECT, no ``Expect``, no chunked body, not gRPC, and its
route leads to an HTTP/1 upstream (not HTTP/2, not a mesh peer spoken to over
HTTP/2), and the inbound authorization policies allow it (``AuthzFilter.allows``,
asked per request with the policies as they are then). Anything else — a head
that arrives in pieces, pipelining, a malformed or over-limit request, a
tunnel, a request the policies deny — is *handed over*: the connection becomes an
``HttpServerConnection`` fed the same bytes, at a message boundary, with
nothing of that request sent anywhere yet. So every error answer, limit and
protocol corner stays the general path's, and the lane only has to be right
for what it takes (``tests/e2e/test_express.py`` runs both lanes side by side;
``tests/unit/http/test_express_heads.py`` checks the one-pass rewriting).

Invariants:
1. One request in flight. Bytes that arrive meanwhile wait (reading paused)
   and are looked at when the response has ended.
2. Flow control: a response body faster than the client reads pauses the
   upstream's reading at the write buffer's high-water mark.
3. Once a response byte went downstream, an upstream failure closes the
   downstream connection (HTTP/1 cannot signal it otherwise); before that it
   is answered with the general path's local reply (503 UF/UC/UR, 502 UPE,
   504 UT).
4. Every request that started is recorded exactly once in the request metrics
   (``_done``), with the same labels and flags as the general path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from ..codec._http1_checks import SPECIAL, Reject, inspect_request, keep_alive
from ..codec._http1_write import LAST_CHUNK, render_fields, render_trailers, status_line
from ..codec.events import RequestHead
from ..codec.http1 import Http1Codec
from ..errors import DOWNSTREAM_CONNECTION_TERMINATION, UPSTREAM_CONNECT_FAILURE, UPSTREAM_REQUEST_TIMEOUT
from ..net.flush import TurnWrites
from ..observe.requests import ConnectionSeries
from ..upstream.pool import Key
from . import headers as hdr
from .express_heads import fields_of, head_lines, plain_request
from .router import PASSTHROUGH
from .server import DEADLINE_SLACK, HIGH_WATER, HttpServerConnection, access_entry

log = logging.getLogger("meshproxy.http")

_new_key = tuple.__new__
_NONE, _FIXED, _CHUNKS = range(3)
"""Downstream response framing: no body, Content-Length, chunked."""


def express_eligible(ctx, conn, h2: bool) -> bool:
    """Whether a downstream connection may start on the express lane (per connection;
    each request is still checked). ``ctx``: the ``HttpContext``; ``conn``: the ``ConnContext``
    (an inbound mTLS peer sidecar's too: its identity goes into x-forwarded-client-cert and
    the metric labels as on the general path)."""
    if h2 or not ctx.http.express or ctx.tracer is not None:
        return False
    return ctx.lane[conn.direction.value][0]  # header hygiene and authorization only, no other filters


class ExpressServer(TurnWrites, asyncio.Protocol):
    """One downstream HTTP/1.1 connection on the express lane."""

    def __init__(self, ctx, conn, target) -> None:
        """``ctx``: the listener's ``HttpContext``; ``conn``: the ``ConnContext``;
        ``target``: the L4 decision (``Forward``) used for passthrough requests."""
        self.ctx = ctx
        self.loop = ctx.loop
        self.conn = conn
        self.target = target
        self.direction = conn.direction.value
        self.reporter = "destination" if self.direction == "inbound" else "source"
        self.peer_ip = conn.peer.host
        self.peer_ip_bytes = self.peer_ip.encode()
        self.inbound = self.direction == "inbound"
        self.peer_info = conn.peer_info
        """``net.mesh.PeerInfo`` of an mTLS peer sidecar, else None."""
        self.principal = conn.peer_info.principal if conn.peer_info is not None else None
        self.destination_port = conn.orig.port if conn.orig is not None else target.upstream.port
        """What authorization policies see of the connection (as ``http/server.py`` has them)."""
        self.scheme = "https" if conn.peer_info is not None else "http"
        self.scheme_b = self.scheme.encode()
        self.xfcc = ((b"x-forwarded-client-cert", ctx.mesh.xfcc(conn.peer_info))
                     if conn.peer_info is not None else None)
        self.xfcc_line = self.xfcc[0] + b": " + self.xfcc[1] + b"\r\n" if self.xfcc is not None else b""
        self.passthrough_service = str(conn.orig) if conn.orig is not None else str(target.upstream)
        self.limits = ctx.h1_limits
        self.parser: HttpRequestParser | None = None
        """One request parser per connection: it is only ever fed whole messages, so each
        request starts it at a message boundary (any parse trouble hands the connection over)."""
        self.transport: Any = None
        """The ``asyncio.Transport``; None until ``connection_made``."""
        self.flusher = ctx.flusher
        self.out_q: list[bytes] = []
        """Response bytes written this loop turn, handed to the transport at its end (``flush``):
        the writes of every connection served in one turn leave back to back, so a peer on the
        other CPU is woken once for them, not once per request (net/flush.py)."""
        self.dirty = False
        self.closed = False
        self.handed = False
        """The connection went to the general path (``_handover``)."""
        self.stash = b""
        """Bytes that arrived while a request was in flight."""
        self.eof = False
        self.last_active = self.loop.time()
        self.recorder = ConnectionSeries(ctx.requests, ctx.me, self.reporter, conn.peer_info)
        self._tick: asyncio.TimerHandle | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        # the request in flight
        self.gen = 0
        """Counts requests taken: a connect that completes for an earlier one is not bound."""
        self.busy = False
        self.up: Any = None
        self.out = b""
        """The rendered request, while its upstream connection is being opened."""
        self.is_head = False
        self.keep = True
        self.started = 0.0
        self.status = 0
        self.flag = "-"
        self.req_bytes = 0
        self.resp_bytes = 0
        self.resp_started = False
        self.framing = _NONE
        self.service = ""
        self.endpoint: Any = None
        self.route: Any = None
        self.request_id: bytes | None = None
        self.deadline = 0.0
        self.grpc_status = "-"
        self.detail = ""
        """What went wrong, for the access log's ``response_code_details`` (as ``Exchange.detail``)."""
        self.log_info: Any = None
        """With the access log on: what its entry needs of the request in flight (``_dispatch``)."""
        self.up_peer: Any = None
        """The peer sidecar that answered over mTLS (``TlsLayer.peer_info``): the destination
        side of a source reporter's labels."""

    # === transport callbacks ===
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, HIGH_WATER // 4)
        self.ctx.connections.add(self)
        self._arm_tick()
        if self.ctx.draining:
            self.drain()

    def data_received(self, data: bytes) -> None:
        if self.busy or self.stash:
            self.stash += data
            self.transport.pause_reading()
            return
        try:
            self._request(data)
        except Exception:  # the per-connection boundary: a bug closes this connection only
            log.exception("internal error on HTTP connection from %s; closing it", self.conn.peer)
            self._abort()

    def eof_received(self):
        if self.handed:
            return True
        self.eof = True
        if self.busy or self.stash:
            return True  # answer what is in flight (or waiting), then close
        self.close()
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self._cancel_timers()
        self._downstream_gone()

    def _downstream_gone(self) -> None:
        """The client went away (or we close on it) with a request in flight: the upstream
        connection cannot be reused and the request ends with DC."""
        if self.busy:
            up, self.up = self.up, None
            if up is not None:
                up.abandon()
            if self.flag == "-":
                self.flag = DOWNSTREAM_CONNECTION_TERMINATION.flag
            self._done()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    # === a request ===
    def _request(self, data: bytes) -> None:
        """One read with no request in flight: take it, or hand the connection over."""
        ctx = self.ctx
        lane_ok, authz = ctx.lane[self.direction]  # as it is now: policies reload
        if not lane_ok:
            return self._handover(data)
        limits = self.limits
        end = data.find(b"\r\n\r\n") + 4
        if end < 4 or end > limits.max_header_bytes or data[0] == 13 or data[0] == 10:
            return self._handover(data)  # in pieces, or over a limit: the general path waits or answers
        head = data if end == len(data) else data[:end]
        le = head.find(b"\r\n")
        if le > limits.max_request_line or head[le - 8:le] != b"HTTP/1.1":
            return self._handover(data)
        parser = self.parser
        if parser is None:
            parser = self.parser = HttpRequestParser(_SILENT)
        try:
            parser.feed_data(data)  # head and body: the parser ends at the message boundary
        except (HttpParserError, HttpParserUpgrade):  # malformed, or an upgrade/CONNECT: the general path's
            return self._handover(data)
        start, lines = head_lines(head)
        sp = start.find(b" ")
        method = start[:sp]
        url = start[sp + 1:-9]  # the start line ends with " HTTP/1.1"
        if url[:1] != b"/" or len(lines) > limits.max_headers:
            return self._handover(data)
        plain = None if (ctx.router.needs_headers or ctx.access_log is not None
                         or (authz is not None and authz.needs_headers)) else plain_request(
            method, url, lines, self.inbound, self.peer_ip_bytes, not limits.reject_underscore_names,
            len(data) - end, self.scheme_b, self.xfcc_line)
        if plain is None:  # something unusual, or the body is not exactly what followed the head
            return self._request_exact(data, head, method, url, fields_of(head, HttpRequestParser), authz)
        out, rid, authority, cl, keep = plain
        if authz is not None and not authz.allows(self.principal, self.peer_ip, self.destination_port, method, url,
                                                  None, authority):
            return self._handover(data)  # denied: the general path answers 403 and counts it
        if cl:
            out += data[end:]
        self._dispatch(data, out, rid, method, authority, url, (), cl, keep)

    def _request_exact(self, data: bytes, head: bytes, method: bytes, url: bytes, fields, authz: Any = None) -> None:
        """``_request`` for a head ``plain_request`` declined: the general path's own checks,
        hygiene and rendering, one by one (the same helpers ``server.py`` and the codec use)."""
        special = [f for f in fields if f[0] in SPECIAL]
        try:
            authority, scheme, cl, chunked, upgrade, expect = inspect_request(
                method, url, "1.1", fields, special, head, self.limits)
        except Reject:
            return self._handover(data)
        end = len(head)
        if chunked or upgrade is not None or expect or len(data) != end + (cl or 0) or _is_grpc(fields):
            return self._handover(data)
        req = RequestHead(0, method, url, authority, fields, "1.1", scheme, keep_alive("1.1", special),
                          None, False, not cl, cl)
        rid = hdr.clean_request(req, direction=self.direction, peer_ip=self.peer_ip, scheme=self.scheme)
        if authz is not None and not authz.allows(self.principal, self.peer_ip, self.destination_port, method, url,
                                                  req.headers, authority):
            return self._handover(data)
        if self.xfcc is not None:
            req.headers.append(self.xfcc)
        headers = list(req.headers)
        hdr.to_http1_request(req)
        codec = Http1Codec("client")  # the general path's rendering, for this rare head
        codec.send_head(req)
        out = codec.data_to_send()
        if cl:
            out += data[end:]
        self._dispatch(data, out, rid, method, authority, url, headers, cl or 0, req.keep_alive)

    def _dispatch(self, data: bytes, out: bytes, rid: bytes, method: bytes, authority, url: bytes, headers,
                  body_len: int, keep: bool) -> None:
        """Route the rendered request ``out`` and send it, unless its route is the general
        path's (a mesh peer, HTTP/2): then hand ``data`` over."""
        ctx = self.ctx
        route = ctx.router.route(method, authority, url, headers)
        ep = None
        if route.cluster == PASSTHROUGH:
            up = self.target.upstream
            host, port = up.host, up.port
            ids = (ctx.mesh.destination_identities(host, port)
                   if ctx.mesh is not None and not self.inbound else None)
            if ids is not None and ctx.h2_upgrade:
                return self._handover(data)  # a mesh peer spoken to over HTTP/2: the general path's job
            service, pool, source, timeout = self.passthrough_service, ctx.pool, self.target.source, \
                ctx.connect_timeout
        else:
            cluster = ctx.clusters[route.cluster]
            ids = cluster.mtls_identities
            if cluster.protocol == "http2" or (ids is not None and ctx.h2_upgrade):
                return self._handover(data)
            ep = cluster.pick()
            ep.rq_total += 1
            ep.rq_active += 1
            host, port = ep.host, ep.port
            service, pool, source, timeout = cluster.name, ctx.pools[cluster.name], None, cluster.connect_timeout
        # the lane takes it: from here on, this request is ours to answer
        self.busy = True
        self.gen += 1
        self.started = now = self.loop.time()
        self.status = 0
        self.flag = "-"
        self.grpc_status = "-"
        self.resp_started = False
        self.resp_bytes = 0
        self.req_bytes = body_len
        self.keep = keep
        self.is_head = method == b"HEAD"
        self.request_id = rid
        self.route = route
        self.endpoint = ep
        self.service = service
        self.detail = ""
        self.up_peer = None
        if ctx.access_log is not None:  # headers: the exact route's, after hygiene (``_request`` takes it)
            self.log_info = (time.time(), method, url, authority, headers, f"{host}:{port}",
                             route.cluster if ep is not None else "PassthroughCluster")
        if route.timeout > 0:
            self.deadline = now + route.timeout
            self._watch_deadline(self.deadline)
        key = _new_key(Key, (host, port, "express", ids))  # ids: HTTP/1.1 over mTLS to a mesh peer
        conn = pool.get(key)
        if conn is not None:
            self.up = conn
            conn.send(self, out, self.is_head)
        else:
            self.out = out
            gen = self.gen
            pool.connect(key, timeout, lambda c, e: self._connected(gen, c, e), source)

    def _connected(self, gen: int, conn, err) -> None:
        if gen != self.gen or not self.busy or self.closed:
            if conn is not None and conn.available():
                conn.pool.release(conn)
            return
        if err is not None:
            self._fail(UPSTREAM_CONNECT_FAILURE, str(err) or type(err).__name__)
            return
        out, self.out = self.out, b""
        self.up = conn
        conn.send(self, out, self.is_head)

    def _handover(self, data: bytes) -> None:
        """Give the connection to the general path, at a message boundary, with ``data``."""
        self.flush()  # earlier responses first
        self.handed = True
        self.closed = True
        self.ctx.connections.discard(self)
        self._cancel_timers()
        transport = self.transport
        srv = HttpServerConnection(self.ctx, self.conn, self.target, False)
        transport.set_protocol(srv)
        srv.connection_made(transport)
        srv.last_active = self.last_active
        if data:
            srv.data_received(data)
        if self.eof and not srv.eof_received():
            srv.close()

    # === the response (called by upstream.express.ExpressConnection) ===
    def response_start(self, status: int, reason: bytes, lines: list[bytes], grpc: bytes | None,
                       cl: int | None, chunked: bool, body: bytes, ended: bool) -> None:
        """The response head: ``lines`` are its field lines as forwarded (hop-by-hop and
        framing fields gone, ``express_heads.plain_response``); ``cl``/``chunked`` the
        upstream's framing; ``body`` the first body bytes; ``ended`` when that was all."""
        if not self.busy or self.closed:
            return
        self.status = status
        self.resp_started = True
        up = self.up
        if up is not None and up.key.identities is not None:
            self.up_peer = up.transport.peer_info()
        if ended and not body and grpc is not None:
            self.grpc_status = grpc.decode("latin-1")
        parts = [status_line(status, reason)]
        parts += lines
        if self.is_head or status == 204 or status == 304:
            self.framing = _NONE
            if cl is not None and status != 204:
                parts.append(b"content-length: %d\r\n" % cl)
        elif cl is not None or (ended and not chunked):
            self.framing = _FIXED
            parts.append(b"content-length: %d\r\n" % (cl or 0))
        else:
            self.framing = _CHUNKS
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep or self.ctx.draining:
            self.keep = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if self.framing == _CHUNKS:
            if body:
                parts += (b"%x\r\n" % len(body), body, b"\r\n")
            if ended:
                parts.append(LAST_CHUNK)
        elif body and self.framing == _FIXED:
            parts.append(body)
        self.resp_bytes = len(body)
        self.queue(b"".join(parts))
        if ended:
            self._response_ended()

    def response_body(self, data: bytes, ended: bool, trailers=None) -> None:
        if not self.busy or self.closed:
            return
        self.resp_bytes += len(data)
        framing = self.framing
        if framing == _CHUNKS:
            out = b"%x\r\n" % len(data) + data + b"\r\n" if data else b""
            if ended:
                if trailers:
                    for k, v in trailers:
                        if k == b"grpc-status":
                            self.grpc_status = v.decode("latin-1")
                    out += render_trailers(trailers)
                else:
                    out += LAST_CHUNK
            if out:
                self.queue(out)
        elif framing == _FIXED and data:
            self.queue(data)
        if ended:
            self._response_ended()

    def upstream_failed(self, kind, message: str) -> None:
        if self.busy:
            self.up = None  # it closed itself
            self._fail(kind, message)

    # === ends ===
    def _response_ended(self) -> None:
        self.up = None
        self._done()
        if not self.keep:
            self.close()
        elif self.stash:
            self.loop.call_soon(self._next)
        elif self.eof:
            self.close()

    def _next(self) -> None:
        """A request waited while the previous one was answered: take it now."""
        if self.closed or self.busy or not self.stash:
            return
        data, self.stash = self.stash, b""
        self.transport.resume_reading()
        try:
            self._request(data)
        except Exception:
            log.exception("internal error on HTTP connection from %s; closing it", self.conn.peer)
            self._abort()
        if self.eof and not self.busy and not self.handed:
            self.close()

    def _fail(self, kind, message: str) -> None:
        if not self.busy:
            return
        self.flag = kind.flag
        self.detail = message
        up, self.up = self.up, None
        if up is not None:
            up.abandon()
        if self.endpoint is not None:
            self.endpoint.rq_error += 1
        if self.resp_started:
            self._done()
            self._abort()
            return
        head, body = hdr.local_reply(0, kind.status, message, kind.flag, http_version="1.1",
                                     request_id=self.request_id)
        lines: list[bytes] = []
        render_fields(lines, head.headers)  # its content-length goes; response_start frames the body
        self.response_start(kind.status, head.reason, lines, None, len(body), False, body, True)

    def _done(self) -> None:
        """Record the finished request (once) and make the connection idle again."""
        self.busy = False
        self.deadline = 0.0
        ep = self.endpoint
        if ep is not None:
            self.endpoint = None
            ep.rq_active -= 1
            if self.flag == "-" and self.status < 500:
                ep.rq_success += 1
        now = self.last_active = self.loop.time()
        duration = (now - self.started) * 1000.0
        self.recorder.observe(self.service, "http" if self.grpc_status == "-" else "grpc", self.status,
                              self.grpc_status, self.flag, duration, self.req_bytes, self.resp_bytes, self.up_peer)
        info = self.log_info
        if info is not None:
            self.log_info = None
            wall, method, url, authority, headers, upstream_host, cluster = info
            self.ctx.access_log.log(access_entry(
                wall, method, url, "HTTP/1.1", self.status, self.flag, self.detail, self.req_bytes, self.resp_bytes,
                duration, headers, self.request_id, authority, upstream_host, cluster, self.route.name, self.conn,
                self.principal))

    # === timeouts, drain, close ===
    def _watch_deadline(self, when: float) -> None:
        """One timer per connection, not cancelled per request: when it fires for a request
        that already ended, it is armed again for the one in flight."""
        t = self._deadline_timer
        if t is None or when < self._deadline_at:
            if t is not None:
                t.cancel()
            self._deadline_at = when
            self._deadline_timer = self.loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        if self.closed or not self.busy or not self.deadline:
            return
        if self.deadline <= self.loop.time() + DEADLINE_SLACK:
            self._fail(UPSTREAM_REQUEST_TIMEOUT, f"no response within {self.route.timeout:g}s")
        else:
            self._watch_deadline(self.deadline)

    def _arm_tick(self) -> None:
        t = self.ctx.http.idle_timeout
        if t > 0 and not self.closed:
            self._tick = self.loop.call_later(max(t / 4, 0.05), self._check_idle)

    def _check_idle(self) -> None:
        self._tick = None
        if self.closed:
            return
        if not self.busy and not self.stash and self.loop.time() - self.last_active >= self.ctx.http.idle_timeout:
            self.close()
            return
        self._arm_tick()

    def _cancel_timers(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def drain(self) -> None:
        """Stop taking requests: close now when idle, else after the response in flight
        (which says ``connection: close``)."""
        if not self.busy:
            self.close()
        elif not self.resp_started:
            self.keep = False
        else:
            self.eof = True

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._cancel_timers()
        self._downstream_gone()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.out_q.clear()
        self.closed = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()


class _Silent:
    """A parser protocol with no callbacks: the request parser only checks each message and
    finds its end; what the lane needs of the head it reads from the head's lines."""


_SILENT = _Silent()


def _is_grpc(fields) -> bool:
    for k, v in fields:
        if k == b"content-type":
            return v.startswith(b"application/grpc")
    return False


