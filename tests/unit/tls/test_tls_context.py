"""Real mTLS handshakes on loopback between server_context and client_context."""

from __future__ import annotations

import os
import ssl
from datetime import timedelta

import pytest
from tls_support import NOW, attempt, craft, new_ca

from meshproxy.tls import ca as calib
from meshproxy.tls import context
from meshproxy.tls.certs import Material, material_from_pem
from meshproxy.tls.context import (ALPN_H2, ALPN_TCP, PeerIdentityError, client_context, peer_spiffe_id,
                                   server_context, verify_peer)

SERVER = "spiffe://cluster.local/ns/shop/sa/cart"
CLIENT = "spiffe://cluster.local/ns/web/sa/frontend"


def material(ca: calib.CertificateAuthority, spiffe_id: str, **kw) -> Material:
    leaf = ca.issue(spiffe_id, kw.pop("ttl", timedelta(hours=1)), **kw)
    return material_from_pem(calib.cert_pem(leaf.cert), calib.key_pem(leaf.key), calib.cert_pem(ca.cert))


@pytest.fixture(scope="module")
def ca():
    return new_ca()


@pytest.fixture(scope="module")
def server_m(ca):
    return material(ca, SERVER)


@pytest.fixture(scope="module")
def client_m(ca):
    return material(ca, CLIENT)


def test_contexts_are_tls13_only_and_verify(server_m):
    for ctx in (server_context(server_m, [ALPN_H2]), client_context(server_m, [ALPN_H2])):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert ctx.cert_store_stats()["x509_ca"] == 1
    assert server_context(server_m, []).num_tickets == 0


async def test_mutual_tls_identities_both_ways(server_m, client_m):
    r = await attempt(server_context(server_m, [ALPN_H2, ALPN_TCP]), client_context(client_m, [ALPN_TCP]))
    assert r.client_error is None
    assert r.server_peer == CLIENT
    assert r.client_peer == SERVER
    assert r.server_alpn == ALPN_TCP
    assert r.client_got == f"you are {CLIENT}\n".encode()


async def test_standard_alpn_passes_through(server_m, client_m):
    r = await attempt(server_context(server_m, ["h2", "http/1.1"]), client_context(client_m, ["http/1.1"]))
    assert r.server_alpn == "http/1.1" and r.server_peer == CLIENT


async def test_client_from_another_ca_is_refused(server_m):
    stranger = material(new_ca(), CLIENT)  # same trust domain name, different root
    r = await attempt(server_context(server_m, [ALPN_TCP]), client_context(stranger, [ALPN_TCP]))
    assert r.server_peer is None
    assert not r.client_got


async def test_server_from_another_ca_is_refused(client_m):
    stranger = material(new_ca(), SERVER)
    r = await attempt(server_context(stranger, [ALPN_TCP]), client_context(client_m, [ALPN_TCP]))
    assert isinstance(r.client_error, ssl.SSLCertVerificationError)
    assert r.server_peer is None


def _expired(ca, spiffe_id) -> Material:
    cert, key = craft(ca.cert, ca.key, uris=[spiffe_id], not_before=NOW - timedelta(days=2),
                      not_after=NOW - timedelta(days=1))
    # load_material would refuse it: validate "two days ago" to get a Material anyway
    return material_from_pem(calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert),
                             now=NOW - timedelta(days=1, hours=12))


async def test_expired_client_certificate_is_refused(ca, server_m):
    r = await attempt(server_context(server_m, [ALPN_TCP]), client_context(_expired(ca, CLIENT), [ALPN_TCP]))
    assert r.server_peer is None and not r.client_got


async def test_expired_server_certificate_is_refused(ca, client_m):
    r = await attempt(server_context(_expired(ca, SERVER), [ALPN_TCP]), client_context(client_m, [ALPN_TCP]))
    assert isinstance(r.client_error, ssl.SSLCertVerificationError)
    assert "expired" in str(r.client_error)


