"""A cluster: a named set of endpoints, a load balancer, and per-endpoint counters.

Where this sits: built once per config snapshot by ``upstream/manager.py`` from
``config.routing.Cluster``; ``http/exchange.py`` asks ``pick()`` for an endpoint
and reports each request's outcome so ``/clusters`` can show the counters
Envoy users expect (``cx_total``, ``cx_connect_fail``, ``rq_total``,
``rq_error``, ``rq_active``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.model_types import parse_hostport
from ..config.routing import Cluster as ClusterConfig
from .lb import RoundRobin


@dataclass(slots=True)
class EndpointStats:
    host: str
    port: int
    cx_total: int = 0
    cx_connect_fail: int = 0
    rq_total: int = 0
    rq_error: int = 0
    rq_active: int = 0
    rq_success: int = 0


@dataclass(slots=True)
class Cluster:
    name: str
    protocol: str
    """``auto`` (follow the downstream), ``http1`` or ``http2``."""
    connect_timeout: float
    endpoints: list[EndpointStats]
    lb: RoundRobin[EndpointStats]
    """Chooses among ``endpoints`` (``from_config`` builds it; later balancers plug in here)."""
    mtls_identities: tuple[str, ...] | None = None
    """Mesh peers: mTLS, and the server SPIFFE IDs accepted (None: plaintext)."""

    @classmethod
    def from_config(cls, cfg: ClusterConfig, default_connect_timeout: float) -> "Cluster":
        eps = [EndpointStats(*parse_hostport(e)) for e in cfg.endpoints]
        timeout = cfg.connect_timeout if cfg.connect_timeout is not None else default_connect_timeout
        ids = tuple(cfg.mtls.identities) if cfg.mtls.enabled else None
        return cls(cfg.name, cfg.protocol, timeout, eps, RoundRobin(eps), ids)

    def pick(self) -> EndpointStats:
        return self.lb.pick()

    def find(self, host: str, port: int) -> EndpointStats | None:
        for ep in self.endpoints:
            if ep.host == host and ep.port == port:
                return ep
        return None

    def dump(self) -> dict:
        return {"name": self.name, "protocol": self.protocol,
                "endpoints": [{"address": f"{e.host}:{e.port}", "cx_total": e.cx_total,
                               "cx_connect_fail": e.cx_connect_fail, "rq_total": e.rq_total,
                               "rq_success": e.rq_success, "rq_error": e.rq_error, "rq_active": e.rq_active}
                              for e in self.endpoints]}
