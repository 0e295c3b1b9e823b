"""A cluster's endpoints and its round robin."""

import pytest

from meshproxy.config.load import from_dict
from meshproxy.upstream.cluster import Cluster, EndpointStats
from meshproxy.upstream.lb import RoundRobin


def _cluster(endpoints):
    cfg = from_dict({"clusters": [{"name": "ratings", "endpoints": endpoints}]})
    return Cluster.from_config(cfg.clusters[0], 1.5)


def test_round_robin_takes_each_endpoint_in_turn():
    c = _cluster(["10.0.0.1:80", "10.0.0.2:8080", "[2001:db8::1]:9000"])
    picked = [(e.host, e.port) for e in (c.pick() for _ in range(7))]
    assert picked == [("10.0.0.1", 80), ("10.0.0.2", 8080), ("2001:db8::1", 9000)] * 2 + [("10.0.0.1", 80)]
    assert c.connect_timeout == 1.5
    assert c.find("10.0.0.2", 8080) is c.endpoints[1]
    assert c.find("10.0.0.2", 80) is None


def test_round_robin_refuses_no_endpoints():
    with pytest.raises(ValueError, match="at least one endpoint"):
        RoundRobin([])


def test_a_cluster_always_has_its_balancer():
    """Endpoints and balancer are both required: no cluster exists that could not pick."""
    with pytest.raises(TypeError):
        Cluster("orphan", "auto", 1.0, [EndpointStats("10.0.0.1", 80)])  # type: ignore[call-arg]
    eps = [EndpointStats("10.0.0.1", 80)]
    c = Cluster("one", "auto", 1.0, eps, RoundRobin(eps))
    assert c.pick() is eps[0] and c.mtls_identities is None


def test_dump_shows_endpoint_counters():
    c = _cluster(["10.0.0.1:80"])
    ep = c.pick()
    ep.rq_total += 2
    ep.rq_success += 1
    d = c.dump()
    assert d["name"] == "ratings"
    assert d["endpoints"] == [{"address": "10.0.0.1:80", "cx_total": 0, "cx_connect_fail": 0, "rq_total": 2,
                               "rq_success": 1, "rq_error": 0, "rq_active": 0}]
