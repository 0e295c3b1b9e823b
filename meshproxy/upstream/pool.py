"""Upstream connection pools, keyed by (host, port, protocol).

Where this sits: ``http/exchange.py`` asks ``Pool.get(key)`` for a ready
connection (the fast, synchronous path: an idle HTTP/1.1 keep-alive connection,
or an HTTP/2 connection with a free stream) and otherwise ``Pool.connect(key,
...)`` with a callback. ``upstream/client.py`` connections report back with
``release`` (HTTP/1 idle again), ``idle_h2`` and ``forget`` (closed or no longer
usable).

Invariants:
1. A connection is in at most one list, and only while usable.
2. HTTP/1: at most ``max_idle`` idle connections per key; idle ones are closed
   after ``idle_timeout``; a connection that saw an error is never returned.
3. HTTP/2: requests that arrive while a connection to the same key is being
   opened wait for it instead of opening one each; a new connection is opened
   when every existing one is at its peer's max concurrent streams.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, NamedTuple

from ..config.routing import Pool as PoolConfig
from ..net.flush import Flusher
from .client import Http1Connection, Http2Connection, UpstreamConnection
from .express import ExpressConnection

log = logging.getLogger("meshproxy.pool")


class Key(NamedTuple):
    """Which connections may carry a request. A tuple, so the pool's dict lookups hash and
    compare it in C (a frozen dataclass runs Python ``__hash__``/``__eq__`` per request)."""

    host: str
    port: int
    protocol: str
    """``http1`` or ``http2`` (the general path's connections), or ``express`` (HTTP/1.1
    connections of the express lane, ``upstream/express.py``; kept apart from ``http1``)."""
    identities: tuple[str, ...] | None = None
    """Mesh peer: connect over mTLS and require one of these server SPIFFE IDs (None: plaintext)."""


Callback = Callable[["UpstreamConnection | None", "BaseException | None"], None]


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, flusher: Flusher, cfg: PoolConfig | None = None,
                 h1_limits=None, h2_limits=None, on_connect: Callable[[Key, bool], None] | None = None,
                 mesh=None) -> None:
        self.loop = loop
        self.mesh = mesh
        """``net.mesh.Mesh``: client TLS contexts and peer verification for mesh keys."""
        self.flusher = flusher
        self.cfg = cfg or PoolConfig()  # type: ignore[call-arg]  # pydantic fills the defaults
        self.h1_limits = h1_limits
        self.h2_limits = h2_limits
        self.on_connect = on_connect
        """Called with (key, ok) after each connect attempt (for cluster stats)."""
        self.idle: dict[Key, list[Any]] = {}
        """Idle HTTP/1.1 connections per key: ``Http1Connection`` or, for the express lane,
        ``upstream.express.ExpressConnection``."""
        self.h2: dict[Key, list[Http2Connection]] = {}
        self.connecting: dict[Key, list[Callback]] = {}
        """HTTP/2 keys with a connect in flight, and who waits for it."""
        self.all: set[Any] = set()
        """Every open connection, of any of the three kinds."""
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # -- fast path ------------------------------------------------------------
    def get(self, key: Key) -> Any:
        if key.protocol != "http2":
            conns = self.idle.get(key)
            while conns:
                conn = conns.pop()
                if conn.available():
                    return conn
            return None
        for h2conn in self.h2.get(key, ()):
            if h2conn.available():
                return h2conn
        return None

    # -- slow path ------------------------------------------------------------
    def connect(self, key: Key, timeout: float, done: Callback, source: str | None = None) -> None:
        """Open a connection; ``done(conn, None)`` or ``done(None, error)`` later."""
        if key.protocol == "http2":
            waiting = self.connecting.get(key)
            if waiting is not None:
                waiting.append(done)
                return
            self.connecting[key] = [done]
        self.loop.create_task(self._connect(key, timeout, done, source))

    async def _connect(self, key: Key, timeout: float, done: Callback, source: str | None) -> None:
        if key.protocol == "http2":
            conn: Any = Http2Connection(key, self, self.flusher, self.h2_limits)
        elif key.protocol == "express":
            conn = ExpressConnection(key, self, self.h1_limits)
        else:
            conn = Http1Connection(key, self, self.flusher, self.h1_limits)
        try:
            if key.identities is None:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda: conn, key.host, key.port, local_addr=(source, 0) if source else None), timeout)
            else:  # a mesh peer: mTLS, its identity checked before our handshake completes
                from ..net.mesh_alpn import ALPN_H2, ALPN_HTTP1
                from ..net.tls_layer import connect_tls

                ctx = self.mesh.client_ctx[ALPN_H2 if key.protocol == "http2" else ALPN_HTTP1]
                ids = key.identities
                layer = await asyncio.wait_for(connect_tls(
                    self.loop, key.host, key.port, ctx, lambda sslobj: self.mesh.verify(sslobj, ids),
                    (source, 0) if source else None, self.mesh.hello), timeout)
                layer.attach(conn)
        except Exception as e:  # refused, unreachable, timeout, TLS or peer identity failure
            if conn.transport is not None:
                conn.transport.abort()
            err: BaseException = TimeoutError(f"connect timeout after {timeout:g}s") if isinstance(
                e, asyncio.TimeoutError) else e
            if self.on_connect:
                self.on_connect(key, False)
            self._finish(key, done, None, err)
            return
        if self.on_connect:
            self.on_connect(key, True)
        self.all.add(conn)
        if key.protocol == "http2":
            self.h2.setdefault(key, []).append(conn)
        self._ensure_sweeper()
        self._finish(key, done, conn, None)

    def _finish(self, key: Key, done: Callback, conn, err) -> None:
        with self.flusher:
            if key.protocol == "http2":
                for cb in self.connecting.pop(key, [done]):
                    cb(conn, err)
            else:
                done(conn, err)

    # -- reports from connections ---------------------------------------------
    def release(self, conn: Any) -> None:
        """An HTTP/1 connection finished an exchange cleanly and may be reused."""
        max_req = self.cfg.max_requests_per_connection
        if self.closed or (max_req and conn.requests >= max_req):
            conn.close()
            return
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) >= self.cfg.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def idle_h2(self, conn: Http2Connection) -> None:
        conn.idle_since = self.loop.time()

    def forget(self, conn: Any) -> None:
        self.all.discard(conn)
        if conn.protocol != "http2":
            idle = self.idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
        else:
            conns = self.h2.get(conn.key)
            if conns and conn in conns:
                conns.remove(conn)

    # -- housekeeping ---------------------------------------------------------
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and self.cfg.idle_timeout > 0 and not self.closed:
            self._sweeper = self.loop.call_later(max(self.cfg.idle_timeout / 2, 0.05), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.cfg.idle_timeout
        for conns in list(self.idle.values()):
            for conn in [c for c in conns if c.idle_since <= cutoff]:
                conn.close()
        for h2conns in list(self.h2.values()):
            for h2conn in [c for c in h2conns if not c.streams and c.idle_since and c.idle_since <= cutoff]:
                h2conn.close()
        if self.all:
            self._ensure_sweeper()

    def close_idle(self) -> None:
        """The pool is being replaced (config reload): close idle connections now and
        every busy one when its exchange ends."""
        self.closed = True
        for conns in list(self.idle.values()):
            for conn in list(conns):
                conn.close()
        for h2conns in list(self.h2.values()):
            for h2conn in list(h2conns):
                h2conn.goaway = True
                if not h2conn.streams:
                    h2conn.close()

    def close(self) -> None:
        """Close every connection (shutdown)."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.all):
            if conn.protocol == "http2":
                conn.codec.close()
            conn.close()
