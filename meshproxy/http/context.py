"""Everything the HTTP path shares, built once per config snapshot.

Where this sits: ``app.py`` builds one ``HttpContext`` from the snapshot and
hands it to every listener; ``http/server.py`` connections and their exchanges
read routes, clusters, the pool, the filter chain and the telemetry sinks from
it. Nothing here is per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..codec.http1 import Http1Limits
from ..codec.http2 import Http2Limits
from ..config.model import Config
from ..errors import StartupError
from ..net.flush import flusher_for
from ..observe.metrics import Metrics
from ..upstream.cluster import Cluster
from ..upstream.pool import Pool
from .chain import FilterChain, HeaderHygiene
from .router import Router


class HttpContext:
    def __init__(self, cfg: Config, metrics: Metrics, loop: asyncio.AbstractEventLoop | None = None,
                 mesh=None, authorizer=None):
        self.loop = loop or asyncio.get_running_loop()
        self.mesh = mesh
        """``net.mesh.Mesh`` or None: mTLS to mesh peers and x-forwarded-client-cert."""
        self.h2_upgrade = cfg.security.h2_upgrade_policy == "UPGRADE"
        """HTTP/1.1 to mesh peers goes as HTTP/2 streams (else it stays HTTP/1.1 over mTLS)."""
        self.flusher = flusher_for(self.loop)
        self.http = cfg.http
        self.me = metrics.me
        self.requests = metrics.requests
        self.connect_timeout = cfg.tcp.connect_timeout
        self.metrics = metrics
        self.router = Router(cfg.routes, cfg.http.passthrough_timeout)
        self.clusters = {c.name: Cluster.from_config(c, cfg.tcp.connect_timeout) for c in cfg.clusters}
        self.h1_limits = Http1Limits(
            max_header_bytes=cfg.http.max_request_headers_kb * 1024,
            max_headers=cfg.http.max_headers,
            max_request_line=cfg.http.max_uri_bytes,
            reject_underscore_names=not cfg.http.allow_underscores_in_headers,
        )
        self.h2_limits = Http2Limits(max_concurrent_streams=cfg.http.max_concurrent_streams,
                                     max_header_list_size=cfg.http.max_request_headers_kb * 1024,
                                     max_headers_count=cfg.http.max_headers)
        self.pool = Pool(self.loop, self.flusher, mesh=mesh)
        """Connections for passthrough traffic (to original destinations)."""
        self.cluster_configs = list(cfg.clusters)
        self.pools = {c.name: self._pool(c) for c in cfg.clusters}
        """One pool per cluster, with that cluster's pool settings."""
        self.chains = {d: FilterChain([HeaderHygiene(d)]) for d in ("outbound", "explicit")}
        """One filter chain per direction; later filters (authz, faults, Python filters) append here.
        Each request runs the chain of its direction as it is when the request starts."""
        self.lane: dict[str, tuple[bool, Any]] = {}
        """Per direction, what the express lane (``http/express.py``) must do for each request:
        ``(False, None)`` when the chain holds a filter the lane does not run (its requests take
        the general path), else ``(True, None)`` for header hygiene only or ``(True, authz)``
        with the ``AuthzFilter`` to ask. Rebuilt with the chains."""
        self.set_authorizer(authorizer)
        self.tracer = None
        if cfg.tracing.exporter != "none":
            try:
                from ..observe.tracing import make_tracer
                import opentelemetry.sdk.trace  # noqa: F401
            except ImportError as e:
                raise StartupError(f"tracing.exporter is {cfg.tracing.exporter!r} but OpenTelemetry is not "
                                   f"installed ({e}); install it with: pip install 'meshproxy[otel]'") from None
            name = cfg.tracing.service_name or f"{metrics.me.workload}.{metrics.me.namespace}"
            self.tracer = make_tracer(cfg.tracing, name)
        self.access_log = None
        if cfg.access_log.enabled:
            from ..observe.access_log import make_access_log

            self.access_log = make_access_log(cfg.access_log)
        self.connections: set = set()
        self.draining = False

    def _pool(self, c) -> Pool:
        return Pool(self.loop, self.flusher, c.pool, mesh=self.mesh,
                    on_connect=self._connect_counter(self.clusters[c.name]))

    def set_authorizer(self, authorizer) -> None:
        """(Re)build the inbound chain; requests already running keep the chain they started with."""
        inbound = [HeaderHygiene("inbound")]
        if authorizer is not None:
            from ..authz.filter import AuthzFilter

            metrics = self.metrics
            inbound.append(AuthzFilter(authorizer, lambda decision: metrics.count_authz(decision, "http")))
        self.chains["inbound"] = FilterChain(inbound)
        self.lane = {d: _lane_view(chain) for d, chain in self.chains.items()}

    def set_routing(self, cfg: Config) -> None:
        """Take new routes and clusters: new requests use them, requests in flight keep theirs.
        Pools of clusters whose settings did not change are kept (their connections too)."""
        old = {c.name: c for c in self.cluster_configs}
        self.clusters = {c.name: Cluster.from_config(c, cfg.tcp.connect_timeout) for c in cfg.clusters}
        pools = {}
        for c in cfg.clusters:
            pools[c.name] = self.pools[c.name] if old.get(c.name) == c and c.name in self.pools else self._pool(c)
            if pools[c.name] is self.pools.get(c.name):
                pools[c.name].on_connect = self._connect_counter(self.clusters[c.name])
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.close_idle()
        self.pools = pools
        self.cluster_configs = list(cfg.clusters)
        self.router = Router(cfg.routes, cfg.http.passthrough_timeout)
        self.h2_upgrade = cfg.security.h2_upgrade_policy == "UPGRADE"

    @staticmethod
    def _connect_counter(cluster: Cluster):
        """Per-endpoint ``cx_total`` / ``cx_connect_fail`` for ``/clusters``, once per connect attempt."""
        def count(key, ok: bool) -> None:
            ep = cluster.find(key.host, key.port)
            if ep is not None:
                if ok:
                    ep.cx_total += 1
                else:
                    ep.cx_connect_fail += 1
        return count

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        self.pool.close()
        for pool in self.pools.values():
            pool.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.shutdown()

    def clusters_dump(self) -> list[dict]:
        return [c.dump() for c in self.clusters.values()]


def _lane_view(chain: FilterChain) -> tuple[bool, Any]:
    """``HttpContext.lane`` for one chain: the lane runs header hygiene (its one-pass rewriting)
    and authorization (``AuthzFilter.allows``), nothing else."""
    from ..authz.filter import AuthzFilter

    authz = None
    for f in chain.entries:
        if isinstance(f, AuthzFilter) and authz is None:
            authz = f
        elif not isinstance(f, HeaderHygiene):
            return False, None
    return True, authz
