"""Helpers for the TLS tests: a CA, leaves written to disk, hand-crafted odd certificates,
and a loopback mTLS attempt between a server and a client context."""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshproxy.config.security import Tls
from meshproxy.tls import ca as calib
from meshproxy.tls.context import peer_spiffe_id

NOW = datetime.now(timezone.utc)


def new_ca(trust_domain: str = "cluster.local", ttl: timedelta = timedelta(days=30),
           now: datetime | None = None) -> calib.CertificateAuthority:
    return calib.CertificateAuthority.create(trust_domain, ttl, now=now)


def write_files(directory, cert: bytes, key: bytes, bundle: bytes, interval: float = 5.0) -> Tls:
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, n) for n in ("cert.pem", "key.pem", "bundle.pem")]
    for p, data in zip(paths, (cert, key, bundle)):
        with open(p, "wb") as f:
            f.write(data)
    return Tls(cert_file=paths[0], key_file=paths[1], bundle_file=paths[2], rotation_check_interval=interval)


def issue_to(directory, ca: calib.CertificateAuthority, spiffe_id: str, **kw) -> Tls:
    ttl = kw.pop("ttl", timedelta(hours=1))
    interval = kw.pop("interval", 5.0)
    leaf = ca.issue(spiffe_id, ttl, **kw)
    return write_files(directory, calib.cert_pem(leaf.cert, *leaf.chain), calib.key_pem(leaf.key),
                       calib.cert_pem(*leaf.bundle), interval)


def craft(issuer_cert: x509.Certificate | None, issuer_key, *, uris=(), ca=False,
          not_before: datetime | None = None, not_after: datetime | None = None, subject="crafted",
          with_san=True):
    """A certificate with exactly the given properties (self-signed when ``issuer_cert`` is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before or NOW - timedelta(hours=1))
         .not_valid_after(not_after or NOW + timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if with_san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]
                                                        or [x509.DNSName("example.test")]), critical=False)
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    cert = b.sign(issuer_key if issuer_cert is not None else key, hashes.SHA256())
    return cert, key


@dataclass
class Attempt:
    """What each side saw of one loopback connection attempt."""

    server_peer: str | None = None
    """The client's SPIFFE ID as the server saw it (None: the server never got a connection)."""
    server_alpn: str | None = None
    client_peer: str | None = None
    """The server's SPIFFE ID as the client saw it."""
    client_got: bytes | None = None
    """What the client read (the server echoes the peer ID it saw)."""
    client_error: BaseException | None = None


async def attempt(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Attempt:
    result = Attempt()
    accepted = asyncio.Event()

    async def handle(reader, writer):
        sslobj = writer.get_extra_info("ssl_object")
        result.server_peer = peer_spiffe_id(sslobj)
        result.server_alpn = sslobj.selected_alpn_protocol()
        writer.write(b"you are " + (result.server_peer or "?").encode() + b"\n")
        await writer.drain()
        writer.close()
        accepted.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 5)
            result.client_peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
            try:
                result.client_got = await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()
        except (OSError, asyncio.IncompleteReadError, EOFError) as e:  # ssl.SSLError is an OSError
            result.client_error = e
        if result.client_error is None and result.client_got:
            await asyncio.wait_for(accepted.wait(), 5)
        else:
            await asyncio.sleep(0.05)  # let a (wrong) server-side accept show up
    finally:
        server.close()
        await server.wait_closed()
    return result
