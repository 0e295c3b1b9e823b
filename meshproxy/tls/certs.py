"""The workload's TLS material: read the three files named by ``security.tls``,
validate them together and hand out one immutable :class:`Material`.

Where this sits: at start-up (``app.py`` → ``net/mesh.py``) and on every
rotation (``tls/rotation.py``); ``tls/context.py`` turns a ``Material`` into
``ssl.SSLContext`` objects. Pure apart from reading the files; the clock is a
parameter.

What is checked, in order (the first problem wins; the message names the file):
the files are readable → each is PEM of the right kind → the bundle is not empty →
the key matches the certificate → the certificate has exactly one valid SPIFFE ID →
it is valid now → it chains (through any intermediates in ``cert_file``) to a
root in the bundle, by signature. Full RFC 5280 path validation is OpenSSL's job
in the handshake; this catches the mistakes people make, with a clear message,
before a single connection fails.

Never logs, prints or repr()s the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..config.security import Tls
from .identity import spiffe_id_of

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


class TlsMaterialError(Exception):
    """The files cannot be used; ``str(e)`` is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path
        """The file at fault, if one is."""


@dataclass(frozen=True)
class Material:
    """One validated, consistent set of workload TLS material (PEM, normalized)."""

    cert_pem: bytes
    """The leaf certificate followed by any intermediates (what the peer needs to build the chain)."""
    key_pem: bytes = field(repr=False)
    """The private key of the leaf, PKCS#8. Never logged."""
    bundle_pem: bytes
    """The trust bundle: root certificates peers must chain to."""
    spiffe_id: str
    """The leaf's SPIFFE ID (``spiffe://...``): this workload's identity."""
    not_after: datetime
    """When the leaf expires (timezone-aware, UTC)."""
    fingerprint: str
    """SHA-256 of the leaf certificate (DER), lower-case hex without separators."""


def _read(role: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsMaterialError(f"{role} {path}: not found", path) from None
    except PermissionError:
        raise TlsMaterialError(f"{role} {path}: permission denied", path) from None
    except IsADirectoryError:
        raise TlsMaterialError(f"{role} {path}: is a directory, expected a PEM file", path) from None
    except OSError as e:
        raise TlsMaterialError(f"{role} {path}: cannot read ({e.strerror or e})", path) from None


def _certs(role: str, path: str, data: bytes) -> list[x509.Certificate]:
    if _CERT_MARK not in data:
        raise TlsMaterialError(f"{role} {path}: not PEM (expected {_CERT_MARK.decode()})", path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsMaterialError(f"{role} {path}: not a valid PEM certificate", path) from None


def _key(path: str, data: bytes):
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise TlsMaterialError(f"key_file {path}: not PEM (expected -----BEGIN PRIVATE KEY-----)", path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsMaterialError(f"key_file {path}: the key is encrypted (expected an unencrypted key)", path) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsMaterialError(f"key_file {path}: not a valid PEM private key", path) from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError (not a CA key type), TypeError (unsupported key)
        return False
    return True


def _signing_root(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                  roots: list[x509.Certificate]) -> x509.Certificate | None:
    """The bundle root that ``leaf`` chains to through ``intermediates`` (by signature), else None."""
    current, pool = leaf, list(intermediates)
    while True:
        for root in roots:
            if _issued_by(current, root):
                return root
        nxt = next((c for c in pool if _issued_by(current, c)), None)
        if nxt is None:
            return None
        pool.remove(nxt)
        current = nxt


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def material_from_pem(cert_data: bytes, key_data: bytes, bundle_data: bytes, *, now: datetime | None = None,
                      paths: tuple[str, str, str] = ("<memory>", "<memory>", "<memory>")) -> Material:
    """Validate PEM bytes (same checks and messages as :func:`load_material`); ``paths`` only label errors."""
    cert_path, key_path, bundle_path = paths
    chain = _certs("cert_file", cert_path, cert_data)
    key = _key(key_path, key_data)
    if not bundle_data.strip():
        raise TlsMaterialError(f"bundle_file {bundle_path}: bundle empty (expected root certificates)", bundle_path)
    roots = _certs("bundle_file", bundle_path, bundle_data)
    leaf, intermediates = chain[0], chain[1:]

    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TlsMaterialError(f"key_file {key_path}: key does not match the certificate in {cert_path}", key_path)
    spiffe_id = spiffe_id_of(leaf)
    if spiffe_id is None:
        raise TlsMaterialError(f"cert_file {cert_path}: certificate has no SPIFFE ID "
                               "(expected exactly one spiffe:// URI SAN)", cert_path)
    t = now or datetime.now(timezone.utc)
    if t < leaf.not_valid_before_utc:
        raise TlsMaterialError(f"cert_file {cert_path}: certificate not yet valid "
                               f"(valid from {_stamp(leaf.not_valid_before_utc)})", cert_path)
    if t > leaf.not_valid_after_utc:
        raise TlsMaterialError(f"cert_file {cert_path}: certificate expired at {_stamp(leaf.not_valid_after_utc)}",
                               cert_path)
    root = _signing_root(leaf, intermediates, roots)
    if root is None:
        raise TlsMaterialError(f"cert_file {cert_path}: certificate not signed by any root in the bundle "
                               f"{bundle_path} (issuer {leaf.issuer.rfc4514_string() or '<empty>'})", cert_path)
    if t > root.not_valid_after_utc:
        raise TlsMaterialError(f"bundle_file {bundle_path}: the root that signed the certificate expired at "
                               f"{_stamp(root.not_valid_after_utc)}", bundle_path)

    pem = serialization.Encoding.PEM
    return Material(
        cert_pem=b"".join(c.public_bytes(pem) for c in chain),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        bundle_pem=b"".join(c.public_bytes(pem) for c in roots),
        spiffe_id=spiffe_id,
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def load_material(cfg: Tls, *, now: datetime | None = None) -> Material:
    """Read and validate ``cfg.cert_file``, ``cfg.key_file`` and ``cfg.bundle_file``.

    Raises :class:`TlsMaterialError` naming the file and the problem. ``now``
    (aware datetime) is for tests; default: the current time.
    """
    if not cfg.enabled:
        raise TlsMaterialError("no certificate files configured (security.tls.cert_file, key_file, bundle_file)")
    paths = (cfg.cert_file, cfg.key_file, cfg.bundle_file)
    data = [_read(role, p) for role, p in zip(("cert_file", "key_file", "bundle_file"), paths)]
    return material_from_pem(*data, now=now, paths=paths)  # type: ignore[arg-type]
