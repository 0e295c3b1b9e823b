"""The routing part of the configuration: HTTP limits, declared port protocols,
routes and clusters.

Where this sits: ``config/model.py`` composes these into ``Config``;
``http/router.py`` compiles ``routes`` once per snapshot into a matcher and
``upstream/cluster.py`` builds one ``Cluster`` per entry of ``clusters``. Like
the rest of the config these are frozen: a reload builds new ones.

Later capabilities (retries, load-balancer policies, outlier detection, fault
injection, discovery) add fields here; every new field gets a default so old
files stay valid.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..detect.sniff import PortProtocol
from .model_types import Duration, Port, parse_hostport


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"expected a valid regular expression: {e}") from None
    return value


Regex = Annotated[str, BeforeValidator(lambda v: _regex(v) if isinstance(v, str) else v)]


class PathMatch(_Model):
    """Exactly one of ``exact``, ``prefix``, ``regex`` (full match) on the path
    without the query string."""

    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _one(self) -> "PathMatch":
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("expected exactly one of exact, prefix, regex")
        return self


class HeaderMatch(_Model):
    """One header condition: exactly one of ``exact``, ``prefix``, ``regex``,
    ``present``; ``invert`` negates it."""

    name: str = Field(min_length=1)
    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None
    present: bool | None = None
    invert: bool = False

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @model_validator(mode="after")
    def _one(self) -> "HeaderMatch":
        if sum(v is not None for v in (self.exact, self.prefix, self.regex, self.present)) != 1:
            raise ValueError("expected exactly one of exact, prefix, regex, present")
        return self


class RouteMatch(_Model):
    """All conditions must hold. Authorities are Envoy-style domains: ``*`` (any),
    ``*.example.com`` (suffix), ``api.*`` (prefix) or an exact name; with or
    without ``:port`` (without a port it matches any port)."""

    authority: list[str] = Field(default_factory=lambda: ["*"])
    path: PathMatch | None = None
    methods: list[str] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)

    @field_validator("authority")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.strip().lower()
            if not d or d.count("*") > 1 or ("*" in d and d != "*" and not (d.startswith("*") or d.endswith("*"))):
                raise ValueError(f"expected '*', '*.suffix', 'prefix.*' or an exact host, got {d!r}")
            out.append(d)
        return out

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]


class WeightedCluster(_Model):
    cluster: str
    weight: int = Field(ge=0)


class Route(_Model):
    """Send matching requests to ``cluster`` or split them over ``weighted_clusters``."""

    name: str = Field(min_length=1)
    match: RouteMatch = Field(default_factory=RouteMatch)
    cluster: str | None = None
    weighted_clusters: list[WeightedCluster] = Field(default_factory=list)
    timeout: Duration = 15.0
    """Whole-request timeout (Envoy's route timeout); on expiry 504 with flag UT (0 = none)."""

    @model_validator(mode="after")
    def _target(self) -> "Route":
        if (self.cluster is None) == (not self.weighted_clusters):
            raise ValueError("expected exactly one of cluster, weighted_clusters")
        if self.weighted_clusters and sum(w.weight for w in self.weighted_clusters) == 0:
            raise ValueError("weighted_clusters: expected a weight above 0 somewhere")
        return self


class Pool(_Model):
    """Upstream connection pool, per endpoint."""

    max_idle: int = Field(1024, ge=0)
    """HTTP/1.1 keep-alive connections kept idle per endpoint. Below the number of requests in
    flight to one endpoint, connections churn (a connect for every few requests); Envoy keeps
    every idle one up to its 1024-connection circuit breaker."""
    idle_timeout: Duration = 60.0
    """Close an idle pooled connection after this long."""
    max_requests_per_connection: int = Field(0, ge=0)
    """0 = unlimited."""


class ClusterMtls(_Model):
    """The cluster's endpoints are mesh peers: connect over mTLS with the workload
    certificate and require a server SPIFFE ID in ``identities``."""

    enabled: bool = False
    identities: list[str] = Field(default_factory=lambda: ["*"])
    """Accepted server SPIFFE IDs, ``*`` prefix/suffix wildcards."""


class Cluster(_Model):
    """A named set of static endpoints, balanced round robin."""

    name: str = Field(min_length=1)
    endpoints: list[str] = Field(min_length=1)
    """``host:port`` or ``[v6]:port`` each."""
    protocol: Literal["auto", "http1", "http2"] = "auto"
    """Upstream protocol: ``auto`` follows the downstream (gRPC stays HTTP/2)."""
    connect_timeout: Duration | None = None
    """Defaults to ``tcp.connect_timeout``."""
    pool: Pool = Field(default_factory=Pool)
    mtls: ClusterMtls = Field(default_factory=ClusterMtls)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for e in v:
            parse_hostport(e)
        return v


class PortDecl(_Model):
    """A declared port protocol, Istio style: ``http``, ``http2``, ``grpc``,
    ``grpc-web``, ``tcp``, ``tls``, ``https`` or a name with such a prefix
    (``http-web``, ``grpc-api``). Declared ports skip detection."""

    port: Port
    protocol: str

    @field_validator("protocol")
    @classmethod
    def _proto(cls, v: str) -> str:
        if PortProtocol.parse(v) is None:
            raise ValueError("expected http, http2, grpc, grpc-web, tcp, tls, https or a name starting "
                             f"with one of them and '-', got {v!r}")
        return v


class Http(_Model):
    """HTTP limits and timeouts, Envoy's defaults."""

    max_request_headers_kb: int = Field(60, ge=1, le=8192)
    """Request header block size limit → 431."""
    max_headers: int = Field(100, ge=1)
    """Request header count limit → 431."""
    max_uri_bytes: int = Field(16384, ge=256)
    """Request line limit → 414."""
    passthrough_timeout: Duration = 0.0
    """Whole-request timeout for HTTP that no route claimed (0 = none, as Istio's passthrough:
    long gRPC streams, SSE and downloads are not cut)."""
    headers_timeout: Duration = 10.0
    """Time to receive a complete request head on a connection before 408 (0 = none)."""
    idle_timeout: Duration = 3600.0
    """Close a downstream HTTP connection with no active request after this long."""
    max_concurrent_streams: int = Field(100, ge=1)
    """HTTP/2 streams per downstream connection; beyond it REFUSED_STREAM."""
    allow_underscores_in_headers: bool = False
    """False: a request header name with ``_`` is answered 400 (Envoy's REJECT_REQUEST)."""
    express: bool = True
    """HTTP/1.1 express lane (``http/express.py``): on listeners with no tracing, access log,
    authorization or other per-request filters, plain keep-alive requests are proxied without
    the general path's per-request machinery (same bytes, metrics and errors; anything unusual
    still takes the general path). False: every request takes the general path."""


class Detection(_Model):
    timeout: Duration = 5.0
    """How long to wait for the client's first bytes before treating the connection as opaque TCP."""
    server_first_ports: list[Port] = Field(
        default_factory=lambda: [25, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017])
    """Ports where the server speaks first: opaque TCP without waiting."""


class AccessLog(_Model):
    enabled: bool = False
    path: str = "-"
    """``-`` for stdout, else a file path (appended)."""


class Tracing(_Model):
    exporter: Literal["none", "console", "otlp"] = "none"
    """``none`` does not import the OpenTelemetry SDK at all."""
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """OTLP/HTTP endpoint."""
    sampling: float = Field(1.0, ge=0.0, le=1.0)
    """Ratio of new traces sampled (a sampled parent is always followed)."""
    service_name: str = ""
    """Defaults to ``<workload>.<namespace>``."""


Protocol = Literal["auto", "tcp", "http"]
