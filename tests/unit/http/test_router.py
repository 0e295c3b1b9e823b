"""The pure router: authority, path, method and header matching; weighted clusters."""

from __future__ import annotations

import collections

import pytest

from meshproxy.config.load import ConfigError, from_dict
from meshproxy.http.router import PASSTHROUGH, Router


def router(routes, clusters=("a", "b", "c"), rand=None):
    cfg = from_dict({"clusters": [{"name": n, "endpoints": ["127.0.0.1:1"]} for n in clusters],
                     "routes": routes})
    return Router(cfg.routes, rand=rand)


def pick(r, method="GET", authority="svc", path="/", headers=()):
    return r.route(method.encode(), authority.encode() if authority is not None else None, path.encode(),
                   [(k.encode(), v.encode()) for k, v in headers]).cluster


@pytest.mark.parametrize("domain, authority, hit", [
    ("*", "anything:81", True),
    ("reviews", "reviews", True),
    ("reviews", "reviews:9080", True),
    ("reviews", "REVIEWS:9080", True),
    ("reviews", "reviews.default", False),
    ("reviews:9080", "reviews:9080", True),
    ("reviews:9080", "reviews:80", False),
    ("reviews:9080", "reviews", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "api.example.com:8443", True),
    ("*.example.com", "example.com", False),
    ("api.*", "api.internal", True),
    ("api.*", "web.internal", False),
    ("[2001:db8::1]", "[2001:db8::1]:80", True),
])
def test_authority(domain, authority, hit):
    r = router([{"name": "r", "match": {"authority": [domain]}, "cluster": "a"}])
    assert (pick(r, authority=authority) == "a") is hit


def test_missing_authority_only_matches_star():
    r = router([{"name": "r", "match": {"authority": ["svc"]}, "cluster": "a"},
                {"name": "s", "cluster": "b"}])
    assert pick(r, authority=None) == "b"


@pytest.mark.parametrize("match, path, hit", [
    ({"exact": "/a"}, "/a", True),
    ({"exact": "/a"}, "/a?x=1", True),
    ({"exact": "/a"}, "/ab", False),
    ({"prefix": "/api/"}, "/api/v1", True),
    ({"prefix": "/api/"}, "/apix", False),
    ({"regex": "/v[0-9]+/items"}, "/v12/items", True),
    ({"regex": "/v[0-9]+/items"}, "/v12/items/3", False),
])
def test_path(match, path, hit):
    r = router([{"name": "r", "match": {"path": match}, "cluster": "a"}])
    assert (pick(r, path=path) == "a") is hit


def test_method_and_headers():
    r = router([
        {"name": "canary", "match": {"headers": [{"name": "X-Canary", "exact": "1"}]}, "cluster": "b"},
        {"name": "writes", "match": {"methods": ["post", "PUT"]}, "cluster": "c"},
        {"name": "no-auth", "match": {"headers": [{"name": "authorization", "present": True, "invert": True}]},
         "cluster": "a"},
    ])
    assert pick(r, headers=[("x-canary", "1")]) == "b"
    assert pick(r, method="POST", headers=[("authorization", "x")]) == "c"
    assert pick(r, method="GET") == "a"
    assert pick(r, method="GET", headers=[("authorization", "x")]) == PASSTHROUGH


def test_header_regex_and_prefix_with_repeated_values():
    r = router([{"name": "r", "match": {"headers": [{"name": "x-v", "regex": "1,2"},
                                                     {"name": "ua", "prefix": "curl/"}]}, "cluster": "a"}])
    assert pick(r, headers=[("x-v", "1"), ("x-v", "2"), ("ua", "curl/8")]) == "a"
    assert pick(r, headers=[("x-v", "1"), ("ua", "curl/8")]) == PASSTHROUGH


def test_first_match_wins_and_default_is_passthrough():
    r = router([{"name": "one", "match": {"path": {"prefix": "/"}}, "cluster": "a"},
                {"name": "two", "cluster": "b"}])
    res = r.route(b"GET", b"x", b"/y")
    assert (res.name, res.cluster, res.timeout) == ("one", "a", 15.0)
    empty = Router([]).route(b"GET", b"x", b"/")
    assert (empty.name, empty.cluster) == ("default", PASSTHROUGH)


def test_weighted_clusters_follow_weights():
    counts = collections.Counter()
    seq = iter(range(100))
    r = router([{"name": "split", "weighted_clusters": [{"cluster": "a", "weight": 90},
                                                         {"cluster": "b", "weight": 10},
                                                         {"cluster": "c", "weight": 0}]}],
               rand=lambda n: next(seq) % n)
    for _ in range(100):
        counts[pick(r)] += 1
    assert counts == {"a": 90, "b": 10}


@pytest.mark.parametrize("routes, path, msg", [
    ([{"name": "r", "cluster": "nope"}], "routes[0].cluster", "no cluster named 'nope'"),
    ([{"name": "r"}], "routes[0]", "exactly one of cluster, weighted_clusters"),
    ([{"name": "r", "cluster": "a", "match": {"path": {"prefix": "/", "exact": "/"}}}], "routes[0].match.path",
     "exactly one of exact, prefix, regex"),
    ([{"name": "r", "cluster": "a", "match": {"path": {"regex": "(["}}}], "routes[0].match.path.regex",
     "valid regular expression"),
    ([{"name": "r", "cluster": "a", "match": {"authority": ["a*b"]}}], "routes[0].match.authority",
     "expected '*'"),
    ([{"name": "r", "weighted_clusters": [{"cluster": "a", "weight": 0}]}], "routes[0]", "weight above 0"),
])
def test_route_config_errors(routes, path, msg):
    with pytest.raises(ConfigError) as e:
        from_dict({"clusters": [{"name": "a", "endpoints": ["127.0.0.1:1"]}], "routes": routes}, "f.yaml")
    assert f"f.yaml: {path}: " in str(e.value) and msg in str(e.value)


def test_catch_all_first_route_answers_every_request():
    r = router([{"name": "all", "cluster": "a", "timeout": "3s"}, {"name": "never", "cluster": "b"}])
    for method, authority, path in ((b"GET", b"x", b"/"), (b"POST", None, b"/y?z"), (b"PUT", b"[::1]:80", b"*")):
        res = r.route(method, authority, path)
        assert (res.name, res.cluster, res.timeout) == ("all", "a", 3.0)
