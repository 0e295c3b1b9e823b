"""One request/response exchange: downstream stream ⇄ filters ⇄ router ⇄ upstream stream.

Where this sits: ``http/server.py`` makes an ``Exchange`` per ``RequestHead``
and feeds it the request's events; the exchange runs the filter chain, asks the
pure router for a route, takes an upstream connection from the pool and then
moves the request one way and the response the other. It is the upstream
stream's handler (``on_response_*``, ``on_upstream_*``).

Invariants:
1. Nothing reaches the upstream before the filters said CONTINUE.
2. Flow control end to end: request bytes are acknowledged to the downstream
   (HTTP/2 window) only when the upstream took them, and the downstream's reading
   pauses while the upstream is congested; the response direction mirrors this.
3. A local reply is only sent before any response byte; after that an error
   resets the stream (HTTP/1: closes the connection).
4. ``_finish`` runs exactly once and records metrics, access log and span.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..codec.events import REFUSED_STREAM, RequestHead, ResponseHead
from ..observe.propagation import extract, inject
from ..errors import (DOWNSTREAM_CONNECTION_TERMINATION, INTERNAL_ERROR, UPSTREAM_CONNECT_FAILURE,
                      UPSTREAM_REQUEST_TIMEOUT, UPSTREAM_RESET, ErrorKind)
from ..upstream.pool import Key
from . import headers as hdr
from .chain import FilterContext, Verdict
from .router import PASSTHROUGH

log = logging.getLogger("meshproxy.http")

BUFFER_LIMIT = 1024 * 1024
"""Request bytes held while the upstream connection is being opened."""

_RESPOND = Verdict.RESPOND
_new_key = tuple.__new__
"""``Key(...)`` without the NamedTuple's Python-level ``__new__``: the same tuple, built in C."""

ORIG_PROTO = b"x-meshproxy-orig-proto"
"""Set by a client sidecar when it carries an HTTP/1.x request over HTTP/2 to a peer sidecar
(linkerd's l5d-orig-proto idea); the peer's inbound side speaks HTTP/1.1 to its app."""


