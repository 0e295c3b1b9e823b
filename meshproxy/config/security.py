"""The mesh-security part of the configuration: workload certificates, mTLS to
peers, inbound modes (Istio's PeerAuthentication) and authorization policies
(Istio's AuthorizationPolicy).

Where this sits: ``config/model.py`` composes these into ``Config``;
``tls/`` loads and rotates the files named here; ``authz/`` compiles the
policies once per snapshot. Frozen, like the rest of the config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .model_types import Duration, Port
from .props import TlsProps


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tls(TlsProps, _Model):
    """The workload's identity: files as a mounted Secret, cert-manager's CSI driver or
    a SPIRE helper deliver them. All three or none."""

    cert_file: str | None = None
    """PEM: the workload certificate (with a SPIFFE URI SAN), then any intermediates."""
    key_file: str | None = None
    """PEM: the private key of ``cert_file``."""
    bundle_file: str | None = None
    """PEM: the trust bundle (root certificates of the mesh CA)."""
    rotation_check_interval: Duration = 5.0
    """How often the three files are checked for changes (new handshakes use new material)."""

    @model_validator(mode="after")
    def _all_or_none(self) -> "Tls":
        given = [f for f in (self.cert_file, self.key_file, self.bundle_file) if f]
        if given and len(given) != 3:
            raise ValueError("expected cert_file, key_file and bundle_file together (or none)")
        return self


class MeshDestination(_Model):
    """Transparent outbound traffic to these addresses is a mesh peer: it is sent over
    mTLS to the peer's sidecar, whose SPIFFE ID must match ``identities``."""

    cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    ports: list[Port] = Field(default_factory=list)
    """Empty = every port."""
    identities: list[str] = Field(default_factory=lambda: ["*"])
    """Accepted server SPIFFE IDs; ``*`` prefix/suffix wildcards (``spiffe://cluster.local/ns/shop/*``)."""

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"expected a CIDR such as 198.18.0.0/15, got {c!r}") from None
        return v


Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


class PeerAuthentication(_Model):
    """Inbound mTLS mode, Istio's PeerAuthentication: for all ports, or per port."""

    mode: Mode = "PERMISSIVE"
    """STRICT: mTLS only; PERMISSIVE: mTLS or plaintext; DISABLE: plaintext only."""
    port_modes: dict[Port, Mode] = Field(default_factory=dict)
    """Per destination port overrides."""


class Source(_Model):
    """``from.source`` of an Istio rule (all given fields must match; ``not_*`` must not)."""

    principals: list[str] = Field(default_factory=list)
    """SPIFFE IDs without ``spiffe://`` (Istio style, ``cluster.local/ns/NS/sa/SA``) or with it;
    ``*`` prefix/suffix wildcards; ``*`` alone = any authenticated peer."""
    not_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)


class Operation(_Model):
    """``to.operation`` of an Istio rule; methods/paths/hosts only apply to HTTP."""

    ports: list[Port] = Field(default_factory=list)
    not_ports: list[Port] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    """Exact, ``/prefix*`` or ``*suffix``."""
    not_paths: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    """The request's ``Host`` / ``:authority`` as sent, case-insensitive: exact (a port, when the
    client sent one, is part of it: write ``web.shop.svc:*`` for any port), ``prefix*``,
    ``*suffix`` or ``*``, as Istio's ``hosts``."""
    not_hosts: list[str] = Field(default_factory=list)


class Condition(_Model):
    """``when`` of an Istio rule: ``request.headers[NAME]`` values (exact or ``*`` wildcards)."""

    key: str
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        supported = ("request.headers[", "source.principal", "source.namespace", "source.ip",
                     "destination.port", "request.method", "request.path")
        if not v.startswith(supported):
            raise ValueError(f"expected one of {', '.join(s.rstrip('[') + ('[NAME]' if s.endswith('[') else '') for s in supported)}, got {v!r}")
        return v


class Rule(_Model):
    """A rule matches when any ``from`` matches, any ``to`` matches and every ``when``
    holds (an empty list matches everything)."""

    from_: list[Source] = Field(default_factory=list, alias="from")
    to: list[Operation] = Field(default_factory=list)
    when: list[Condition] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AuthorizationPolicy(_Model):
    """Istio's AuthorizationPolicy: DENY policies first, then ALLOW; with no ALLOW
    policy everything not denied is allowed; once an ALLOW policy exists, a request
    no ALLOW policy matches is denied. AUDIT only logs and counts."""

    name: str = Field(min_length=1)
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    rules: list[Rule] = Field(default_factory=list)
    """ALLOW with no rules matches nothing; DENY with no rules matches nothing (Istio)."""
    dry_run: bool = False
    """Evaluate and count the would-be decision but do not enforce it."""


class Security(_Model):
    tls: Tls = Field(default_factory=Tls)
    mesh_destinations: list[MeshDestination] = Field(default_factory=list)
    peer_authentication: PeerAuthentication = Field(default_factory=PeerAuthentication)
    authorization_policies: list[AuthorizationPolicy] = Field(default_factory=list)
    trust_domain: str = "cluster.local"
    """The workload certificate's SPIFFE ID must be in this trust domain (checked at start)."""
    h2_upgrade_policy: Literal["DO_NOT_UPGRADE", "UPGRADE"] = "DO_NOT_UPGRADE"
    """Istio's ``h2UpgradePolicy`` for HTTP/1.1 between sidecars. ``DO_NOT_UPGRADE`` (Istio's
    default): HTTP/1.1 from the app stays HTTP/1.1 over the mTLS connection (one request at a
    time per connection, pooled). ``UPGRADE``: it is carried as HTTP/2 streams multiplexed on
    one mTLS connection, and the peer sidecar speaks HTTP/1.1 to its app again. HTTP/2 and gRPC
    stay HTTP/2 either way."""
