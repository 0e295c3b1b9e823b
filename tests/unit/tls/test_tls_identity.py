"""SPIFFE ID parsing, extraction from certificates and pattern matching."""

from __future__ import annotations

import pytest
from tls_support import craft

from meshproxy.tls.identity import SpiffeId, SpiffeIdError, id_matches, spiffe_id_of, validate_trust_domain


def test_parse_kubernetes_form():
    sid = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart")
    assert (sid.trust_domain, sid.path) == ("cluster.local", "/ns/shop/sa/cart")
    assert (sid.namespace, sid.service_account) == ("shop", "cart")
    assert str(sid) == "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.mark.parametrize("text", ["spiffe://td/workload", "spiffe://td/ns/a", "spiffe://td/ns/a/sa/b/extra",
                                  "spiffe://td/x/a/sa/b"])
def test_non_kubernetes_paths_have_no_namespace(text):
    sid = SpiffeId.parse(text)
    assert sid.namespace is None and sid.service_account is None


def test_allowed_characters():
    assert str(SpiffeId.parse("spiffe://a-b_c.0/Ns_1/x-Y.z")) == "spiffe://a-b_c.0/Ns_1/x-Y.z"


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("http://cluster.local/ns/a/sa/b", "expected spiffe://"),
    ("SPIFFE://cluster.local/ns/a", "expected spiffe://"),
    ("spiffe://", "trust domain is empty"),
    ("spiffe:///ns/a", "trust domain is empty"),
    ("spiffe://Cluster.local/ns/a", "lower-case"),
    ("spiffe://cluster.local:8080/ns/a", "port"),
    ("spiffe://user@cluster.local/ns/a", "user info"),
    ("spiffe://cluster.local/ns/a?x=1", "query"),
    ("spiffe://cluster.local/ns/a#frag", "fragment"),
    ("spiffe://cluster.local/ns/a%20b", "percent"),
    ("spiffe://cluster.local", "expected a path"),
    ("spiffe://cluster.local/", "expected a path"),
    ("spiffe://cluster.local/ns//a", "empty"),
    ("spiffe://cluster.local/ns/a/", "empty"),
    ("spiffe://cluster.local/ns/./a", "'.'"),
    ("spiffe://cluster.local/ns/../a", "'..'"),
    ("spiffe://cluster.local/ns/a b", "may only use"),
    ("spiffe://cluster.local/ns/ä", "may only use"),
    ("spiffe://cluster.local/" + "a" * 2100, "longer than"),
])
def test_malformed_ids_are_refused_with_a_clear_message(text, fragment):
    with pytest.raises(SpiffeIdError) as e:
        SpiffeId.parse(text)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("td,ok", [("cluster.local", True), ("a_b-c.9", True), ("", False), ("Upper", False),
                                   ("x" * 256, False), ("with space", False)])
def test_validate_trust_domain(td, ok):
    if ok:
        assert validate_trust_domain(td) == td
    else:
        with pytest.raises(SpiffeIdError):
            validate_trust_domain(td)


@pytest.mark.parametrize("uris,expected", [
    (["spiffe://cluster.local/ns/a/sa/b"], "spiffe://cluster.local/ns/a/sa/b"),
    (["https://example.test/", "spiffe://cluster.local/ns/a/sa/b"], "spiffe://cluster.local/ns/a/sa/b"),
    (["spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/c"], None),  # exactly one
    (["https://example.test/"], None),
    (["spiffe://cluster.local"], None),  # no path: not a workload ID
    (["spiffe://Cluster.local/x"], None),
    ([], None),  # a DNS SAN only
])
def test_spiffe_id_of(uris, expected):
    cert, _ = craft(None, None, uris=uris)
    assert spiffe_id_of(cert) == expected


def test_spiffe_id_of_certificate_without_san():
    cert, _ = craft(None, None, with_san=False)
    assert spiffe_id_of(cert) is None


ID = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.mark.parametrize("pattern,spiffe_id,expected", [
    ("*", ID, True),
    ("*", "spiffe://other.domain/x", True),
    ("*", "", False),
    (ID, ID, True),
    ("spiffe://cluster.local/ns/shop/sa/carts", ID, False),
    ("spiffe://cluster.local/ns/shop/sa/car", ID, False),
    ("cluster.local/ns/shop/sa/cart", ID, True),  # Istio principal form
    (ID, "cluster.local/ns/shop/sa/cart", True),
    ("cluster.local/ns/shop/sa/other", ID, False),
    ("spiffe://cluster.local/ns/shop/*", ID, True),
    ("cluster.local/ns/shop/*", ID, True),
    ("spiffe://cluster.local/ns/other/*", ID, False),
    ("spiffe://cluster.local/*", ID, True),
    ("spiffe://other.local/*", ID, False),
    ("spiffe://*", ID, True),
    ("spiffe*", ID, True),
    ("cluster*", ID, True),
    ("*/sa/cart", ID, True),
    ("*/sa/cartx", ID, False),
    ("*cart", ID, True),
    ("*shop", ID, False),
    ("spiffe://cluster.local/ns/*/sa/cart", ID, False),  # no middle wildcard (Istio)
    ("", ID, False),
    ("SPIFFE://cluster.local/ns/shop/sa/cart", ID, False),  # case-sensitive
    ("spiffe://cluster.local/ns/shop/sa/Cart", ID, False),
])
def test_id_matches(pattern, spiffe_id, expected):
    assert id_matches(pattern, spiffe_id) is expected
