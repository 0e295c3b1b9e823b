"""A minimal mesh certificate authority: one self-signed root that issues
workload certificates (X509-SVIDs) with a SPIFFE ID.

Where this sits: beside the data flow, used only by ``meshproxy ca`` (``tls/cli.py``)
and by tests. The proxy itself never signs anything; it reads the files this
module writes (or files from cert-manager / SPIRE) through ``tls/certs.py``.

Files::

    meshproxy ca init  --out CA/   → CA/ca.pem       root certificate
                                     CA/ca-key.pem   root key (0600)
    meshproxy ca issue --out W/    → W/cert.pem      the workload certificate (leaf only)
                                     W/key.pem       its key (0600)
                                     W/chain.pem     intermediates between leaf and root: none for this
                                                     single-level CA, so the file is empty (kept so the
                                                     layout matches CAs that have intermediates)
                                     W/bundle.pem    the trust bundle (the root)

Point ``security.tls`` at ``cert.pem`` (with intermediates, ``cat cert.pem chain.pem``),
``key.pem`` and ``bundle.pem``.

Certificates (ECDSA P-256, SHA-256):

- root: subject ``O=meshproxy``, basicConstraints CA (pathlen 0: it signs
  workloads only), keyUsage keyCertSign+cRLSign, URI SAN ``spiffe://TRUST_DOMAIN``, SKI;
- leaf: subject ``O=meshproxy``, URI SAN = the SPIFFE ID (+ optional DNS names),
  EKU serverAuth+clientAuth, keyUsage digitalSignature, basicConstraints not CA,
  SKI and AKI. ``notBefore`` is back-dated by :data:`CLOCK_SKEW`; a leaf may not
  outlive its root.

Every file is written atomically (temporary file in the same directory, then
``rename``); key files are created 0600, so they never exist with wider permissions.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import SCHEME, SpiffeId, SpiffeIdError, validate_trust_domain

CLOCK_SKEW = timedelta(minutes=1)
"""``notBefore`` is this far in the past, so peers with slightly slow clocks accept a fresh certificate."""
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
CERT, KEY, CHAIN, BUNDLE = "cert.pem", "key.pem", "chain.pem", "bundle.pem"

_TTL = re.compile(r"^(\d+)(s|m|h|d)$")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DNS = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_ORG = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshproxy")])


class CaError(Exception):
    """A CA operation cannot proceed; the message is one line and names the file or input."""


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` → timedelta (> 0); ``ValueError`` otherwise."""
    m = _TTL.match(text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"expected a duration like 24h (s, m, h or d), got {text!r}")
    return timedelta(seconds=int(m.group(1)) * _TTL_UNITS[m.group(2)])


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted (the file's mode protects it)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode`` (never wider), then rename."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widens past ``mode``
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass(frozen=True)
class IssuedLeaf:
    """A freshly issued workload certificate and what goes with it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    """Intermediates between ``cert`` and a root (empty for our single-level CA)."""
    bundle: tuple[x509.Certificate, ...]
    """The roots."""

    def save(self, directory: str) -> list[str]:
        """Write cert.pem, key.pem (0600), chain.pem and bundle.pem into ``directory``; return the paths."""
        os.makedirs(directory, exist_ok=True)
        out = []
        for name, data, mode in ((BUNDLE, cert_pem(*self.bundle), 0o644), (CHAIN, cert_pem(*self.chain), 0o644),
                                 (KEY, key_pem(self.key), 0o600), (CERT, cert_pem(self.cert), 0o644)):
            path = os.path.join(directory, name)
            write_atomic(path, data, mode)
            out.append(path)
        return out


@dataclass(frozen=True)
class CertificateAuthority:
    """A root certificate and its key, for one trust domain."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    trust_domain: str

    @classmethod
    def create(cls, trust_domain: str, ttl: timedelta, *, now: datetime | None = None) -> "CertificateAuthority":
        """A new self-signed root for ``trust_domain`` valid for ``ttl``."""
        try:
            validate_trust_domain(trust_domain)
        except SpiffeIdError as e:
            raise CaError(str(e)) from None
        t = _now(now)
        key = _new_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_ORG).issuer_name(_ORG)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - CLOCK_SKEW).not_valid_after(t + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
                           critical=False)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, trust_domain)

    @classmethod
    def load(cls, directory: str) -> "CertificateAuthority":
        """Read ``directory/ca.pem`` and ``directory/ca-key.pem``; :class:`CaError` with a clear message if unusable."""
        cert_path, key_path = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
        cert_data, key_data = _read(cert_path), _read(key_path)
        try:
            cert = x509.load_pem_x509_certificate(cert_data)
        except ValueError:
            raise CaError(f"{cert_path}: not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError):
            raise CaError(f"{key_path}: not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_path}: expected an ECDSA key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise CaError(f"{key_path}: does not match the certificate {cert_path}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"{cert_path}: not a CA certificate")
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        tds = [u[len(SCHEME):].rstrip("/") for u in uris if u.startswith(SCHEME)]
        if len(tds) != 1:
            raise CaError(f"{cert_path}: expected exactly one spiffe://TRUST_DOMAIN URI SAN")
        return cls(cert, key, tds[0])

    def save(self, directory: str, *, force: bool = False) -> list[str]:
        """Write ca.pem and ca-key.pem (0600); refuse to replace an existing key unless ``force``."""
        key_path = os.path.join(directory, CA_KEY)
        if not force and os.path.lexists(key_path):
            raise CaError(f"{key_path} already exists (use --force to replace the CA)")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        cert_path = os.path.join(directory, CA_CERT)
        write_atomic(key_path, key_pem(self.key), 0o600)
        write_atomic(cert_path, cert_pem(self.cert), 0o644)
        return [cert_path, key_path]

    def issue(self, spiffe_id: str, ttl: timedelta, *, dns: Sequence[str] = (),
              now: datetime | None = None) -> IssuedLeaf:
        """A new workload certificate for ``spiffe_id`` (which must be in this CA's trust domain)."""
        try:
            sid = SpiffeId.parse(spiffe_id)
        except SpiffeIdError as e:
            raise CaError(str(e)) from None
        if sid.trust_domain != self.trust_domain:
            raise CaError(f"spiffe id {spiffe_id!r} is in trust domain {sid.trust_domain!r}, "
                          f"the CA signs for {self.trust_domain!r}")
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(sid))]
        for name in dns:
            if not _DNS.match(name) or len(name) > 253:
                raise CaError(f"--dns {name!r}: expected a lower-case DNS name such as web.shop.svc")
            names.append(x509.DNSName(name))
        t = _now(now)
        not_after = t + ttl
        if not_after > self.cert.not_valid_after_utc:
            raise CaError(f"ttl {ttl} would outlive the CA certificate (valid until "
                          f"{self.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
        key = _new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_ORG).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedLeaf(cert, key, (), (self.cert,))


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CaError(f"{path}: not found") from None
    except PermissionError:
        raise CaError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise CaError(f"{path}: is a directory") from None
    except OSError as e:
        raise CaError(f"{path}: cannot read ({e.strerror or e})") from None
