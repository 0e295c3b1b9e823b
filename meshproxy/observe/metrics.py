"""Every metric meshproxy exports, named in this one module, with Istio's names and labels.

Where this sits: beside the data flow. ``net/relay.py`` counts bytes in plain
ints on the byte path; ``TcpMetrics`` turns them into Prometheus counters when a
connection opens, closes, and on each flush (periodic, and before every scrape),
so no Prometheus lock is taken per read. ``admin/server.py`` renders the registry.

Each ``Metrics`` owns its own ``CollectorRegistry``, so several proxies can live
in one test process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from ..config.model import Node


# Istio's standard labels (https://istio.io/latest/docs/reference/config/metrics/), in order.
ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "connection_security_policy",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_canonical_service",
    "destination_canonical_revision",
)
UNKNOWN = "unknown"

disable_created_metrics()  # no *_created series: Istio/Envoy do not export them


@dataclass(frozen=True, slots=True)
class Peerless:
    """The labels describing this workload (one side of every label set)."""

    workload: str
    namespace: str
    app: str
    version: str
    cluster: str
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN

    @classmethod
    def of(cls, node: Node) -> "Peerless":
        return cls(node.workload, node.pod_namespace, node.app or UNKNOWN,
                   node.version or UNKNOWN, node.cluster_id, node.service_name, node.revision)


def istio_labels(me: Peerless, reporter: str, destination_service: str, protocol: str,
                 security_policy: str = UNKNOWN, peer_principal: str = UNKNOWN,
                 peer_namespace: str | None = None,
                 peer_metadata: tuple[str, ...] = (UNKNOWN,) * 6) -> tuple[str, ...]:
    """Istio's label values for one connection, in ``ISTIO_LABELS`` order.

    ``reporter`` is ``source`` (outbound: we are the client side) or
    ``destination`` (inbound: we are the server side); the other side stays
    unknown until mTLS names it: its principal and namespace from its certificate,
    its workload, app, version, cluster, canonical service and revision (``peer_metadata``)
    from its sidecar's metadata line (``net/peer_hello.py``)."""
    self_side = (me.workload, me.namespace, UNKNOWN, me.app, me.version, me.cluster, me.canonical_service,
                 me.canonical_revision)
    workload, app, version, cluster, canonical_service, canonical_revision = peer_metadata
    other = (workload, peer_namespace or UNKNOWN, peer_principal, app, version, cluster, canonical_service,
             canonical_revision)
    src, dst = (self_side, other) if reporter == "source" else (other, self_side)
    svc_name = destination_service.rsplit(":", 1)[0] if destination_service != UNKNOWN else UNKNOWN
    svc_ns = me.namespace if reporter == "destination" else UNKNOWN
    return (reporter, *src[:6], *dst[:5], destination_service, svc_name, svc_ns, dst[5], protocol, security_policy,
            *src[6:], *dst[6:])


def tcp_labels(me: Peerless, reporter: str, destination_service: str,
               security_policy: str = UNKNOWN) -> tuple[str, ...]:
    """The labels of a relayed TCP connection."""
    return istio_labels(me, reporter, destination_service, "tcp", security_policy)


class TcpMetrics:
    """The four Istio TCP counters, with a child cache per label set."""

    def __init__(self, registry: CollectorRegistry):
        labels = ISTIO_LABELS
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened",
                              labels + ("response_flags",), registry=registry)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed",
                              labels + ("response_flags",), registry=registry)
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent to the downstream (response direction)",
                            labels + ("response_flags",), registry=registry)
        self.received = Counter("istio_tcp_received_bytes",
                                "Bytes received from the downstream (request direction)",
                                labels + ("response_flags",), registry=registry)
        self._children: dict[tuple[str, ...], tuple] = {}

    def _kids(self, labels: tuple[str, ...]):
        kids = self._children.get(labels)
        if kids is None:
            full = labels + ("-",)
            kids = (self.opened.labels(*full), self.sent.labels(*full), self.received.labels(*full))
            self._children[labels] = kids
        return kids

    def connection_opened(self, labels: tuple[str, ...]) -> None:
        self._kids(labels)[0].inc()

    def add_bytes(self, labels: tuple[str, ...], received: int, sent: int) -> None:
        kids = self._kids(labels)
        if sent:
            kids[1].inc(sent)
        if received:
            kids[2].inc(received)

    def connection_closed(self, labels: tuple[str, ...], flag: str) -> None:
        self.closed.labels(*labels, flag or "-").inc()


class Metrics:
    """The proxy's registry and every metric family in it."""

    def __init__(self, node: Node):
        self.registry = CollectorRegistry(auto_describe=True)
        self.me = Peerless.of(node)
        self.tcp = TcpMetrics(self.registry)
        self.active_connections = Gauge(
            "meshproxy_active_connections", "Connections currently relayed", ("direction",),
            registry=self.registry)
        self.listener_refused = Counter(
            "meshproxy_listener_refused_connections", "Accepted connections refused without forwarding",
            ("direction", "reason"), registry=self.registry)
        self.protocol_detection = Counter(
            "meshproxy_protocol_detection", "Accepted connections by how their protocol was decided "
            "(http1, http2, tls, opaque, timeout, declared, server_first)", ("direction", "outcome"),
            registry=self.registry)
        self.cert_expiry = Gauge(
            "meshproxy_certificate_expiry_timestamp_seconds", "When the workload certificate expires (Unix time)",
            registry=self.registry)
        self.cert_rotations = Counter(
            "meshproxy_certificate_rotations", "Workload certificate updates taken", registry=self.registry)
        self.cert_rotation_errors = Counter(
            "meshproxy_certificate_rotation_errors", "Certificate updates refused (the old one was kept)",
            registry=self.registry)
        self.mtls_failures = Counter(
            "meshproxy_mtls_failures", "mTLS handshakes or peer identity checks that failed",
            ("direction", "reason"), registry=self.registry)
        self.authz = Counter(
            "meshproxy_authz_decisions", "Authorization decisions that denied, would have denied (dry run) "
            "or were audited", ("policy", "action", "enforced", "protocol"), registry=self.registry)
        self.server_state = Gauge(
            "meshproxy_server_state", "0 starting, 1 live, 2 draining", registry=self.registry)
        self.config_errors = Counter(
            "meshproxy_config_errors", "Config reloads refused (invalid file; the running config was kept)",
            registry=self.registry)
        self.config_reloads = Counter(
            "meshproxy_config_reloads", "Config reloads taken", registry=self.registry)
        from .requests import RequestMetrics

        self.requests = RequestMetrics()
        self.registry.register(self.requests)
        self._flushers: list = []

    def count_authz(self, decision, protocol: str) -> None:
        """Count an authorization decision that denied, would have denied, or was audited."""
        if not decision.allowed:
            self.authz.labels(decision.policy or "default", decision.action, "true", protocol).inc()
        if decision.dry_run_denied:
            self.authz.labels(decision.dry_run_policy or decision.policy or "default", "DENY", "false",
                              protocol).inc()
        for name in decision.audited:
            self.authz.labels(name, "AUDIT", "false", protocol).inc()

    def add_flusher(self, fn) -> None:
        """Register a callable run before every scrape (moves byte counts into counters)."""
        self._flushers.append(fn)

    def render(self) -> bytes:
        for fn in self._flushers:
            fn()
        return generate_latest(self.registry)
