"""The configuration model: every setting, its type, its default and its meaning.

Where this sits: ``config/load.py`` turns a YAML file into a ``Config`` from
this module; ``config/snapshot.py`` wraps it in an immutable ``Snapshot`` that
the rest of the proxy reads. Nothing here touches files or sockets.

Every field has a default, so an empty file (or no file) is a working
sidecar with Istio's conventions: outbound 15001, inbound 15006, admin
127.0.0.1:15000, health 15021, Prometheus 15090, proxy uid/gid 1337.
Models are frozen: a loaded config never changes, a reload builds a new one.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .model_types import Duration, IPAddr, Port, parse_duration, parse_hostport  # noqa: F401 (re-exported)
from .routing import AccessLog, Cluster, Detection, Http, PortDecl, Protocol, Route, Tracing
from .props import ExplicitListenerProps, NodeProps
from .security import Security
from .values import workload_from_pod  # noqa: F401 (re-exported)

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)



class Node(NodeProps, _Model):
    """Who this sidecar serves; feeds metric labels. Defaults come from the
    Kubernetes downward-API environment variables."""

    pod_name: str = Field(default_factory=lambda: os.environ.get("POD_NAME", ""))
    pod_namespace: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE", "") or "default")
    service_account: str = Field(default_factory=lambda: os.environ.get("SERVICE_ACCOUNT", ""))
    instance_ip: str = Field(default_factory=lambda: os.environ.get("INSTANCE_IP", ""))
    workload_name: str = Field(default_factory=lambda: os.environ.get("WORKLOAD_NAME", ""))
    """Defaults to the pod name with its ReplicaSet and pod hashes removed."""
    cluster_id: str = Field(default_factory=lambda: os.environ.get("CLUSTER_ID", "") or "Kubernetes")
    app: str = Field(default_factory=lambda: os.environ.get("APP_NAME", ""))
    """The pod's ``app`` label (Istio's ``source_app``/``destination_app``)."""
    version: str = Field(default_factory=lambda: os.environ.get("APP_VERSION", ""))
    """The pod's ``version`` label."""
    canonical_service: str = Field(default_factory=lambda: os.environ.get("CANONICAL_SERVICE", ""))
    """Istio's canonical service (the pod's ``service.istio.io/canonical-name`` label); defaults to
    ``app``, else the workload name."""
    canonical_revision: str = Field(default_factory=lambda: os.environ.get("CANONICAL_REVISION", ""))
    """Istio's canonical revision (``service.istio.io/canonical-revision``); defaults to ``version``,
    else ``latest``."""


class ProxyIdentity(_Model):
    uid: int = Field(1337, ge=0)
    """The uid whose traffic iptables never redirects (the proxy's own)."""
    gid: int = Field(1337, ge=0)


def _default_addresses() -> list[str]:
    return ["0.0.0.0", "::"]


class Inbound(_Model):
    """Transparent inbound listener: the target of the PREROUTING redirect."""

    enabled: bool = True
    port: Port = 15006
    addresses: list[IPAddr] = Field(default_factory=_default_addresses)
    """Bind addresses; ``::`` is skipped silently where the host has no IPv6."""
    app_host: IPAddr = "127.0.0.1"
    """Where the app listens (IPv4 connections); the original port is kept."""
    app_host_v6: IPAddr = "::1"
    passthrough_source: IPAddr = "127.0.0.6"
    """Source address of the leg to the app, so iptables never captures it again."""
    passthrough_source_v6: IPAddr = "::6"


class Outbound(_Model):
    """Transparent outbound listener: the target of the OUTPUT redirect."""

    enabled: bool = True
    port: Port = 15001
    addresses: list[IPAddr] = Field(default_factory=_default_addresses)


class ExplicitListener(ExplicitListenerProps, _Model):
    """A local address:port bound to a fixed upstream: no iptables, no root."""

    name: str = Field(min_length=1)
    address: IPAddr = "127.0.0.1"
    port: Port
    upstream: str
    """``host:port`` or ``[v6]:port`` of the upstream (where unrouted traffic goes)."""
    protocol: Protocol = "auto"
    """``auto`` detects HTTP and routes it; ``tcp`` relays bytes; ``http`` skips detection."""

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        parse_hostport(v)
        return v


class Endpoint(_Model):
    enabled: bool = True
    address: IPAddr
    port: Port


class Admin(Endpoint):
    """Envoy-style admin API. Localhost only unless configured otherwise."""

    address: IPAddr = "127.0.0.1"
    port: Port = 15000


class Health(Endpoint):
    """``GET /healthz/ready`` for kubelet probes."""

    address: IPAddr = "0.0.0.0"
    port: Port = 15021


