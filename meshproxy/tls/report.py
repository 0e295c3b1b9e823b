"""What the admin ``/certs`` endpoint shows: the workload certificate in use, Envoy's shape.

Where this sits: beside the data flow. ``admin/server.py`` calls :func:`certs_report`
with the ``Material`` that ``net/mesh.py`` holds right now (the one new handshakes use,
so after a rotation it shows the new certificate) and the file paths it came from.
Pure: parses PEM, the clock is a parameter; never touches the key.

The JSON is Envoy's ``admin.v3.Certificates`` as proto3 JSON prints it, so tooling
written for ``istioctl proxy-config secret``-style checks reads it unchanged:

- ``certificates``: one entry (this sidecar has one workload certificate), with
  ``ca_cert`` (the trust bundle's roots) and ``cert_chain`` (the leaf, then any
  intermediates);
- each certificate: ``path``, ``serial_number`` (lower-case hex), ``subject_alt_names``
  (``{"uri": ...}``, ``{"dns": ...}`` or ``{"ip_address": ...}``),
  ``days_until_expiration`` (a uint64, so a string; 0 once expired), ``valid_from`` and
  ``expiration_time`` (RFC 3339, UTC).

Envoy reports ``days_until_expiration`` of a chain entry as the minimum over the chain
and its CA; here each entry reports its own, which is what rotation tooling compares.
"""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509

from .certs import Material, _stamp


def _alt_names(cert: x509.Certificate) -> list[dict[str, str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[dict[str, str]] = []
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            out.append({"uri": name.value})
        elif isinstance(name, x509.DNSName):
            out.append({"dns": name.value})
        elif isinstance(name, x509.IPAddress):
            out.append({"ip_address": str(name.value)})
    return out


def certificate_details(cert: x509.Certificate, path: str, now: datetime) -> dict:
    """One ``admin.v3.CertificateDetails``."""
    days = max((cert.not_valid_after_utc - now).days, 0)  # whole days; a past expiry is -1 or less
    return {
        "path": path,
        "serial_number": format(cert.serial_number, "x"),
        "subject_alt_names": _alt_names(cert),
        "days_until_expiration": str(days),
        "valid_from": _stamp(cert.not_valid_before_utc),
        "expiration_time": _stamp(cert.not_valid_after_utc),
    }


def certs_report(material: Material | None, cert_path: str, bundle_path: str,
                 now: datetime | None = None) -> dict:
    """Envoy's ``/certs`` body for ``material`` (None: no workload certificate configured,
    ``{"certificates": []}`` as Envoy prints with no TLS contexts)."""
    if material is None:
        return {"certificates": []}
    t = now or datetime.now(timezone.utc)
    chain = x509.load_pem_x509_certificates(material.cert_pem)
    roots = x509.load_pem_x509_certificates(material.bundle_pem)
    return {"certificates": [{
        "ca_cert": [certificate_details(c, bundle_path, t) for c in roots],
        "cert_chain": [certificate_details(c, cert_path, t) for c in chain],
    }]}
