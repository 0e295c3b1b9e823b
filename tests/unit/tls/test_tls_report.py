"""The admin /certs body: Envoy's admin.v3.Certificates shape, for the material in use."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from meshproxy.tls.ca import cert_pem, key_pem
from meshproxy.tls.certs import material_from_pem
from meshproxy.tls.report import certs_report

from tls_support import NOW, craft, new_ca

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SID = "spiffe://cluster.local/ns/shop/sa/reviews"


def _material(ttl=timedelta(days=10), dns=()):
    ca = new_ca(ttl=timedelta(days=365), now=T0)
    leaf = ca.issue(SID, ttl, dns=dns, now=T0)
    mat = material_from_pem(cert_pem(leaf.cert), key_pem(leaf.key), cert_pem(ca.cert), now=T0)
    return ca, leaf, mat


def test_report_names_the_leaf_and_the_bundle():
    ca, leaf, mat = _material(dns=("reviews.shop.svc",))
    body = certs_report(mat, "/etc/certs/cert.pem", "/etc/certs/bundle.pem", now=T0 + timedelta(hours=1))
    json.dumps(body)  # the handler serialises it as is
    [entry] = body["certificates"]
    [root] = entry["ca_cert"]
    [mine] = entry["cert_chain"]
    assert mine == {
        "path": "/etc/certs/cert.pem",
        "serial_number": format(leaf.cert.serial_number, "x"),
        "subject_alt_names": [{"uri": SID}, {"dns": "reviews.shop.svc"}],
        "days_until_expiration": "9",  # 10 days from T0 minus an hour: 9 whole days left
        "valid_from": "2026-12-01T11:59:00Z",  # the CA back-dates by its clock-skew minute
        "expiration_time": "2026-12-11T12:00:00Z",
    }
    assert root["path"] == "/etc/certs/bundle.pem"
    assert root["serial_number"] == format(ca.cert.serial_number, "x")
    assert root["subject_alt_names"] == [{"uri": "spiffe://cluster.local"}]  # the trust domain
    assert root["days_until_expiration"] == "364"
    assert root["expiration_time"] == "2027-12-01T12:00:00Z"


def test_an_expired_certificate_reports_zero_days():
    _, _, mat = _material(ttl=timedelta(hours=2))
    body = certs_report(mat, "c", "b", now=T0 + timedelta(hours=3))
    assert body["certificates"][0]["cert_chain"][0]["days_until_expiration"] == "0"
    body = certs_report(mat, "c", "b", now=T0 + timedelta(hours=1))
    assert body["certificates"][0]["cert_chain"][0]["days_until_expiration"] == "0"  # under a day left


def test_no_workload_certificate_is_an_empty_list():
    assert certs_report(None, "", "") == {"certificates": []}


def test_intermediates_follow_the_leaf_in_order():
    ca = new_ca()
    inter, inter_key = craft(ca.cert, ca.key, ca=True, subject="intermediate")
    leaf, leaf_key = craft(inter, inter_key, uris=[SID])
    mat = material_from_pem(cert_pem(leaf, inter), key_pem(leaf_key), cert_pem(ca.cert), now=NOW)
    chain = certs_report(mat, "c", "b", now=NOW)["certificates"][0]["cert_chain"]
    assert [c["serial_number"] for c in chain] == [format(leaf.serial_number, "x"), format(inter.serial_number, "x")]
    assert chain[0]["subject_alt_names"] == [{"uri": SID}]
    assert chain[1]["subject_alt_names"] == [{"dns": "example.test"}]  # craft's default SAN
