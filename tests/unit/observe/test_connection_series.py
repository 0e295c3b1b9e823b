"""``observe/requests.ConnectionSeries``: which side of Istio's labels the peer sidecars fill."""

from __future__ import annotations

from meshproxy.net.mesh import PeerInfo
from meshproxy.observe.metrics import ISTIO_LABELS, Peerless
from meshproxy.observe.requests import REQUEST_LABELS, ConnectionSeries, RequestMetrics

ME = Peerless("frontend", "shop", "frontend", "v3", "Kubernetes")
REVIEWS = PeerInfo("spiffe://cluster.local/ns/shop/sa/reviews", "", ("reviews-v1", "reviews", "v1", "east"))


def recorded(reporter: str, peer=None, upstream=None) -> dict:
    rm = RequestMetrics()
    cs = ConnectionSeries(rm, ME, reporter, peer)
    cs.observe("reviews.shop.svc:9080", "http", 200, "-", "-", 1.0, 0, 10, upstream)
    cs.observe("reviews.shop.svc:9080", "http", 200, "-", "-", 1.0, 0, 10, upstream)
    [(labels, series)] = rm.series.items()
    assert series.count == 2
    return dict(zip(REQUEST_LABELS, labels))


def test_a_source_reporter_names_the_peer_sidecar_that_answered():
    got = recorded("source", upstream=REVIEWS)
    assert {k: got[k] for k in ISTIO_LABELS if k.startswith("destination_") and "service" not in k} == {
        "destination_workload": "reviews-v1", "destination_workload_namespace": "shop",
        "destination_principal": REVIEWS.principal, "destination_app": "reviews", "destination_version": "v1",
        "destination_cluster": "east"}
    assert got["source_workload"] == "frontend" and got["source_principal"] == "unknown"
    assert got["connection_security_policy"] == "unknown"  # Istio: unknown when the report is from the source


def test_without_an_mtls_upstream_the_destination_stays_unknown():
    got = recorded("source")
    assert {got[k] for k in ("destination_workload", "destination_principal", "destination_app")} == {"unknown"}


def test_a_destination_reporter_names_the_caller():
    got = recorded("destination", peer=REVIEWS)
    assert (got["source_workload"], got["source_app"], got["source_version"], got["source_cluster"],
            got["source_principal"], got["source_workload_namespace"]) == (
        "reviews-v1", "reviews", "v1", "east", REVIEWS.principal, "shop")
    assert got["connection_security_policy"] == "mutual_tls" and got["destination_workload"] == "frontend"
