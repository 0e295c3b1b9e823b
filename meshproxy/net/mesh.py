"""Mesh TLS state: the workload certificate, the TLS contexts built from it, and
the per-connection decisions of mesh security (which peers are mesh peers, which
inbound mode applies, who the peer is).

Where this sits: ``app.py`` builds one ``Mesh`` when ``security.tls`` names
certificate files; listeners ask it whether to terminate mTLS (inbound) and
whether a destination is a mesh peer (outbound passthrough); the upstream pool
and the relay take its client context and verify the server's SPIFFE ID.
Rotation swaps the contexts: new handshakes use the new material, established
connections keep theirs.

ALPN between sidecars says what the mTLS connection carries (``net/mesh_alpn.py``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
from dataclasses import dataclass

from ..config.security import Security
from ..errors import StartupError
from ..tls import certs, context, identity, rotation
from . import peer_hello
from .mesh_alpn import ALPN_H2, ALPN_HTTP1, ALPN_TCP, MESH_ALPNS  # noqa: F401 (re-exported)

log = logging.getLogger("meshproxy.mesh")



@dataclass(frozen=True, slots=True, eq=False)
class PeerInfo:
    """Who is on the other end of an mTLS connection. Compared and hashed by identity: the
    request metrics key their series by it once per request, and a generated value hash would
    run a Python frame each time. Upstream peers are shared (``upstream_peer``), so every
    pooled connection to one peer sidecar gives the same key."""

    principal: str
    """The verified SPIFFE ID."""
    cert_hash: str
    """SHA-256 of the peer certificate (DER), hex: for x-forwarded-client-cert."""
    metadata: tuple[str, ...] = ("unknown",) * 6
    """The peer sidecar's workload, app, version, cluster, canonical service and revision from its
    metadata line (``peer_hello.KEYS``), for Istio's source_* / destination_* labels; ``unknown`` when not sent."""

    @property
    def namespace(self) -> str | None:
        try:
            return identity.SpiffeId.parse(self.principal).namespace
        except ValueError:
            return None


_UPSTREAM_PEERS: dict[tuple[str, tuple[str, ...]], PeerInfo] = {}


def upstream_peer(principal: str, metadata: tuple[str, ...]) -> PeerInfo:
    """The one ``PeerInfo`` of a peer sidecar we connected to (bounded: cleared past 4096 peers)."""
    key = (principal, metadata)
    p = _UPSTREAM_PEERS.get(key)
    if p is None:
        if len(_UPSTREAM_PEERS) >= 4096:
            _UPSTREAM_PEERS.clear()
        p = _UPSTREAM_PEERS[key] = PeerInfo(principal, "", metadata)
    return p


class Mesh:
    def __init__(self, cfg: Security, metrics):
        self.cfg = cfg
        self.metrics = metrics
        try:
            self.material = certs.load_material(cfg.tls)
        except certs.TlsMaterialError as e:
            raise StartupError(f"security.tls: {e}") from None
        td = identity.SpiffeId.parse(self.material.spiffe_id).trust_domain
        if td != cfg.trust_domain:
            raise StartupError(f"security.tls: the certificate's SPIFFE ID {self.material.spiffe_id} is not in "
                               f"security.trust_domain {cfg.trust_domain!r}")
        me = metrics.me
        self.hello = peer_hello.encode(me.workload, me.app, me.version, me.cluster, me.canonical_service,
                                       me.canonical_revision)
        """Our metadata line, first on every mTLS connection between sidecars (``net/peer_hello.py``)."""
        self.server_ctx: ssl.SSLContext
        self.client_ctx: dict[str, ssl.SSLContext] = {}
        self._build(self.material)
        self._dests = [(tuple(ipaddress.ip_network(c, strict=False) for c in d.cidrs), frozenset(d.ports),
                        tuple(d.identities)) for d in cfg.mesh_destinations]
        self.watcher = rotation.CertWatcher(cfg.tls, self._rotated, self._rotation_failed, current=self.material)

    @property
    def spiffe_id(self) -> str:
        return self.material.spiffe_id

    def _build(self, material) -> None:
        self.server_ctx = context.server_context(material, list(MESH_ALPNS))
        self.client_ctx = {alpn: context.client_context(material, [alpn]) for alpn in MESH_ALPNS}
        self.metrics.cert_expiry.set(rotation.expiry_timestamp(material))

    def _rotated(self, material) -> None:
        self._build(material)
        self.material = material
        self.metrics.cert_rotations.inc()
        log.info("workload certificate rotated: %s, valid until %s", material.spiffe_id, material.not_after)

    def _rotation_failed(self, message: str) -> None:
        self.metrics.cert_rotation_errors.inc()
        log.error("certificate update refused, keeping the current one: %s", message)

    def start(self) -> None:
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    # -- decisions --------------------------------------------------------
    def inbound_mode(self, port: int) -> str:
        pa = self.cfg.peer_authentication
        return pa.port_modes.get(port, pa.mode)

    def destination_identities(self, host: str, port: int) -> tuple[str, ...] | None:
        """Accepted server identities if ``host:port`` is a mesh peer, else None."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        for nets, ports, ids in self._dests:
            if (not ports or port in ports) and any(ip in n for n in nets if n.version == ip.version):
                return ids
        return None

    @staticmethod
    def peer_of(sslobj, metadata: dict[str, str] | None = None) -> PeerInfo | None:
        """Who the verified peer is: its SPIFFE ID, and what its metadata line said."""
        der = sslobj.getpeercert(binary_form=True)
        if not der:
            return None
        principal = context.peer_spiffe_id(sslobj)
        if principal is None:
            return None
        return PeerInfo(principal, hashlib.sha256(der).hexdigest(), peer_hello.label_values(metadata))

    @staticmethod
    def verify(sslobj, accepted) -> str:
        """The server's SPIFFE ID, or ``PeerIdentityError`` if it is not accepted."""
        return context.verify_peer(sslobj, list(accepted))

    def xfcc(self, peer: PeerInfo) -> bytes:
        """Envoy's x-forwarded-client-cert value for a verified peer."""
        return f"By={self.spiffe_id};Hash={peer.cert_hash};URI={peer.principal}".encode()


PeerIdentityError = context.PeerIdentityError
