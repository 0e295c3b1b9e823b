"""End to end for workload TLS material: ``meshproxy ca`` as a subprocess, the files
it writes checked with cryptography and the openssl CLI, then real mTLS on loopback
with those files (our client and ``openssl s_client``), on both event loops."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshproxy.config.security import Tls
from meshproxy.tls.certs import load_material
from meshproxy.tls.context import ALPN_TCP, client_context, peer_spiffe_id, server_context, verify_peer

MESHPROXY = os.path.join(os.path.dirname(sys.executable), "meshproxy")
SERVER = "spiffe://cluster.local/ns/shop/sa/cart"
CLIENT = "spiffe://cluster.local/ns/web/sa/frontend"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("timeout") is None,
                                   reason="openssl CLI and timeout needed")


def ca(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MESHPROXY, "ca", *args], capture_output=True, text=True, timeout=30)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and two workloads, made by the command line tool."""
    root = tmp_path_factory.mktemp("pki")
    r = ca("init", "--trust-domain", "cluster.local", "--out", str(root / "ca"))
    assert r.returncode == 0, r.stderr
    for name, sid in (("server", SERVER), ("client", CLIENT)):
        r = ca("issue", "--ca", str(root / "ca"), "--spiffe-id", sid, "--ttl", "2h", "--dns", f"{name}.svc",
               "--out", str(root / name))
        assert r.returncode == 0, r.stderr
    return root


def tls_of(d) -> Tls:
    return Tls(cert_file=str(d / "cert.pem"), key_file=str(d / "key.pem"), bundle_file=str(d / "bundle.pem"))


def test_files_and_modes(pki):
    assert mode(pki / "ca" / "ca-key.pem") == 0o600
    assert mode(pki / "ca") == 0o700
    assert mode(pki / "server" / "key.pem") == 0o600
    assert mode(pki / "server" / "cert.pem") == 0o644
    assert sorted(os.listdir(pki / "server")) == ["bundle.pem", "cert.pem", "chain.pem", "key.pem"]
    assert (pki / "server" / "chain.pem").read_bytes() == b""  # no intermediates for a single-level CA
    assert (pki / "server" / "bundle.pem").read_bytes() == (pki / "ca" / "ca.pem").read_bytes()


def test_certificate_contents(pki):
    root = x509.load_pem_x509_certificate((pki / "ca" / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((pki / "server" / "cert.pem").read_bytes())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local"]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SERVER]
    assert san.get_values_for_type(x509.DNSName) == ["server.svc"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 2 * 3600 <= lifetime.total_seconds() <= 2 * 3600 + 120


@needs_openssl
def test_openssl_verifies_the_chain(pki):
    for name in ("server", "client"):
        d = pki / name
        for purpose in ("sslserver", "sslclient"):
            r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-x509_strict", "-CAfile",
                                str(d / "bundle.pem"), str(d / "cert.pem")],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr
    r = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca" / "ca.pem"), str(pki / "ca" / "ca.pem")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0


@needs_openssl
def test_openssl_checks_the_key_pair(pki):
    d = pki / "server"
    pub_of = {}
    for kind, args in (("cert", ["x509", "-in", str(d / "cert.pem"), "-noout", "-pubkey"]),
                       ("key", ["pkey", "-in", str(d / "key.pem"), "-pubout"])):
        pub_of[kind] = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=True).stdout
    assert pub_of["cert"] == pub_of["key"]


@pytest.mark.parametrize("args,fragment", [
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://cluster.local:443/ns/a/sa/b"], "port"),
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b#x"], "fragment"),
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://u@cluster.local/ns/a"], "user info"),
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://other.local/ns/a/sa/b"], "trust domain"),
    (["issue", "--ca", "{ca}", "--spiffe-id", SERVER, "--ttl", "1y"], "expected a duration like 24h"),
    (["issue", "--ca", "{tmp}/nothing", "--spiffe-id", SERVER], "not found"),
    (["init", "--trust-domain", "cluster.local", "--ttl", "soon"], "expected a duration like 24h"),
])
def test_cli_refuses_with_one_line_and_exit_2(pki, tmp_path, args, fragment):
    args = [a.format(ca=pki / "ca", tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")]
    r = ca(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr and "Traceback" not in r.stderr


def test_cli_refuses_to_overwrite_a_ca(pki):
    r = ca("init", "--trust-domain", "cluster.local", "--out", str(pki / "ca"))
    assert r.returncode == 2 and "already exists" in r.stderr


def test_issued_material_loads(pki):
    m = load_material(tls_of(pki / "server"))
    assert m.spiffe_id == SERVER


class EchoIdServer:
    """mTLS server on 127.0.0.1:0 that answers ``you are <client SPIFFE ID>`` and closes."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.peers: list[str | None] = []

    async def __aenter__(self):
        async def handle(reader, writer):
            peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
            self.peers.append(peer)
            writer.write(f"you are {peer}\n".encode())
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


async def test_mtls_with_cli_material(pki):
    server_m, client_m = load_material(tls_of(pki / "server")), load_material(tls_of(pki / "client"))
    async with EchoIdServer(server_context(server_m, [ALPN_TCP])) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port,
                                                       ssl=client_context(client_m, [ALPN_TCP]))
        sslobj = writer.get_extra_info("ssl_object")
        assert verify_peer(sslobj, ["cluster.local/ns/shop/sa/cart"]) == SERVER
        assert sslobj.version() == "TLSv1.3" and sslobj.selected_alpn_protocol() == ALPN_TCP
        assert await asyncio.wait_for(reader.read(), 5) == f"you are {CLIENT}\n".encode()
        writer.close()
    assert srv.peers == [CLIENT]


async def test_second_ca_is_refused(pki, tmp_path):
    assert ca("init", "--trust-domain", "cluster.local", "--out", str(tmp_path / "ca2")).returncode == 0
    assert ca("issue", "--ca", str(tmp_path / "ca2"), "--spiffe-id", CLIENT, "--out", str(tmp_path / "c2")
              ).returncode == 0
    server_m, stranger = load_material(tls_of(pki / "server")), load_material(tls_of(tmp_path / "c2"))
    async with EchoIdServer(server_context(server_m, [ALPN_TCP])) as srv:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port,
                                                           ssl=client_context(stranger, [ALPN_TCP]))
            got = await asyncio.wait_for(reader.read(), 5)
            writer.close()
        except OSError:
            got = b""
        assert got == b""
    assert srv.peers == []


async def s_client(port: int, d, *, with_cert: bool) -> tuple[int, str]:
    args = ["timeout", "10", "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(d / "bundle.pem"),
            "-alpn", ALPN_TCP, "-verify_return_error", "-ign_eof"]
    if with_cert:
        args += ["-cert", str(d / "cert.pem"), "-key", str(d / "key.pem")]
    proc = await asyncio.create_subprocess_exec(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode, out.decode(errors="replace")


@needs_openssl
async def test_openssl_s_client_with_and_without_a_certificate(pki):
    server_m = load_material(tls_of(pki / "server"))
    async with EchoIdServer(server_context(server_m, [ALPN_TCP])) as srv:
        code, out = await s_client(srv.port, pki / "client", with_cert=True)
        assert code == 0, out
        assert f"you are {CLIENT}" in out
        assert "Verify return code: 0 (ok)" in out and "TLSv1.3" in out and f"ALPN protocol: {ALPN_TCP}" in out

        code, out = await s_client(srv.port, pki / "client", with_cert=False)
        assert code not in (0, 124), out  # refused, not timed out
        assert "you are" not in out
    assert srv.peers == [CLIENT]
