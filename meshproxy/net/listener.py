"""Listeners: accept, find the original destination, decide, relay.

Where this sits: ``app.py`` builds one ``Listener`` per transparent direction
(outbound 15001, inbound 15006) and per explicit listener. For each accepted
connection the listener reads ``SO_ORIGINAL_DST`` (transparent listeners only),
asks the pure ``net/decide.py`` where it goes, and starts a ``net/relay.py``
pair, counting it in ``Connections`` for metrics and drain.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from ..detect.peek import Peeker
from ..detect.sniff import Kind, PortProtocol
from ..errors import RBAC_DENIED
from ..observe.metrics import UNKNOWN, Metrics, istio_labels, tcp_labels
from .mesh_alpn import ALPN_TCP, MESH_ALPNS
from .addrs import Direction, OrigDst, Peer, SockAddr, Upstream
from .decide import Forward, Plan, decide
from .origdst import original_dst
from .kpipe import BulkSplice
from .relay import Relay
from .sockets import ipv6_unavailable, listen_socket

log = logging.getLogger("meshproxy.listener")

OrigDstLookup = Callable[[object, int], "OrigDst | None"]


@dataclass(slots=True)
class ConnContext:
    """What the proxy knows about one accepted connection."""

    listener: str
    direction: Direction
    peer: Peer
    """The client, as seen on the accepted socket."""
    local: SockAddr
    """Our address on the accepted socket (the listener's, after a redirect)."""
    orig: OrigDst | None
    """The client's intended destination (transparent listeners), else None."""
    upstream: Upstream | None = None
    labels: tuple[str, ...] = ()
    """Istio metric label values, computed once per connection."""
    labels_pending: bool = False
    """The labels wait for the peer sidecar's metadata line (outbound mTLS): until ``Connections.settle``
    the connection is neither counted as opened nor its bytes flushed."""
    mesh_mode: str | None = None
    """Inbound with mesh TLS: ``STRICT`` or ``PERMISSIVE`` for this port (None: no mTLS here)."""
    peer_info: object = None
    """``net.mesh.PeerInfo`` once an inbound mTLS peer is verified."""


class Connections:
    """Every active relay: byte counters flushed into metrics, and the drain wait."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.active: set[Relay] = set()
        metrics.add_flusher(self.flush)

    def add(self, relay: Relay) -> None:
        self.active.add(relay)
        ctx = relay.ctx
        self.metrics.active_connections.labels(ctx.direction.value).inc()
        if not ctx.labels_pending:
            self.metrics.tcp.connection_opened(ctx.labels)

    def settle(self, relay: Relay, labels: tuple[str, ...] | None) -> None:
        """The labels of a pending connection are known (None: keep the ones it has): count it
        as opened under them, and from now on its bytes."""
        ctx = relay.ctx
        if ctx.labels_pending:
            ctx.labels_pending = False
            if labels is not None:
                ctx.labels = labels
            self.metrics.tcp.connection_opened(ctx.labels)

    def remove(self, relay: Relay) -> None:
        self.active.discard(relay)
        self.settle(relay, None)  # never heard from the peer (connect failed): counted as it was labelled
        self._flush_one(relay)
        ctx = relay.ctx
        self.metrics.active_connections.labels(ctx.direction.value).dec()
        self.metrics.tcp.connection_closed(ctx.labels, relay.flag)

    def _flush_one(self, relay: Relay) -> None:
        if relay.ctx.labels_pending:
            return
        rx, tx = relay.received, relay.sent
        if rx != relay.flushed_rx or tx != relay.flushed_tx:
            self.metrics.tcp.add_bytes(relay.ctx.labels, rx - relay.flushed_rx, tx - relay.flushed_tx)
            relay.flushed_rx, relay.flushed_tx = rx, tx

    def flush(self) -> None:
        for relay in self.active:
            self._flush_one(relay)

    def abort_all(self) -> None:
        for relay in list(self.active):
            relay.abort()


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """How to build a listener (derived from config once)."""

    name: str
    plan: Plan
    addresses: tuple[str, ...]
    port: int
    buffer_limit: int
    connect_timeout: float
    idle_timeout: float
    optional_v6: bool = True
    """Skip ``::`` silently when the host has no IPv6."""
    protocol: str = "auto"
    """``auto`` (declared ports, server-first ports, else detection), ``tcp`` or ``http``."""
    declared: tuple[tuple[int, PortProtocol], ...] = ()
    """Declared port protocols, by destination port."""
    server_first: frozenset[int] = frozenset()
    detect_timeout: float = 5.0
    bulk: BulkSplice | None = None
    """When relayed bulk transfers move to splice(2) (None: never)."""


class _Accepted(asyncio.Protocol):
    """The protocol a new connection starts with: it only hands the transport to its listener."""

    __slots__ = ("listener", "family")

    def __init__(self, listener: "Listener", family: int):
        self.listener = listener
        self.family = family

    def connection_made(self, transport) -> None:
        self.listener._accepted(transport, self.family)


class Listener:
    """Serves one ``ListenerSpec`` on one or more addresses.

    For each connection: original destination → ``decide`` → by the port's
    protocol, an L4 relay, the HTTP server, or a ``Peeker`` that detects which."""

    def __init__(self, spec: ListenerSpec, connections: Connections, metrics: Metrics,
                 origdst: OrigDstLookup = original_dst, http=None, mesh=None, authorizer=None):
        self.spec = spec
        self.connections = connections
        self.metrics = metrics
        self.origdst = origdst
        self.http = http
        """The ``http.context.HttpContext`` (None: every connection is relayed as TCP)."""
        self.mesh = mesh
        """``net.mesh.Mesh`` when the workload has a certificate (None: no mTLS)."""
        self.authorizer = authorizer if spec.plan.direction is Direction.INBOUND else None
        """``authz.engine.Authorizer`` for inbound TCP connections (HTTP is checked per request)."""
        self.servers: list[asyncio.AbstractServer] = []
        self.bound: list[SockAddr] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reporter = "destination" if spec.plan.direction is Direction.INBOUND else "source"
        self._policy = "none" if self._reporter == "destination" else "unknown"
        self._refused = metrics.listener_refused
        self._declared = dict(spec.declared)
        self._detected = metrics.protocol_detection

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        spec = self.spec
        for host in spec.addresses:
            try:
                sock = listen_socket(host, spec.port)
            except OSError as e:
                if ":" in host and spec.optional_v6 and ipv6_unavailable(e):
                    log.info("listener %s: no IPv6 here, not binding [%s]:%d", spec.name, host, spec.port)
                    continue
                raise OSError(e.errno, f"listener {spec.name}: cannot bind {host}:{spec.port}: {e.strerror}") from None
            family = sock.family
            self.bound.append(SockAddr.of(sock.getsockname()))
            server = await loop.create_server(lambda f=family: _Accepted(self, f), sock=sock)
            self.servers.append(server)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        for server in self.servers:
            server.close()

    # -- per connection ---------------------------------------------------
    def _accepted(self, transport: asyncio.Transport, family: int) -> None:
        spec = self.spec
        local = SockAddr.of(transport.get_extra_info("sockname"))
        peer = Peer.of(transport.get_extra_info("peername"))
        orig = None
        if spec.plan.direction is not Direction.EXPLICIT:
            orig = self.origdst(transport.get_extra_info("socket"), family)
        verdict = decide(spec.plan, local, orig)
        if not isinstance(verdict, Forward):
            ctx = ConnContext(spec.name, spec.plan.direction, peer, local, orig)
            self._refuse(ctx, transport, f"→ {orig}: {verdict.reason}", verdict.flag, "loop", logging.WARNING)
            return
        ctx = ConnContext(spec.name, spec.plan.direction, peer, local, orig, verdict.upstream)
        port = orig.port if orig is not None else verdict.upstream.port
        if self.mesh is not None and spec.plan.direction is Direction.INBOUND:
            mesh_mode = self.mesh.inbound_mode(port)
            ctx.mesh_mode = mesh_mode if mesh_mode != "DISABLE" else None
        mode = "detect" if ctx.mesh_mode is not None else self._mode(port)
        if mode == "tcp":
            self._relay_to(ctx, verdict, transport, b"", False)
        elif mode == "h2":
            self._count("declared")
            self._serve_http(ctx, verdict, transport, b"", False, True)
        else:
            transport.set_protocol(Peeker(
                self._loop, transport, spec.detect_timeout,
                lambda t, kind, peeked, eof: self._detected_as(ctx, verdict, t, kind, peeked, eof),
                lambda: None, http_only=mode == "http"))

    def _mode(self, port: int) -> str:
        """``tcp``, ``h2`` (prior knowledge), ``http`` (declared: tell H1 from H2) or ``detect``."""
        spec = self.spec
        if self.http is None or spec.protocol == "tcp":
            return "tcp"
        if spec.protocol == "http":
            return "http"
        declared = self._declared.get(port)
        if declared is not None:
            if declared.is_h2:
                return "h2"
            if declared.is_http:
                return "http"
            self._count("declared")
            return "tcp"
        if port in spec.server_first:
            self._count("server_first")
            return "tcp"
        return "detect"

    def _detected_as(self, ctx, verdict, transport, result, peeked: bytes, eof: bool) -> None:
        kind = result if isinstance(result, str) else result.kind
        if ctx.mesh_mode is not None:
            if kind is Kind.TLS and any(a in MESH_ALPNS for a in result.alpn):
                self._count("mtls")
                from .inbound_mtls import terminate_mtls  # TLS code loads only where mTLS is configured

                terminate_mtls(self, ctx, verdict, transport, peeked)
                return
            if ctx.mesh_mode == "STRICT":
                self._count("refused_plaintext")
                self.metrics.mtls_failures.labels("inbound", "not_mtls_in_strict").inc()
                self._refuse(ctx, transport, "not mTLS on a STRICT port", "NR", "not_mtls")
                return
        if kind is Kind.H1 or kind is Kind.H2:
            self._count("http2" if kind is Kind.H2 else "http1")
            self._serve_http(ctx, verdict, transport, peeked, eof, kind is Kind.H2)
            return
        self._count(kind if isinstance(kind, str) else kind.value)
        self._relay_to(ctx, verdict, transport, peeked, eof)

    def _count(self, outcome: str) -> None:
        self._detected.labels(self.spec.plan.direction.value, outcome).inc()

    def _relay(self, ctx: ConnContext) -> Relay:
        spec = self.spec
        relay = Relay(self._loop, on_close=self.connections.remove, buffer_limit=spec.buffer_limit,
                      connect_timeout=spec.connect_timeout, idle_timeout=spec.idle_timeout, bulk=spec.bulk)
        relay.ctx = ctx
        self.connections.add(relay)
        return relay

    def _refuse(self, ctx: ConnContext, transport, reason: str, flag: str, why: str,
                level: int = logging.INFO) -> None:
        """Close without forwarding, counted as a TCP connection with ``flag`` and in
        ``meshproxy_listener_refused_connections_total{reason=why}``."""
        service = str(ctx.orig) if ctx.orig is not None else "unknown"
        ctx.labels = ctx.labels or tcp_labels(self.metrics.me, self._reporter, service, self._policy)
        log.log(level, "listener %s: refused %s %s", self.spec.name, ctx.peer, reason)
        self._refused.labels(self.spec.plan.direction.value, why).inc()
        relay = self._relay(ctx)
        relay.attach(transport)
        relay.refuse(flag)

    def _relay_to(self, ctx: ConnContext, verdict: Forward, transport, peeked: bytes, eof: bool) -> None:
        service = str(ctx.orig) if ctx.orig is not None else str(verdict.upstream)
        peer = ctx.peer_info
        ctx.labels = istio_labels(self.metrics.me, self._reporter, service, "tcp",
                                  "mutual_tls" if peer is not None else self._policy,
                                  peer.principal if peer is not None else UNKNOWN,
                                  peer.namespace if peer is not None else None,
                                  peer.metadata if peer is not None else (UNKNOWN,) * 6)
        if self.authorizer is not None:
            from ..authz.filter import check_tcp

            decision = check_tcp(self.authorizer, peer.principal if peer is not None else None,
                                 ctx.peer.host, ctx.orig.port if ctx.orig is not None else verdict.upstream.port)
            self.metrics.count_authz(decision, "tcp")
            if not decision.allowed:
                self._refuse(ctx, transport, f"denied by authorization policy {decision.policy}", RBAC_DENIED.flag,
                             "rbac")
                return
        up = verdict.upstream
        ids = None
        if self.mesh is not None and self.spec.plan.direction is not Direction.INBOUND:
            ids = self.mesh.destination_identities(up.host, up.port)
        ctx.labels_pending = ids is not None  # a peer sidecar: its metadata line names the destination
        relay = self._relay(ctx)
        relay.attach(transport, peeked, eof)
        if ids is None:
            relay.connect(up.host, up.port, verdict.source)
        else:
            mesh = self.mesh
            relay.connect(up.host, up.port, verdict.source, ssl=mesh.client_ctx[ALPN_TCP],
                          verify=lambda sslobj: mesh.verify(sslobj, ids), hello=mesh.hello,
                          on_peer=lambda info: self._peer_known(relay, service, info))

    def _peer_known(self, relay: Relay, service: str, info) -> None:
        """Outbound mTLS: the peer sidecar named itself; label the connection with it (Istio's
        destination_principal, workload, app, version, cluster of a source reporter)."""
        labels = None
        if info is not None:
            labels = istio_labels(self.metrics.me, self._reporter, service, "tcp", self._policy, info.principal,
                                  info.namespace, info.metadata)
        self.connections.settle(relay, labels)

    def _serve_http(self, ctx, verdict, transport, peeked: bytes, eof: bool, h2: bool) -> None:
        from ..http.express import ExpressServer, express_eligible
        from ..http.server import HttpServerConnection

        if express_eligible(self.http, ctx, h2):
            conn = ExpressServer(self.http, ctx, verdict)
        else:
            conn = HttpServerConnection(self.http, ctx, verdict, h2)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if peeked:
            conn.data_received(peeked)
        if eof:
            if not conn.eof_received():
                transport.close()


def _detection(cfg) -> dict:
    declared = tuple((d.port, PortProtocol.parse(d.protocol)) for d in cfg.ports)
    tcp = cfg.tcp
    bulk = (BulkSplice(tcp.bulk_splice_rate_bytes, tcp.bulk_splice_probe_interval,
                       min(tcp.buffer_limit_bytes, 1 << 20)) if tcp.bulk_splice else None)
    return {"declared": declared, "server_first": frozenset(cfg.detection.server_first_ports),
            "detect_timeout": cfg.detection.timeout, "bulk": bulk}


def transparent_spec(name: str, direction: Direction, addresses, port: int, own_ports, cfg) -> ListenerSpec:
    """A transparent listener's spec from the config (``cfg`` is ``config.model.Config``)."""
    ib = cfg.inbound
    local_hosts = frozenset(h for h in (cfg.node.instance_ip,) if h)
    plan = Plan(direction, frozenset(own_ports), local_hosts, None, ib.app_host, ib.app_host_v6,
                ib.passthrough_source, ib.passthrough_source_v6)
    return ListenerSpec(name, plan, tuple(addresses), port, cfg.tcp.buffer_limit_bytes,
                        cfg.tcp.connect_timeout, cfg.tcp.idle_timeout, **_detection(cfg))


def explicit_spec(lst, cfg) -> ListenerSpec:
    """An explicit listener's spec (``lst`` is ``config.model.ExplicitListener``)."""
    host, port = lst.upstream_addr
    plan = Plan(Direction.EXPLICIT, fixed_upstream=Upstream(host, port))
    return ListenerSpec(lst.name, plan, (lst.address,), lst.port, cfg.tcp.buffer_limit_bytes,
                        cfg.tcp.connect_timeout, cfg.tcp.idle_timeout, optional_v6=False,
                        protocol=lst.protocol, **_detection(cfg))

