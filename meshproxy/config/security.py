"""The mesh-security part of the configuration: workload certificates, mTLS to
peers, inbound modes (Istio's PeerAuthentication) and authorization policies
(Istio's AuthorizationPolicy).

Where this sits: ``config/model.py`` composes these into ``Config``;
``tls/`` loads and rotates the files named here; ``authz/`` compiles the
policies once per snapshot. Frozen, like the rest of the config.
"""

from __future__ import annotations

from typing import Any, Literal

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
    """Inbound mTLS mode, Istio's PeerAuthentication: for all ports, or per port.

    Also read as an Istio spec is written: ``mtls: {mode: STRICT}`` and ``portLevelMtls:
    {8080: {mode: DISABLE}}``; ``UNSET`` inherits (the workload's mode for a port, PERMISSIVE,
    Istio's default, for the workload)."""

    mode: Mode = "PERMISSIVE"
    """STRICT: mTLS only; PERMISSIVE: mTLS or plaintext; DISABLE: plaintext only."""
    port_modes: dict[Port, Mode] = Field(default_factory=dict)
    """Per destination port overrides."""

    @model_validator(mode="before")
    @classmethod
    def _istio_spec(cls, data: Any) -> Any:
        if not isinstance(data, dict) or ("mtls" not in data and "portLevelMtls" not in data):
            return data
        out = dict(data)
        if "mtls" in out:
            if "mode" in out:
                raise ValueError("mtls.mode and mode are the same setting: give one")
            mode = _istio_mode(out.pop("mtls"), "mtls")
            if mode is not None:
                out["mode"] = mode
        if "portLevelMtls" in out:
            if "port_modes" in out:
                raise ValueError("portLevelMtls and port_modes are the same setting: give one")
            levels = out.pop("portLevelMtls")
            if not isinstance(levels, dict):
                raise ValueError(f"portLevelMtls: expected a mapping of port to {{mode: ...}}, got {levels!r}")
            modes = {}
            for port, m in levels.items():
                mode = _istio_mode(m, f"portLevelMtls.{port}")
                if mode is not None:
                    modes[port] = mode
            out["port_modes"] = modes
        return out


def _istio_mode(value: Any, where: str) -> str | None:
    """The ``mode`` of an Istio ``{mode: ...}`` block; None for UNSET (inherit)."""
    if not isinstance(value, dict) or set(value) - {"mode"}:
        raise ValueError(f"{where}: expected {{mode: STRICT|PERMISSIVE|DISABLE|UNSET}}, got {value!r}")
    mode = value.get("mode", "UNSET")
    return None if mode == "UNSET" else mode


def _istio_names(data: Any, names: dict[str, str]) -> Any:
    """Accept Istio's camelCase field names (``notPaths``, ``ipBlocks`` ...) for ours, so a policy
    copied from an Istio ``AuthorizationPolicy`` reads as written; error messages name our field."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for camel, snake in names.items():
        if camel in out:
            if snake in out:
                raise ValueError(f"{camel} and {snake} are the same field: give one")
            out[snake] = out.pop(camel)
    return out


def _unwrap(items: Any, key: str) -> Any:
    """Istio nests each ``from`` entry in ``source:`` and each ``to`` entry in ``operation:``;
    ours are flat. Take either."""
    if not isinstance(items, list):
        return items
    return [i[key] if isinstance(i, dict) and len(i) == 1 and key in i else i for i in items]


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

    @model_validator(mode="before")
    @classmethod
    def _camel(cls, data: Any) -> Any:
        return _istio_names(data, {"notPrincipals": "not_principals", "notNamespaces": "not_namespaces",
                                   "ipBlocks": "ip_blocks", "notIpBlocks": "not_ip_blocks"})


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

    @model_validator(mode="before")
    @classmethod
    def _camel(cls, data: Any) -> Any:
        return _istio_names(data, {"notPorts": "not_ports", "notMethods": "not_methods", "notPaths": "not_paths",
                                   "notHosts": "not_hosts"})


class Condition(_Model):
    """``when`` of an Istio rule: ``request.headers[NAME]`` values (exact or ``*`` wildcards)."""

    key: str
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _camel(cls, data: Any) -> Any:
        return _istio_names(data, {"notValues": "not_values"})

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

    @model_validator(mode="before")
    @classmethod
    def _nested(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for field, key in (("from", "source"), ("from_", "source"), ("to", "operation")):
                if field in data:
                    data[field] = _unwrap(data[field], key)
        return data


class AuthorizationPolicy(_Model):
    """Istio's AuthorizationPolicy: DENY policies first, then ALLOW; with no ALLOW
    policy everything not denied is allowed; once an ALLOW policy exists, a request
    no ALLOW policy matches is denied. AUDIT only logs and counts.

    Rules are written flat (``from: [{principals: [...]}]``, ``not_paths``) or as in an Istio
    spec (``from: [{source: {...}}]``, ``to: [{operation: {...}}]``, ``notPaths``, ``ipBlocks``);
    both read the same, and error messages name the flat field."""

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