class Exchange:
    __slots__ = ("server", "sid", "head", "started", "wall", "up", "parts", "buffered", "unacked", "req_paused",
                 "req_done", "resp_started", "resp_done", "finished", "status", "flag", "req_bytes", "resp_bytes",
                 "route", "cluster", "endpoint", "deadline", "fctx", "grpc_status", "span",
                 "tunnel", "service", "detail", "orig_proto", "retried", "pool_key", "up_pool",
                 "chain", "up_peer")

    def __init__(self, server, head: RequestHead) -> None:
        self.server = server
        self.sid = head.stream_id
        self.head = head
        self.started = server.loop.time()
        self.wall = 0.0
        self.up: Any = None
        self.parts: list | None = None
        """Request parts that arrived before the upstream stream existed."""
        self.buffered = 0
        self.unacked = 0
        self.req_paused = False
        self.req_done = False
        self.resp_started = False
        self.resp_done = False
        self.finished = False
        self.status = 0
        self.flag = "-"
        self.req_bytes = 0
        self.resp_bytes = 0
        self.route: Any = None
        self.cluster: Any = None
        self.endpoint: Any = None
        self.deadline = 0.0
        """``loop.time()`` by which the response must have ended (0: no timeout running);
        the server's deadline timer checks it (``HttpServerConnection.watch_deadline``)."""
        self.fctx: Any = None
        self.chain: Any = None
        self.up_peer: Any = None
        """The peer sidecar that answered over mTLS (``TlsLayer.peer_info``), for the labels."""
        """The filter chain this request runs (the direction's chain when it started: a policy
        reload applies to the next request on every connection, not to this one)."""
        self.grpc_status = "-"
        self.span: Any = None
        self.tunnel = False
        self.service: str | None = None
        self.detail = ""
        self.retried = False
        self.pool_key: Any = None
        self.up_pool: Any = None
        self.orig_proto: bytes | None = None
        """The app-side protocol a peer sidecar carried over HTTP/2 (``ORIG_PROTO`` header)."""

    # === request side ===================================================
    def start(self) -> None:
        """Filters, routing, upstream selection. A bug here answers 500, never kills the connection."""
        try:
            self._start()
        except Exception:
            log.exception("internal error while starting %s %r", self.head.method, self.head.target)
            if not self.finished:
                self.fail(INTERNAL_ERROR, "internal error")

    def _start(self) -> None:
        srv = self.server
        ctx = srv.ctx
        head = self.head
        if srv.peer_info is not None:  # only a verified peer sidecar may tell us (hygiene strips it after)
            self.orig_proto = hdr.get_header(head.headers, ORIG_PROTO)
        if ctx.access_log is not None:
            self.wall = time.time()
        # positional: (direction, peer, scheme, request_id, route, principal, destination_port)
        fctx = self.fctx = FilterContext(srv.direction, srv.conn.peer, srv.scheme, None, None, srv.principal,
                                         srv.destination_port)
        chain = self.chain = ctx.chains[srv.direction]
        verdict = chain.run_request(fctx, head)
        if verdict is _RESPOND:
            reply = fctx.local_reply
            assert reply is not None  # a filter that answers sets it (http/chain.py)
            self.flag = reply.flag
            self.detail = reply.details
            self._local(reply.status, reply.message, reply.flag)
            return
        if srv.peer_info is not None:
            head.headers.append((b"x-forwarded-client-cert", ctx.mesh.xfcc(srv.peer_info)))
        if head.expect_continue:
            srv.send_continue(self.sid)
            hdr.remove_headers(head.headers, {b"expect"})
        if head.target[:1] != b"/" and head.method != b"CONNECT" and head.target != b"*":
            head.target = _path(head.target)  # absolute-form → origin-form for the upstream
        route = self.route = ctx.router.route(head.method, head.authority, head.target, head.headers)
        fctx.route = route
        if ctx.tracer is not None:
            self.span = ctx.tracer.start(srv.span_kind, head, srv.peer_ip, extract(head.headers), route.name)
            self.span.set_peer(srv.principal)
            head.headers = inject(head.headers, self.span.context())
        ids = None
        if route.cluster == PASSTHROUGH:
            target = srv.target
            host, port = target.upstream.host, target.upstream.port
            self.service = srv.passthrough_service
            proto = srv.protocol
            if self.orig_proto == b"HTTP/1.1":
                proto = "http1"  # the app spoke HTTP/1.1 before the sidecars carried it over HTTP/2
            if ctx.mesh is not None and srv.direction != "inbound":
                ids = ctx.mesh.destination_identities(host, port)
        else:
            cluster = self.cluster = ctx.clusters[route.cluster]
            ep = self.endpoint = cluster.pick()
            ep.rq_total += 1
            ep.rq_active += 1
            host, port = ep.host, ep.port
            self.service = cluster.name
            proto = srv.protocol if cluster.protocol == "auto" else cluster.protocol
            ids = cluster.mtls_identities
        if ids is not None and ctx.h2_upgrade:
            proto = "http2"  # between sidecars: HTTP/2 streams over one mTLS connection (Istio's UPGRADE)
        if head.upgrade is not None and proto == "http2":
            proto = "http1"  # WebSocket/CONNECT: an HTTP/1.1 tunnel (extended CONNECT is not spoken)
        self.pool_key = _new_key(Key, (host, port, proto, ids))
        self.up_pool = ctx.pool if self.cluster is None else ctx.pools[self.cluster.name]
        self._acquire()

    def _acquire(self) -> None:
        """Bind to a ready upstream connection from the pool, or ask the pool for one."""
        conn = self.up_pool.get(self.pool_key)
        if conn is not None:
            self._bind(conn)
        elif self.cluster is not None:
            self.up_pool.connect(self.pool_key, self.cluster.connect_timeout, self._connected)
        else:
            srv = self.server
            self.up_pool.connect(self.pool_key, srv.ctx.connect_timeout, self._connected, srv.target.source)

    @property
    def upstream_host(self) -> str | None:
        """``host:port`` of the upstream chosen (for the access log and the span)."""
        key = self.pool_key
        return f"{key.host}:{key.port}" if key is not None else None

    def _connected(self, conn, err) -> None:
        if self.finished:
            if conn is not None and conn.protocol == "http1" and conn.available():
                conn.pool.release(conn)
            return
        if err is not None:
            self.fail(UPSTREAM_CONNECT_FAILURE, str(err) or type(err).__name__)
            return
        if conn.available():
            self._bind(conn)
        else:  # HTTP/2 connection already full: ask again
            self._acquire()

    def _bind(self, conn) -> None:
        up = self.up = conn.open_stream(self)
        head = self.head
        if conn.protocol == "http1":
            hdr.to_http1_request(head)
        else:
            hdr.to_http2_request(head)
            if conn.key.identities is not None and head.http_version != "2":
                head.headers.append((ORIG_PROTO, b"HTTP/1.1"))  # the peer sidecar speaks HTTP/1.1 to its app
        up.send_head(head)
        parts = self.parts
        if parts:
            self.parts = None
            for kind, value in parts:
                if kind == 0:
                    up.send_data(value)
                elif kind == 1:
                    up.send_trailers(value)
                else:
                    up.send_end()
            self._request_flow()
        elif self.req_done and not head.end_stream:
            up.send_end()
        if self.req_done:
            self._arm_timer()

    def on_request_data(self, data: bytes, flow: int) -> None:
        self.req_bytes += len(data)
        up = self.up
        if up is None:
            if self.finished:
                self.server.consumed(self.sid, flow)
                return
            (self.parts if self.parts is not None else self._new_parts()).append((0, data))
            self.unacked += flow
            self.buffered += len(data)
            if self.buffered > BUFFER_LIMIT and not self.req_paused:
                self.req_paused = True
                self.server.pause_request(self.sid)
            return
        up.send_data(data)
        if up.congested:
            self.unacked += flow
            if not self.req_paused:
                self.req_paused = True
                up.conn.stalled.append(self)
                self.server.pause_request(self.sid)
        elif flow:
            self.server.consumed(self.sid, flow)

    def _new_parts(self) -> list:
        self.parts = []
        return self.parts

    def on_request_trailers(self, headers) -> None:
        if self.up is None:
            if not self.finished:
                (self.parts if self.parts is not None else self._new_parts()).append((1, headers))
        else:
            self.up.send_trailers(headers)

    def on_request_end(self) -> None:
        self.req_done = True
        if self.finished:
            return
        if self.up is None:
            if not self.head.end_stream:
                (self.parts if self.parts is not None else self._new_parts()).append((2, None))
        else:
            self.up.send_end()
            self._arm_timer()
        if self.resp_done:
            self._finish()

    def _request_flow(self) -> None:
        """After buffered parts went upstream: release the downstream if it can flow."""
        if self.up is not None and not self.up.congested:
            if self.req_paused:
                self.req_paused = False
                self.server.resume_request(self.sid)
            if self.unacked:
                n, self.unacked = self.unacked, 0
                self.server.consumed(self.sid, n)

    def on_upstream_writable(self) -> None:
        self._request_flow()

    def on_downstream_reset(self) -> None:
        """The client reset the stream or went away."""
        if self.finished:
            return
        if self.flag == "-":
            self.flag = DOWNSTREAM_CONNECTION_TERMINATION.flag
        if self.up is not None:
            self.up.reset()
        self._finish()

    # === response side ==================================================
    def on_response_head(self, head: ResponseHead) -> None:
        if self._take_head(head):
            self.server.send_head(head, self.head.upgrade is not None)

    def _take_head(self, head: ResponseHead) -> bool:
        """Record a response head and run the response filters on it; False when it is not
        passed on (the exchange is over, or a 1xx other than 101)."""
        if self.finished:
            return False
        status = head.status
        if status < 200 and status != 101:
            return False  # 100-continue was answered locally; other 1xx are dropped
        self.resp_started = True
        self.status = status
        key, up = self.pool_key, self.up
        if key is not None and key.identities is not None and up is not None:  # a peer sidecar answered
            self.up_peer = up.conn.transport.peer_info()
        if self.deadline and (status == 101 or (self.head.method == b"CONNECT" and status < 300)):
            self.deadline = 0.0
            self.tunnel = True
        head.stream_id = self.sid
        head.keep_alive = True
        self.chain.run_response(self.fctx, head)
        if head.end_stream:
            self.grpc_status = _grpc_status(head.headers, self.grpc_status)
        return True

    def on_response_whole(self, head: ResponseHead, data: bytes, flow: int) -> None:
        """A whole response in one upstream read: ``on_response_head(head)`` then
        ``on_response_rest(data, flow)``, with one send downstream (``send_response``).
        Anything but a final answer to a request that has ended takes those two steps."""
        if (self.finished or self.resp_started or head.status < 200 or not self.req_done
                or self.head.upgrade is not None or self.head.method == b"CONNECT"):
            self.on_response_head(head)
            self.on_response_rest(data, flow)
            return
        self._take_head(head)
        self.resp_bytes += len(data)
        self.resp_done = True
        self.server.send_response(head, data)
        if flow:
            self.up.consumed(flow)
        self._finish()

    def on_response_data(self, data: bytes, flow: int) -> None:
        if self.finished:
            return
        self.resp_bytes += len(data)
        srv = self.server
        srv.send_data(self.sid, data)
        up = self.up
        if srv.write_paused or (srv.h2 and srv.congested(self.sid)):
            if not up.paused:
                srv.stalled.append(self)
            up.pause()
        if flow:
            up.consumed(flow)

    def on_downstream_writable(self) -> None:
        up = self.up
        if up is not None and up.paused and not self.server.congested(self.sid):
            up.resume()

    def on_response_trailers(self, headers) -> None:
        if self.finished:
            return
        self.grpc_status = _grpc_status(headers, self.grpc_status)
        self.server.send_trailers(self.sid, headers)
        self.resp_done = True
        if self.req_done or self.tunnel:
            self._finish()

    def on_response_end(self) -> None:
        if self.finished or self.resp_done:
            return
        self.resp_done = True
        self.server.send_end(self.sid)
        self._response_ended()

    def on_response_rest(self, data: bytes, flow: int = 0) -> None:
        """The body and the end of a response that arrived whole in one upstream read:
        ``on_response_data(data, flow)`` then ``on_response_end()``, with one send downstream.
        ``flow`` (HTTP/2) is acknowledged at once, congested downstream or not: nothing more
        can come on the stream to hold back (the general path's held-back bytes are
        acknowledged when the upstream stream is released, so both end alike)."""
        if self.finished:
            return
        if self.resp_done:  # trailers came first: on_response_end would do nothing
            self.on_response_data(data, flow)
            return
        self.resp_bytes += len(data)
        self.resp_done = True
        self.server.send_data(self.sid, data, True)
        if flow:
            self.up.consumed(flow)
        self._response_ended()

    def _response_ended(self) -> None:
        """The response's end was sent: finish, or, on an early response (e.g. an upstream
        413 before the request body is in), stop reading the rest of the request first."""
        if self.req_done or self.tunnel:
            self._finish()
        elif self.up is not None:
            self.up.reset()
            self.server.abandon_request(self.sid)
            self._finish()

    def on_upstream_error(self, kind: ErrorKind, message: str) -> None:
        self.fail(kind, message)

    def on_upstream_reset(self, error_code: int) -> None:
        if self.finished:
            return
        if (error_code == REFUSED_STREAM and not self.resp_started and not self.retried
                and self.req_bytes == 0 and self.req_done):
            # RFC 9113 8.7: a refused stream was not processed; send it again, once, on a fresh stream.
            self.retried = True
            self.up = None
            self._acquire()
            return
        self.fail(UPSTREAM_RESET, f"upstream reset the stream (error code {error_code})")

    # === errors, timeout, end ===========================================
    def _arm_timer(self) -> None:
        timeout = self.route.timeout if self.route is not None else 0
        if timeout > 0 and not self.deadline and not self.resp_done and not self.tunnel:
            srv = self.server
            self.deadline = srv.loop.time() + timeout
            srv.watch_deadline(self.deadline)

    def timed_out(self) -> None:
        """The server's deadline timer found ``deadline`` passed."""
        self.deadline = 0.0
        if not self.finished:
            self.fail(UPSTREAM_REQUEST_TIMEOUT, f"no response within {self.route.timeout:g}s")

    def fail(self, kind: ErrorKind, message: str) -> None:
        if self.finished:
            return
        self.flag = kind.flag
        self.detail = message
        if self.up is not None:
            self.up.reset()
        if self.endpoint is not None:
            self.endpoint.rq_error += 1
        if not self.resp_started:
            self._local(kind.status, message, kind.flag)
        else:
            self.server.reset_stream(self.sid)
            self._finish()

    def _local(self, status: int, message: str, flag: str) -> None:
        srv = self.server
        head, body = hdr.local_reply(self.sid, status, message, flag, http_version=srv.http_version,
                                     request_id=self.fctx.request_id if self.fctx else None,
                                     keep_alive=self.req_done or self.head.end_stream)
        self.resp_started = True
        self.status = status
        srv.send_head(head, self.head.upgrade is not None)
        srv.send_data(self.sid, body, True)
        self.resp_bytes += len(body)
        self.resp_done = True
        if not self.req_done and not self.head.end_stream:  # a body is still coming: HTTP/1 closes after this
            srv.abandon_request(self.sid)
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.deadline = 0.0
        if not self.tunnel:
            # The upstream stream's handler is this exchange: drop our side of that cycle, so
            # reference counting frees both (and the head, fields ...) once the connection
            # lets go of the stream, instead of the cyclic collector after a while. A tunnel
            # keeps it: bytes may still flow one way after the other side ended.
            self.up = None
        ep = self.endpoint
        if ep is not None:
            ep.rq_active -= 1
            if self.flag == "-" and self.status < 500:
                ep.rq_success += 1
        self.server.exchange_done(self)


def _path(target: bytes) -> bytes:
    """Origin-form path of a request target (absolute-form URIs reduced to their path)."""
    if target[:1] == b"/":
        return target
    i = target.find(b"://")
    if i != -1:
        j = target.find(b"/", i + 3)
        return target[j:] if j != -1 else b"/"
    return target


def _grpc_status(headers, current: str) -> str:
    for k, v in headers:
        if k == b"grpc-status":
            return v.decode("latin-1")
    return current
