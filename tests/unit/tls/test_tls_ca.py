"""The CA library and the ``meshproxy ca`` command's argument handling (in-process)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tls_support import NOW

from meshproxy.cli import main as meshproxy_main
from meshproxy.tls import ca as calib
from meshproxy.tls.ca import CaError, CertificateAuthority, parse_ttl

SID = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                          ("87600h", 87600 * 3600), (" 1h ", 3600)])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "24", "0h", "1.5h", "-1h", "1w", "h", "24 h", "1h30m"])
def test_parse_ttl_refuses(text):
    with pytest.raises(ValueError, match="expected a duration like 24h"):
        parse_ttl(text)


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_root_certificate():
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1), now=NOW)
    c = ca.cert
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey) and c.public_key().curve.name == "secp256r1"
    assert c.subject == c.issuer
    assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshproxy"
    bc = ext(c, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext(c, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local"]
    assert c.not_valid_after_utc - c.not_valid_before_utc == timedelta(days=1) + calib.CLOCK_SKEW
    c.verify_directly_issued_by(c)


def test_leaf_certificate():
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    leaf = ca.issue(SID, timedelta(hours=24), dns=["cart.shop.svc", "*.shop.svc"])
    c = leaf.cert
    assert c.public_key().curve.name == "secp256r1"
    c.verify_directly_issued_by(ca.cert)
    assert not ext(c, x509.BasicConstraints).value.ca
    ku = ext(c, x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign and not ku.key_encipherment
    assert list(ext(c, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]
    san = ext(c, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SID]
    assert san.get_values_for_type(x509.DNSName) == ["cart.shop.svc", "*.shop.svc"]
    assert ext(c, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(c, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(c.public_key())
    assert leaf.chain == () and leaf.bundle == (ca.cert,)
    assert "key" not in repr(leaf).replace("public_key", "")


@pytest.mark.parametrize("spiffe_id,fragment", [
    ("spiffe://other.local/ns/a/sa/b", "trust domain 'other.local'"),
    ("spiffe://cluster.local:1/ns/a/sa/b", "port"),
    ("cluster.local/ns/a/sa/b", "expected spiffe://"),
])
def test_issue_refuses(spiffe_id, fragment):
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    with pytest.raises(CaError, match=fragment):
        ca.issue(spiffe_id, timedelta(hours=1))


@pytest.mark.parametrize("name", ["UPPER.case", "under_score.svc", "-lead.svc", "a..b", "x" * 64 + ".svc", "ä.svc",
                                  "a.*.svc"])
def test_issue_refuses_bad_dns(name):
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    with pytest.raises(CaError, match="--dns"):
        ca.issue(SID, timedelta(hours=1), dns=[name])


def test_leaf_may_not_outlive_the_root():
    ca = CertificateAuthority.create("cluster.local", timedelta(hours=1))
    with pytest.raises(CaError, match="outlive the CA"):
        ca.issue(SID, timedelta(hours=2))


def test_save_and_load_roundtrip(tmp_path):
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    ca.save(str(tmp_path / "ca"))
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    back = CertificateAuthority.load(str(tmp_path / "ca"))
    assert back.cert == ca.cert and back.trust_domain == "cluster.local"
    with pytest.raises(CaError, match="already exists"):
        ca.save(str(tmp_path / "ca"))
    CertificateAuthority.create("cluster.local", timedelta(days=1)).save(str(tmp_path / "ca"), force=True)
    assert CertificateAuthority.load(str(tmp_path / "ca")).cert != ca.cert


def test_load_errors(tmp_path):
    d = tmp_path / "ca"
    with pytest.raises(CaError, match="ca.pem: not found"):
        CertificateAuthority.load(str(d))
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    ca.save(str(d))
    (d / "ca.pem").write_bytes(b"nope")
    with pytest.raises(CaError, match="not a PEM certificate"):
        CertificateAuthority.load(str(d))
    (d / "ca.pem").write_bytes(calib.cert_pem(ca.cert))
    (d / "ca-key.pem").write_bytes(b"nope")
    with pytest.raises(CaError, match="not an unencrypted PEM private key"):
        CertificateAuthority.load(str(d))
    (d / "ca-key.pem").write_bytes(calib.key_pem(CertificateAuthority.create("x", timedelta(days=1)).key))
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.load(str(d))
    leaf = ca.issue(SID, timedelta(hours=1))
    (d / "ca.pem").write_bytes(calib.cert_pem(leaf.cert))
    (d / "ca-key.pem").write_bytes(calib.key_pem(leaf.key))
    with pytest.raises(CaError, match="not a CA certificate"):
        CertificateAuthority.load(str(d))


def test_write_atomic_never_wider_than_asked(tmp_path):
    old = os.umask(0)
    try:
        p = tmp_path / "k.pem"
        calib.write_atomic(str(p), b"secret", 0o600)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and p.read_bytes() == b"secret"
        p.chmod(0o666)  # an existing wide file is replaced, not reused
        calib.write_atomic(str(p), b"secret2", 0o600)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and p.read_bytes() == b"secret2"
    finally:
        os.umask(old)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_write_atomic_creates_the_temp_file_0600(tmp_path, monkeypatch):
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        seen.append((os.path.basename(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    calib.write_atomic(str(tmp_path / "key.pem"), b"k", 0o600)
    (name, flags, mode), = seen
    assert name.startswith(".key.pem.") and mode == 0o600
    assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW


# --- the command, in-process (subprocess runs are in tests/e2e/test_tls_material.py) ---

def run(capsys, *argv):
    code = meshproxy_main(["ca", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_init_and_issue(tmp_path, capsys):
    code, out, err = run(capsys, "init", "--trust-domain", "cluster.local", "--out", str(tmp_path / "ca"))
    assert code == 0 and "ca.pem" in out and err == ""
    code, out, err = run(capsys, "issue", "--ca", str(tmp_path / "ca"), "--spiffe-id", SID, "--dns", "a.svc",
                         "--out", str(tmp_path / "w"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "w")) == ["bundle.pem", "cert.pem", "chain.pem", "key.pem"]
    assert (tmp_path / "w" / "chain.pem").read_bytes() == b""


@pytest.mark.parametrize("argv,fragment", [
    (["init", "--trust-domain", "Cluster.Local"], "lower-case"),
    (["init", "--trust-domain", "cluster.local", "--ttl", "10y"], "--ttl: expected a duration like 24h"),
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://cluster.local/ns/a?x"], "--spiffe-id"),
    (["issue", "--ca", "{ca}", "--spiffe-id", "spiffe://evil.local/ns/a/sa/b"], "trust domain 'evil.local'"),
    (["issue", "--ca", "{ca}", "--spiffe-id", SID, "--ttl", "forever"], "expected a duration like 24h"),
    (["issue", "--ca", "{missing}", "--spiffe-id", SID], "ca.pem: not found"),
    (["issue", "--ca", "{ca}", "--spiffe-id", SID, "--dns", "Bad_Name"], "--dns"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, fragment):
    assert run(capsys, "init", "--trust-domain", "cluster.local", "--out", str(tmp_path / "ca"))[0] == 0
    argv = [a.format(ca=tmp_path / "ca", missing=tmp_path / "none") for a in argv] + ["--out", str(tmp_path / "o")]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and fragment in err and err.startswith("meshproxy ca ")
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_cli_unwritable_output_exits_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run(capsys, "init", "--trust-domain", "cluster.local", "--out", str(blocker / "sub"))
    assert code == 1 and err.count("\n") == 1 and "cannot write" in err
