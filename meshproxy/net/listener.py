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

from ..observe.metrics import Metrics, tcp_labels
from .addrs import Direction, OrigDst, Peer, SockAddr, Upstream
from .decide import Forward, Plan, decide
from .origdst import original_dst
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


class Connections:
    """Every active relay: byte counters flushed into metrics, and the drain wait."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.active: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.add_flusher(self.flush)

    def add(self, relay: Relay) -> None:
        self.active.add(relay)
        self._idle.clear()
        ctx = relay.ctx
        self.metrics.active_connections.labels(ctx.direction.value).inc()
        self.metrics.tcp.connection_opened(ctx.labels)

    def remove(self, relay: Relay) -> None:
        self.active.discard(relay)
        self._flush_one(relay)
        ctx = relay.ctx
        self.metrics.active_connections.labels(ctx.direction.value).dec()
        self.metrics.tcp.connection_closed(ctx.labels, relay.flag)
        if not self.active:
            self._idle.set()

    def _flush_one(self, relay: Relay) -> None:
        rx, tx = relay.received, relay.sent
        if rx != relay.flushed_rx or tx != relay.flushed_tx:
            self.metrics.tcp.add_bytes(relay.ctx.labels, rx - relay.flushed_rx, tx - relay.flushed_tx)
            relay.flushed_rx, relay.flushed_tx = rx, tx

    def flush(self) -> None:
        for relay in self.active:
            self._flush_one(relay)

    async def wait_idle(self) -> None:
        await self._idle.wait()

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


class Listener:
    """Serves one ``ListenerSpec`` on one or more addresses."""

    def __init__(self, spec: ListenerSpec, connections: Connections, metrics: Metrics,
                 origdst: OrigDstLookup = original_dst):
        self.spec = spec
        self.connections = connections
        self.metrics = metrics
        self.origdst = origdst
        self.servers: list[asyncio.AbstractServer] = []
        self.bound: list[SockAddr] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reporter = "destination" if spec.plan.direction is Direction.INBOUND else "source"
        self._refused = metrics.listener_refused

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
            server = await loop.create_server(lambda f=family: self._new_relay(f), sock=sock)
            self.servers.append(server)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        for server in self.servers:
            server.close()

    def _new_relay(self, family: int) -> asyncio.Protocol:
        spec = self.spec
        relay = Relay(self._loop, on_start=lambda r, t: self._started(r, t, family),
                      on_close=self.connections.remove, buffer_limit=spec.buffer_limit,
                      connect_timeout=spec.connect_timeout, idle_timeout=spec.idle_timeout)
        return relay.protocol

    def _started(self, relay: Relay, transport: asyncio.Transport, family: int) -> None:
        spec = self.spec
        local = SockAddr.of(transport.get_extra_info("sockname"))
        peer = Peer.of(transport.get_extra_info("peername"))
        orig = None
        if spec.plan.direction is not Direction.EXPLICIT:
            orig = self.origdst(transport.get_extra_info("socket"), family)
        verdict = decide(spec.plan, local, orig)
        upstream = verdict.upstream if isinstance(verdict, Forward) else None
        service = str(orig) if orig is not None else (str(upstream) if upstream else "unknown")
        policy = "none" if self._reporter == "destination" else "unknown"
        ctx = ConnContext(spec.name, spec.plan.direction, peer, local, orig, upstream,
                          tcp_labels(self.metrics.me, self._reporter, service, policy))
        relay.ctx = ctx
        self.connections.add(relay)
        if isinstance(verdict, Forward):
            relay.connect(verdict.upstream.host, verdict.upstream.port, verdict.source)
        else:
            log.warning("listener %s: refused %s → %s: %s", spec.name, peer, orig, verdict.reason)
            self._refused.labels(spec.plan.direction.value, "loop").inc()
            relay.refuse(verdict.flag)


def transparent_spec(name: str, direction: Direction, addresses, port: int, own_ports, cfg) -> ListenerSpec:
    """A transparent listener's spec from the config (``cfg`` is ``config.model.Config``)."""
    ib = cfg.inbound
    local_hosts = frozenset(h for h in (cfg.node.instance_ip,) if h)
    plan = Plan(direction, frozenset(own_ports), local_hosts, None, ib.app_host, ib.app_host_v6,
                ib.passthrough_source, ib.passthrough_source_v6)
    return ListenerSpec(name, plan, tuple(addresses), port, cfg.tcp.buffer_limit_bytes,
                        cfg.tcp.connect_timeout, cfg.tcp.idle_timeout)


def explicit_spec(lst, cfg) -> ListenerSpec:
    """An explicit listener's spec (``lst`` is ``config.model.ExplicitListener``)."""
    host, port = lst.upstream_addr
    plan = Plan(Direction.EXPLICIT, fixed_upstream=Upstream(host, port))
    return ListenerSpec(lst.name, plan, (lst.address,), lst.port, cfg.tcp.buffer_limit_bytes,
                        cfg.tcp.connect_timeout, cfg.tcp.idle_timeout, optional_v6=False)

