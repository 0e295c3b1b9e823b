"""load_material: the good case and every refusal, each naming the file and the problem."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tls_support import NOW, craft, issue_to, new_ca, write_files

from meshproxy.config.security import Tls
from meshproxy.tls import ca as calib
from meshproxy.tls.certs import Material, TlsMaterialError, load_material, material_from_pem

SID = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.fixture(scope="module")
def ca():
    return new_ca()


@pytest.fixture
def good(tmp_path, ca) -> Tls:
    return issue_to(tmp_path / "w", ca, SID)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _refused(cfg: Tls, *fragments: str, path: str | None = None, **kw) -> str:
    with pytest.raises(TlsMaterialError) as e:
        load_material(cfg, **kw)
    message = str(e.value)
    for f in fragments:
        assert f in message, message
    assert "\n" not in message
    if path is not None:
        assert e.value.path == path and path in message
    return message


def test_good_material(good, ca):
    m = load_material(good)
    leaf = x509.load_pem_x509_certificate(_read(good.cert_file))
    assert m.spiffe_id == SID
    assert m.not_after == leaf.not_valid_after_utc and m.not_after.tzinfo is not None
    assert m.fingerprint == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert x509.load_pem_x509_certificates(m.cert_pem) == [leaf]
    assert x509.load_pem_x509_certificates(m.bundle_pem) == [ca.cert]
    assert serialization.load_pem_private_key(m.key_pem, None).public_key() == leaf.public_key()


def test_material_never_shows_its_key(good):
    m = load_material(good)
    assert b"PRIVATE KEY" in m.key_pem
    assert "PRIVATE" not in repr(m) and "key_pem" not in repr(m)


def test_material_is_frozen(good):
    m = load_material(good)
    with pytest.raises(Exception):
        m.spiffe_id = "x"  # type: ignore[misc]


def test_not_configured():
    _refused(Tls(), "no certificate files configured")


@pytest.mark.parametrize("which,role", [("cert_file", "cert_file"), ("key_file", "key_file"),
                                        ("bundle_file", "bundle_file")])
def test_file_not_found(good, which, role):
    os.unlink(getattr(good, which))
    _refused(good, role, "not found", path=getattr(good, which))


def test_file_is_a_directory(good, tmp_path):
    cfg = good.model_copy(update={"bundle_file": str(tmp_path)})
    _refused(cfg, "bundle_file", "is a directory", path=str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_unreadable(good):
    os.chmod(good.key_file, 0)
    _refused(good, "key_file", "permission denied", path=good.key_file)


@pytest.mark.parametrize("which,data,fragment", [
    ("cert_file", b"hello, not a certificate\n", "not PEM"),
    ("cert_file", b"", "not PEM"),
    ("cert_file", b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
     "not a valid PEM certificate"),
    ("key_file", b"garbage", "not PEM"),
    ("key_file", b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
     "not a valid PEM private key"),
    ("bundle_file", b"garbage that is not pem", "not PEM"),
    ("bundle_file", b"", "bundle empty"),
    ("bundle_file", b"\n  \n", "bundle empty"),
])
def test_bad_contents(good, which, data, fragment):
    with open(getattr(good, which), "wb") as f:
        f.write(data)
    _refused(good, which, fragment, path=getattr(good, which))


def test_certificate_in_the_key_file(good):
    with open(good.key_file, "wb") as f:
        f.write(_read(good.cert_file))
    _refused(good, "key_file", "not PEM", path=good.key_file)


def test_encrypted_key(good):
    key = serialization.load_pem_private_key(_read(good.key_file), None)
    with open(good.key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret")))
    _refused(good, "key_file", "encrypted", path=good.key_file)


def test_key_does_not_match(good, ca, tmp_path):
    other = issue_to(tmp_path / "other", ca, SID)
    with open(good.key_file, "wb") as f:
        f.write(_read(other.key_file))
    _refused(good, "key does not match the certificate", good.cert_file, path=good.key_file)


def test_certificate_without_spiffe_id(tmp_path, ca):
    cert, key = craft(ca.cert, ca.key, uris=[])  # a DNS SAN only
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert))
    _refused(cfg, "no SPIFFE ID", path=cfg.cert_file)


def test_certificate_with_two_spiffe_ids(tmp_path, ca):
    cert, key = craft(ca.cert, ca.key, uris=[SID, SID + "2"])
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert))
    _refused(cfg, "no SPIFFE ID", "exactly one", path=cfg.cert_file)


def test_certificate_expired(tmp_path, ca):
    cert, key = craft(ca.cert, ca.key, uris=[SID], not_before=NOW - timedelta(days=2),
                      not_after=NOW - timedelta(days=1))
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert))
    _refused(cfg, "cert_file", "certificate expired at", path=cfg.cert_file)


def test_certificate_not_yet_valid(tmp_path, ca):
    cert, key = craft(ca.cert, ca.key, uris=[SID], not_before=NOW + timedelta(hours=1),
                      not_after=NOW + timedelta(days=1))
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert))
    _refused(cfg, "certificate not yet valid", path=cfg.cert_file)


def test_injected_clock(good):
    m = load_material(good)
    _refused(good, "expired", now=m.not_after + timedelta(seconds=1))
    _refused(good, "not yet valid", now=NOW - timedelta(hours=1))


def test_not_signed_by_the_bundle(good, tmp_path):
    other = new_ca()
    with open(good.bundle_file, "wb") as f:
        f.write(calib.cert_pem(other.cert))
    _refused(good, "not signed by any root in the bundle", good.bundle_file, path=good.cert_file)


def test_same_name_different_key_is_not_signed(good):
    impostor = new_ca()  # same subject O=meshproxy, other key: the signature decides
    assert impostor.cert.subject == x509.load_pem_x509_certificate(_read(good.bundle_file)).subject
    with open(good.bundle_file, "wb") as f:
        f.write(calib.cert_pem(impostor.cert))
    _refused(good, "not signed by any root")


def test_self_signed_leaf_is_not_signed_by_bundle(tmp_path, ca):
    cert, key = craft(None, None, uris=[SID])
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(ca.cert))
    _refused(cfg, "not signed by any root")


def test_any_root_in_a_bundle_of_several(good, ca):
    other = new_ca()
    with open(good.bundle_file, "wb") as f:
        f.write(calib.cert_pem(other.cert, ca.cert))
    assert load_material(good).spiffe_id == SID


def test_signing_root_expired(tmp_path):
    old = new_ca(now=NOW - timedelta(days=10), ttl=timedelta(days=9, hours=23))
    cert, key = craft(old.cert, old.key, uris=[SID])
    cfg = write_files(tmp_path, calib.cert_pem(cert), calib.key_pem(key), calib.cert_pem(old.cert))
    _refused(cfg, "bundle_file", "expired", path=cfg.bundle_file)


def test_intermediates_in_the_cert_file(tmp_path, ca):
    inter, inter_key = craft(ca.cert, ca.key, ca=True, subject="intermediate")
    leaf, leaf_key = craft(inter, inter_key, uris=[SID])
    cfg = write_files(tmp_path, calib.cert_pem(leaf, inter), calib.key_pem(leaf_key), calib.cert_pem(ca.cert))
    m = load_material(cfg)
    assert x509.load_pem_x509_certificates(m.cert_pem) == [leaf, inter]
    # without the intermediate the leaf does not chain to the root
    cfg2 = write_files(tmp_path / "x", calib.cert_pem(leaf), calib.key_pem(leaf_key), calib.cert_pem(ca.cert))
    _refused(cfg2, "not signed by any root")


def test_material_from_pem_labels_memory(ca):
    leaf = ca.issue(SID, timedelta(hours=1))
    m = material_from_pem(calib.cert_pem(leaf.cert), calib.key_pem(leaf.key), calib.cert_pem(ca.cert))
    assert isinstance(m, Material) and m.spiffe_id == SID
    with pytest.raises(TlsMaterialError, match="<memory>"):
        material_from_pem(calib.cert_pem(leaf.cert), calib.key_pem(leaf.key), b"")


def test_equal_files_give_equal_material(good):
    assert load_material(good) == load_material(good)


def test_file_unreadable_simulated(good, monkeypatch):
    import meshproxy.tls.certs as certs

    real_open = open

    def fake_open(path, *a, **kw):
        if path == good.key_file:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(certs, "open", fake_open, raising=False)
    _refused(good, "key_file", "permission denied", path=good.key_file)