class Prometheus(Endpoint):
    """``GET /stats/prometheus`` for scrapers."""

    address: IPAddr = "0.0.0.0"
    port: Port = 15090


class Tcp(_Model):
    connect_timeout: Duration = 10.0
    """Upstream connect timeout (Istio's default 10 s); on expiry the downstream
    is closed with response flag UF."""
    idle_timeout: Duration = 3600.0
    """Close a relayed connection after this long with no bytes either way (0 = never)."""
    buffer_limit_bytes: int = Field(1024 * 1024, ge=1024)
    """Per-connection write buffer high-water mark (Envoy's per_connection_buffer_limit_bytes):
    past it, reading from the other side pauses until the buffer drains to a quarter."""
    bulk_splice: bool = False
    """Move a bulk transfer between two plain TCP sockets into the kernel with splice(2)
    (socket → pipe → socket; HAProxy's ``option splice-auto``, also off by default there): no
    copy through the proxy. Measured here (bench/RESULTS.md): about 25 % less proxy CPU per
    GiB, but a few percent less single-stream throughput on loopback, hence opt-in."""
    bulk_splice_rate_bytes: int = Field(8 * 1024 * 1024, ge=1)
    """A connection counts as bulk once one direction moves this many bytes between two probes."""
    bulk_splice_probe_interval: Duration = Field(0.5, gt=0)
    """How often a relayed plain TCP connection's byte counts are probed for that."""


class Drain(_Model):
    duration: Duration = 5.0
    """On SIGTERM: stop accepting, then wait this long (Istio's terminationDrainDuration)
    while in-flight connections finish; close what is left and exit 0."""
    exit_on_zero_active_connections: bool = False
    """While draining, exit as soon as no connection is active instead of waiting the
    whole duration (Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS)."""


class Reload(_Model):
    """Hot reload of the config file (started with ``--config``)."""

    interval: Duration = 2.0
    """How often the file is checked (0 = only on SIGHUP). Routes, clusters and
    authorization policies take effect for new requests and connections; other
    changes are reported as needing a restart."""


class Log(_Model):
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("expected one of debug, info, warning, error, critical")
        return v


class Config(_Model):
    """The whole configuration. See README "Configuration reference"."""

    node: Node = Field(default_factory=Node)
    proxy: ProxyIdentity = Field(default_factory=ProxyIdentity)
    inbound: Inbound = Field(default_factory=Inbound)
    outbound: Outbound = Field(default_factory=Outbound)
    listeners: list[ExplicitListener] = Field(default_factory=list)
    admin: Admin = Field(default_factory=Admin)
    health: Health = Field(default_factory=Health)
    prometheus: Prometheus = Field(default_factory=Prometheus)
    tcp: Tcp = Field(default_factory=Tcp)
    drain: Drain = Field(default_factory=Drain)
    log: Log = Field(default_factory=Log)
    reload: Reload = Field(default_factory=Reload)
    http: Http = Field(default_factory=Http)
    detection: Detection = Field(default_factory=Detection)
    ports: list[PortDecl] = Field(default_factory=list)
    """Declared port protocols (by original destination port); they skip detection."""
    clusters: list[Cluster] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    """First match wins; unmatched HTTP goes to the original destination."""
    access_log: AccessLog = Field(default_factory=AccessLog)
    tracing: Tracing = Field(default_factory=Tracing)
    security: Security = Field(default_factory=Security)
    """Workload certificate, mTLS to peers, inbound modes, authorization policies."""

    @model_validator(mode="after")
    def _references(self) -> "Config":
        for field, items in (("listeners", self.listeners), ("clusters", self.clusters), ("routes", self.routes)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.name in seen:
                    raise ValueError(f"{field}[{i}].name: duplicate name {item.name!r}")
                seen.add(item.name)
        clusters = {c.name for c in self.clusters}
        for i, route in enumerate(self.routes):
            if route.cluster is not None and route.cluster not in clusters:
                raise ValueError(f"routes[{i}].cluster: no cluster named {route.cluster!r}")
            for j, w in enumerate(route.weighted_clusters):
                if w.cluster not in clusters:
                    raise ValueError(f"routes[{i}].weighted_clusters[{j}].cluster: no cluster named {w.cluster!r}")
        needs_cert = any(c.mtls.enabled for c in self.clusters) or self.security.mesh_destinations
        if needs_cert and not self.security.tls.enabled:
            raise ValueError("security.tls: mTLS to peers is configured, so expected cert_file, key_file "
                             "and bundle_file")
        seen_ports: set[int] = set()
        for i, decl in enumerate(self.ports):
            if decl.port in seen_ports:
                raise ValueError(f"ports[{i}].port: port {decl.port} declared twice")
            seen_ports.add(decl.port)
        return self