async def test_client_without_certificate_is_refused(server_m):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=server_m.bundle_pem.decode())
    r = await attempt(server_context(server_m, [ALPN_TCP]), bare)
    assert r.server_peer is None
    assert not r.client_got  # TLS 1.3: the client learns it on its first read (alert "certificate required")


async def test_tls12_client_is_refused(server_m, client_m):
    old = client_context(client_m, [ALPN_TCP])
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    r = await attempt(server_context(server_m, [ALPN_TCP]), old)
    assert isinstance(r.client_error, OSError) and r.server_peer is None  # SSLError or reset


async def test_tempdir_fallback_loads_and_leaves_nothing(server_m, client_m, monkeypatch, tmp_path):
    monkeypatch.setattr(context, "_use_memfd", False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*a, **kw):
        d = real_mkdtemp(*a, **kw)
        made.append((d, os.stat(d).st_mode & 0o777))
        return d

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    sctx = server_context(server_m, [ALPN_TCP])
    assert made and all(mode == 0o700 for _, mode in made)
    assert os.listdir(tmp_path) == []
    r = await attempt(sctx, client_context(client_m, [ALPN_TCP]))
    assert r.server_peer == CLIENT and r.client_peer == SERVER


def test_memfd_leaves_no_descriptors(server_m):
    if not context._use_memfd:
        pytest.skip("no memfd here")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(5):
        server_context(server_m, [ALPN_TCP])
    assert set(os.listdir("/proc/self/fd")) <= before


class FakeSsl:
    def __init__(self, der):
        self.der = der

    def getpeercert(self, binary_form=False):
        assert binary_form
        return self.der


def test_peer_spiffe_id_and_verify_peer_offline(ca):
    from cryptography.hazmat.primitives.serialization import Encoding
    leaf = ca.issue(CLIENT, timedelta(hours=1))
    with_id = FakeSsl(leaf.cert.public_bytes(Encoding.DER))
    no_id = FakeSsl(craft(ca.cert, ca.key, uris=[])[0].public_bytes(Encoding.DER))

    assert peer_spiffe_id(with_id) == CLIENT
    assert peer_spiffe_id(None) is None and peer_spiffe_id(FakeSsl(None)) is None
    assert peer_spiffe_id(no_id) is None

    assert verify_peer(with_id, ["*"]) == CLIENT
    assert verify_peer(with_id, ["cluster.local/ns/web/*"]) == CLIENT
    assert verify_peer(with_id, ["spiffe://x/y", "cluster.local/ns/web/sa/frontend"]) == CLIENT
    with pytest.raises(PeerIdentityError, match="is not accepted") as e:
        verify_peer(with_id, ["spiffe://cluster.local/ns/shop/*"])
    assert e.value.spiffe_id == CLIENT and CLIENT in str(e.value)
    with pytest.raises(PeerIdentityError, match="expected <none>"):
        verify_peer(with_id, [])
    with pytest.raises(PeerIdentityError, match="no SPIFFE ID"):
        verify_peer(no_id, ["*"])
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_peer(FakeSsl(None), ["*"])
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_peer(None, ["*"])


async def test_verify_peer_after_a_real_handshake(server_m, client_m):
    import asyncio
    seen = {}

    async def handle(reader, writer):
        seen["server"] = verify_peer(writer.get_extra_info("ssl_object"), ["cluster.local/ns/web/sa/frontend"])
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(server_m, [ALPN_TCP]))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(client_m, [ALPN_TCP]))
        sslobj = writer.get_extra_info("ssl_object")
        assert verify_peer(sslobj, ["spiffe://cluster.local/ns/shop/*"]) == SERVER
        with pytest.raises(PeerIdentityError):
            verify_peer(sslobj, ["spiffe://cluster.local/ns/billing/*"])
        await reader.read()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert seen["server"] == CLIENT
