"""mTLS between sidecars: ``ssl.SSLContext`` objects built from a :class:`Material`,
and the SPIFFE identity check that follows every handshake.

Where this sits: ``net/mesh.py`` builds a server context (inbound listeners
terminate mTLS with it) and client contexts (the upstream pool and the relay
dial peer sidecars with them) from the current ``Material``, and rebuilds them
on rotation: new handshakes use the new contexts, established connections keep
theirs. After a handshake the caller runs :func:`verify_peer` (outbound: is the
server one of the identities we expect?) or :func:`peer_spiffe_id` (inbound:
who is calling? authorization decides).

Both sides: TLS 1.3 only, certificate required and verified against the bundle
(OpenSSL does full path validation). Host names are never checked
(``check_hostname`` off): in a mesh the identity is the SPIFFE ID in the URI
SAN, checked after the handshake. The server sends no session tickets, so every
connection is a full handshake verified against the current bundle.

ALPN: sidecars speak :data:`ALPN_H2` or :data:`ALPN_TCP` between themselves;
other ALPN strings (``h2``, ``http/1.1`` ...) are passed to OpenSSL as given.
A server with no ALPN in common with the client completes the handshake
without one (``selected_alpn_protocol()`` is None); the caller decides.

Loading the key: ``ssl`` only loads certificate chains from files. We write
cert and key into anonymous memory files (``memfd_create``, Linux) and load
them through ``/proc/self/fd/N``; the key never touches a filesystem and the
descriptors are closed right after loading. Where memfd or ``/proc`` is not
available we fall back to a private temporary directory (0700, files 0600)
that is removed right after ``load_cert_chain``.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Iterable

from cryptography import x509

from .certs import Material
from .identity import id_matches, spiffe_id_of

ALPN_H2 = "meshproxy-h2"
"""Sidecar to sidecar: HTTP (multiplexed HTTP/2 inside mTLS)."""
ALPN_TCP = "meshproxy-tcp"
"""Sidecar to sidecar: opaque TCP bytes inside mTLS."""

_use_memfd = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class PeerIdentityError(Exception):
    """The peer's certificate has no SPIFFE ID, or one we do not accept; ``str(e)`` is one line."""

    def __init__(self, message: str, spiffe_id: str | None = None):
        super().__init__(message)
        self.spiffe_id = spiffe_id
        """The peer's ID if it had one (then it was not accepted)."""


def server_context(material: Material, alpn: list[str]) -> ssl.SSLContext:
    """Terminate mTLS: TLS 1.3, our certificate, a client certificate required and
    verified against the bundle, ``alpn`` offered in preference order."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    return _common(ctx, material, alpn)


def client_context(material: Material, alpn: list[str]) -> ssl.SSLContext:
    """Dial a peer sidecar: TLS 1.3, our certificate as client certificate, the
    server's verified against the bundle, no host name check (use :func:`verify_peer`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _common(ctx, material, alpn)


def _common(ctx: ssl.SSLContext, material: Material, alpn: list[str]) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=material.bundle_pem.decode("ascii"))
    _load_cert_chain(ctx, material)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, material: Material) -> None:
    if _use_memfd:
        fds: list[int] = []
        try:
            for name, data in (("meshproxy-cert", material.cert_pem), ("meshproxy-key", material.key_pem)):
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
                fds.append(fd)
                _write_all(fd, data)
        except OSError:  # memfd refused (seccomp, old kernel): fall back below
            for fd in fds:
                os.close(fd)
        else:
            try:
                ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            finally:
                for fd in fds:
                    os.close(fd)
            return
    with tempfile.TemporaryDirectory(prefix="meshproxy-tls-") as d:  # created 0700
        paths = []
        for name, data in (("cert.pem", material.cert_pem), ("key.pem", material.key_pem)):
            path = os.path.join(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            paths.append(path)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        finally:
            for path in paths:
                os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID of the verified peer certificate (after the handshake), else None.

    ``ssl_object`` is ``transport.get_extra_info("ssl_object")``; None (a
    plaintext connection) gives None.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return spiffe_id_of(cert)


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, accepted_patterns: Iterable[str]) -> str:
    """The peer's SPIFFE ID if it matches one of ``accepted_patterns`` (see
    :func:`identity.id_matches`; an empty list accepts nobody), else :class:`PeerIdentityError`."""
    patterns = list(accepted_patterns)
    peer = peer_spiffe_id(ssl_object)
    if peer is None:
        if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
            raise PeerIdentityError("peer presented no certificate")
        raise PeerIdentityError("peer certificate has no SPIFFE ID (expected exactly one spiffe:// URI SAN)")
    if not any(id_matches(p, peer) for p in patterns):
        shown = ", ".join(patterns) if patterns else "<none>"
        raise PeerIdentityError(f"peer {peer} is not accepted (expected {shown})", peer)
    return peer
