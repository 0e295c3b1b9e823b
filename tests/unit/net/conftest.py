"""Fixtures of the net/ unit tests."""

from __future__ import annotations

from datetime import timedelta

import pytest


@pytest.fixture
def tls_materials(tmp_path) -> dict:
    """``{"a": material, "b": material}``: two workload certificates (``spiffe://cluster.local/ns/t/sa/a``
    and ``.../sa/b``) from one fresh CA, loaded as the sidecar loads them."""
    from meshproxy.config.security import Tls
    from meshproxy.tls import certs
    from meshproxy.tls.ca import CertificateAuthority

    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    mats = {}
    for name in ("a", "b"):
        d = tmp_path / name
        ca.issue(f"spiffe://cluster.local/ns/t/sa/{name}", timedelta(hours=1)).save(str(d))
        mats[name] = certs.load_material(Tls(cert_file=str(d / "cert.pem"), key_file=str(d / "key.pem"),
                                             bundle_file=str(d / "bundle.pem")))
    return mats
