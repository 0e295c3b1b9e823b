"""``observe/requests.ConnectionSeries``: which side of Istio's labels the peer sidecars fill."""

from __future__ import annotations

from meshproxy.net.mesh import PeerInfo
from meshproxy.observe.metrics import ISTIO_LABELS, Peerless
from meshproxy.observe.requests import REQUEST_LABELS, ConnectionSeries, RequestMetrics

ME = Peerless("frontend", "shop", "frontend", "v3", "Kubernetes", "frontend-svc", "2024-05")
REVIEWS = PeerInfo("spiffe://cluster.local/ns/shop/sa/reviews", "",
                   ("reviews-v1", "reviews", "v1", "east", "reviews", "v1"))


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
    assert {k: got[k] for k in ISTIO_LABELS if k.startswith("destination_") and not k.startswith("destination_service")} == {
        "destination_workload": "reviews-v1", "destination_workload_namespace": "shop",
        "destination_principal": REVIEWS.principal, "destination_app": "reviews", "destination_version": "v1",
        "destination_cluster": "east", "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v1"}
    assert (got["source_canonical_service"], got["source_canonical_revision"]) == ("frontend-svc", "2024-05")
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
    assert (got["source_canonical_service"], got["destination_canonical_service"]) == ("reviews", "frontend-svc")


def test_canonical_service_and_revision_defaults_follow_istio():
    """``service.istio.io/canonical-name`` → ``app`` → workload; ``canonical-revision`` → ``version`` → latest."""
    from meshproxy.config.load import from_dict

    def me(**node):
        return Peerless.of(from_dict({"node": {"pod_name": "reviews-v2-5b7c8d9f4-abcde", **node}}).node)

    assert (me().canonical_service, me().canonical_revision) == ("reviews-v2", "latest")
    assert (me(app="reviews", version="v2").canonical_service, me(app="reviews", version="v2").canonical_revision) \
        == ("reviews", "v2")
    both = me(app="reviews", version="v2", canonical_service="reviews-api", canonical_revision="r7")
    assert (both.canonical_service, both.canonical_revision) == ("reviews-api", "r7")


def test_pooled_connections_to_one_peer_share_one_series_key():
    """Every connection to the same peer sidecar yields the same ``PeerInfo`` (it is hashed by
    identity), so requests over any of them land in one label set."""
    from meshproxy.net.mesh import upstream_peer

    md = ("reviews-v1", "reviews", "v1", "east", "reviews", "v1")
    one, two = upstream_peer(REVIEWS.principal, md), upstream_peer(REVIEWS.principal, md)
    assert one is two and upstream_peer(REVIEWS.principal, md[:5] + ("v2",)) is not one
    rm = RequestMetrics()
    cs = ConnectionSeries(rm, ME, "source")
    for up in (one, two):
        cs.observe("reviews", "http", 200, "-", "-", 1.0, 0, 10, up)
    [series] = rm.series.values()
    assert series.count == 2
